"""Depth (MiDaS DPT-Hybrid, LeReS, ZoeDepth), the normal map the 1.0 release derives from MiDaS depth, and
normals estimated directly (NormalBAE, for the 1.1 normal control). Depth maps are near = bright."""

import numpy as np

from annotators.edges import run_detector
from annotators.util import prepare
from annotators.weights import aux_detector

MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"


def midas_detector(location=None):
    return aux_detector("MidasDetector", (MIDAS_FILE,), location, model_type="dpt_hybrid", filename=MIDAS_FILE)


def leres_detector(location=None):
    return aux_detector("LeresDetector", ("res101.pth", "latest_net_G.pth"), location)


def zoe_detector(location=None):
    return aux_detector("ZoeDetector", ("ZoeD_M12_N.pt",), location)


def normalbae_detector(location=None):
    return aux_detector("NormalBaeDetector", ("scannet.pt",), location)


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


def depth_leres(image, remove_near=0, remove_background=0, detect_resolution=512, weights=None):
    """LeReS depth; `remove_near` / `remove_background` (percent) cut the nearest and farthest depths to black."""
    return run_detector(leres_detector(weights), image, detect_resolution, thr_a=remove_near,
                        thr_b=remove_background)


def depth_zoe(image, detect_resolution=512, weights=None):
    """ZoeDepth (metric depth, scaled between its 2nd and 85th percentiles), the 1.1 depth app's default."""
    return run_detector(zoe_detector(weights), image, detect_resolution)


def normalbae(image, detect_resolution=512, weights=None):
    """Surface normals (NormalBAE, ScanNet's convention: blue faces the viewer, red left, green up)."""
    return run_detector(normalbae_detector(weights), image, detect_resolution)
