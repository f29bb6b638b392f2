"""The shipped default models load offline and follow a shape outline and its colours."""

import numpy as np
import pytest

from cldm.pipeline import generate
from toy.metrics import score
from toy.model import TOY_BASE, TOY_CONTROL, load_default_model
from toy.shapes import COLORS, make_sample

pytestmark = pytest.mark.skipif(not (TOY_BASE.is_file() and TOY_CONTROL.is_file()),
                                reason="the default model files are not in models/")


@pytest.fixture(scope="module")
def model():
    return load_default_model()


def test_default_model_fills_held_out_outlines(model):
    results = []
    for i in range(4):
        hint, _, prompt, meta = make_sample(2024, i, size=128)  # a seed no training run used
        images, _ = generate(model, hint, prompt, steps=20, seed=i, verbose=False)
        results.append(score(images[0], hint, COLORS[meta["color"]], COLORS[meta["background"]]))
    # bench/controllability.py measures the shipped model at mean IoU 0.868 over 200 outlines (models/TOY_MODEL.md);
    # these four read 0.88, 0.63, 0.87, 0.88 (mean 0.82) on the 2-core CI machine
    assert np.mean([r["iou"] for r in results]) > 0.75


def test_control_strength_zero_ignores_the_outline(model):
    hint, _, prompt, meta = make_sample(2024, 7, size=128)
    with_control, _ = generate(model, hint, prompt, steps=20, seed=0, verbose=False)
    without, _ = generate(model, hint, prompt, steps=20, seed=0, strength=0.0, verbose=False)
    color, background = COLORS[meta["color"]], COLORS[meta["background"]]
    assert score(with_control[0], hint, color, background)["iou"] > score(without[0], hint, color, background)["iou"]


def test_generation_is_reproducible_from_its_seed(model):
    hint, _, prompt, _ = make_sample(2024, 3, size=128)
    a, seed = generate(model, hint, prompt, steps=5, seed=-1, verbose=False)
    b, _ = generate(model, hint, prompt, steps=5, seed=seed, verbose=False)
    assert np.array_equal(a[0], b[0])
