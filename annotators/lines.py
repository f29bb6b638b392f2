"""The ControlNet 1.1 line and edge maps: line art (realistic, coarse, anime), soft edges (HED, PiDiNet and
their "safe" variants), scribbles made from a photo (HED, PiDiNet, XDoG), and inverted drawings.

Each returns white lines on black, what the 1.1 controls see (the 1.1 apps invert line art's black-on-white
output on the way in; the map here is already that input).
"""

from typing import Literal

import cv2
import numpy as np

from annotators.edges import hed_detector, run_detector
from annotators.util import as_map, prepare, to_rgb_uint8
from annotators.weights import aux_detector


def lineart_detector(location=None):
    return aux_detector("LineartDetector", ("sk_model.pth", "sk_model2.pth"), location)


def lineart_anime_detector(location=None):
    return aux_detector("LineartAnimeDetector", ("netG.pth",), location)


def pidinet_detector(location=None):
    return aux_detector("PidiNetDetector", ("table5_pidinet.pth",), location)


def lineart(image, coarse=False, detect_resolution=512, weights=None):
    """Line drawings of a photo (informative-drawings' networks); `coarse` draws fewer, bolder lines."""
    return run_detector(lineart_detector(weights), image, detect_resolution, coarse=bool(coarse))


def lineart_anime(image, detect_resolution=512, weights=None):
    """Anime-style line art (Anime2Sketch), for the anime line-art control."""
    return run_detector(lineart_anime_detector(weights), image, detect_resolution)


def edge_detector(name, weights):
    if name not in ("pidinet", "hed"):
        raise ValueError(f"unknown edge detector {name!r}: choose pidinet or hed")
    return pidinet_detector(weights) if name == "pidinet" else hed_detector(weights)


def softedge(image, detector: Literal["pidinet", "hed"] = "pidinet", safe=False, detect_resolution=512,
             weights=None):
    """Soft boundaries; `safe` quantises them to three levels, which the control follows more robustly
    (the 1.1 release trained on 75% safe maps)."""
    return run_detector(edge_detector(detector, weights), image, detect_resolution, safe=bool(safe))


def xdog(image, threshold=32):
    """Difference of Gaussians (sigma 0.5 and 5) of a photo, thresholded: a scribble without a network."""
    img = image.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(img, (0, 0), 0.5), cv2.GaussianBlur(img, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    return np.where(2 * (255 - dog.astype(np.int32)) > threshold, 255, 0).astype(np.uint8)


def scribble_from_photo(image, detector: Literal["hed", "pidinet", "xdog"] = "hed", xdog_threshold=32,
                        detect_resolution=512, weights=None):
    """Scribble-like strokes from a photo, the 1.1 way: HED or PiDiNet boundaries thinned (non-maximum
    suppression at 127 over a sigma-3 blur), blurred again and binarised at 4 of 255; or XDoG."""
    from controlnet_aux.util import nms

    if detector == "xdog":
        return as_map(xdog(prepare(image, detect_resolution), xdog_threshold))
    edges = run_detector(edge_detector(detector, weights), image, detect_resolution)
    strokes = cv2.GaussianBlur(nms(edges, 127, 3.0), (0, 0), 3.0)
    return np.where(strokes > 4, 255, 0).astype(np.uint8)


def invert(image):
    """Dark lines on a light ground (a drawing, a scan) -> light lines on black, as the line controls take."""
    return 255 - to_rgb_uint8(image)
