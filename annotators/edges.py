"""Edge and line detectors: Canny, user scribbles, HED boundaries, fake scribbles from HED, M-LSD lines.

Each takes an RGB uint8 image of any size and returns an (H, W, 3) uint8 map at `detect_resolution` (shorter
side, sides multiples of 64), white lines on black as the released controls were trained on.
"""

import cv2
import numpy as np

from annotators.util import as_map, prepare
from annotators.weights import aux_detector


def canny(image, low_threshold=100, high_threshold=200, detect_resolution=512):
    return as_map(cv2.Canny(prepare(image, detect_resolution), low_threshold, high_threshold))


def scribble(image, threshold=127, detect_resolution=512):
    """A drawing or an uploaded sketch, dark strokes on a light ground -> white strokes on black."""
    img = prepare(image, detect_resolution)
    return as_map(np.where(img.min(axis=2) < threshold, 255, 0).astype(np.uint8))


def hed_detector(location=None):
    return aux_detector("HEDdetector", ("ControlNetHED.pth",), location)


def mlsd_detector(location=None):
    return aux_detector("MLSDdetector", ("mlsd_large_512_fp32.pth",), location)


def run_detector(detector, image, detect_resolution, **params):
    """A controlnet-aux detector on our resized image, asked to keep that size."""
    img = prepare(image, detect_resolution)
    side = min(img.shape[:2])
    out = detector(img, detect_resolution=side, image_resolution=side, output_type="np", **params)
    return cv2.resize(as_map(out), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)


def hed(image, detect_resolution=512, weights=None):
    return run_detector(hed_detector(weights), image, detect_resolution)


def fake_scribble(image, detect_resolution=512, weights=None):
    """HED boundaries thinned, blurred and thresholded into scribble-like strokes (the release's recipe)."""
    return run_detector(hed_detector(weights), image, detect_resolution, scribble=True)


def mlsd(image, value_threshold=0.1, distance_threshold=0.1, detect_resolution=512, weights=None):
    return run_detector(mlsd_detector(weights), image, detect_resolution, thr_v=value_threshold,
                        thr_d=distance_threshold)
