"""Controllability of shape outlines, measured on generated images by re-detecting the condition.

Used by bench/controllability.py and the tests of the shipped default model.
"""

import cv2
import numpy as np
from scipy import ndimage

COLOR_TOLERANCE = 60.0  # Euclidean RGB distance; named colours of the dataset are at least 120 apart
EDGE_TOLERANCE = 2  # pixels


def outline_interior(hint):
    outline = hint[..., 0] > 127
    return ndimage.binary_fill_holes(outline)


def shape_region(image, color, background):
    pixels = image.astype(np.float32)
    to_fg = np.linalg.norm(pixels - np.array(color, np.float32), axis=-1)
    to_bg = np.linalg.norm(pixels - np.array(background, np.float32), axis=-1)
    return to_fg < to_bg


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def outline_f1(image, hint):
    """F1 of the image's Canny edges against the outline, each counted as found within EDGE_TOLERANCE pixels of
    the other (evaluation.metrics.edge_f1 is ControlNet++'s exact pixel F1 of a re-detected map)."""
    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200) > 0
    target = hint[..., 0] > 127
    if not edges.any() or not target.any():
        return 0.0
    near_target = ndimage.binary_dilation(target, iterations=EDGE_TOLERANCE)
    near_edges = ndimage.binary_dilation(edges, iterations=EDGE_TOLERANCE)
    precision = (edges & near_target).sum() / edges.sum()
    recall = (target & near_edges).sum() / target.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def score(image, hint, color, background):
    inside = outline_interior(hint)
    mean_in = image[inside].reshape(-1, 3).mean(axis=0)
    mean_out = image[~inside].reshape(-1, 3).mean(axis=0)
    return {
        "iou": iou(shape_region(image, color, background), inside),
        "color_ok": float(np.linalg.norm(mean_in - color) <= COLOR_TOLERANCE),
        "background_ok": float(np.linalg.norm(mean_out - background) <= COLOR_TOLERANCE),
        "outline_f1": outline_f1(image, hint),
    }
