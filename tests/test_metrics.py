"""The controllability metrics score a perfect answer 1 and a wrong one near 0."""

import numpy as np

from training.metrics import score
from training.shapes import COLORS, make_sample


def test_the_target_itself_scores_perfectly_and_a_blank_image_does_not():
    hint, target, prompt, meta = make_sample(5, 0, size=128)
    color, background = COLORS[meta["color"]], COLORS[meta["background"]]
    perfect = score(target, hint, color, background)
    assert perfect["iou"] > 0.97 and perfect["color_ok"] == 1.0 and perfect["background_ok"] == 1.0
    assert perfect["edge_f1"] > 0.9
    blank = score(np.broadcast_to(np.array(background, np.uint8), target.shape).copy(), hint, color, background)
    assert blank["iou"] == 0.0 and blank["color_ok"] == 0.0 and blank["edge_f1"] == 0.0


def test_a_shape_in_the_wrong_place_scores_low():
    hint, target, _, meta = make_sample(5, 0, size=128)
    shifted = np.roll(target, 40, axis=(0, 1))
    result = score(shifted, hint, COLORS[meta["color"]], COLORS[meta["background"]])
    assert result["iou"] < 0.3
