"""MiDaS (DPT-Hybrid) depth, and the normal map the release derives from it."""

from functools import lru_cache

import numpy as np

from annotators.util import device, prepare
from annotators.weights import weights_dir

MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"


@lru_cache(maxsize=2)
def midas_detector(location=None):
    from controlnet_aux import MidasDetector

    folder = weights_dir([MIDAS_FILE], location)
    return MidasDetector.from_pretrained(str(folder), model_type="dpt_hybrid", filename=MIDAS_FILE).to(device())


def depth_and_normal(image, background_threshold=0.4, detect_resolution=384, weights=None):
    img = prepare(image, detect_resolution)
    side = min(img.shape[:2])
    depth, normal = midas_detector(weights)(img, a=np.pi * 2.0, bg_th=background_threshold, depth_and_normal=True,
                                           detect_resolution=side, image_resolution=side, output_type="np")
    return depth, normal


def depth(image, detect_resolution=384, weights=None):
    return depth_and_normal(image, detect_resolution=detect_resolution, weights=weights)[0]


def normal(image, background_threshold=0.4, detect_resolution=384, weights=None):
    """Normals from the depth's gradients; depth below `background_threshold` (relative) counts as flat."""
    return depth_and_normal(image, background_threshold, detect_resolution, weights)[1]
