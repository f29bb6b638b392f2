"""Strength keyframes and the uncond multiplier: their identities (constant keyframes are the plain strength bit
for bit, a step schedule is control start/end, uncond 0 is the control mode "control") and the keyframes' form."""

import pytest
import torch

from cldm.schedules import keyframes, multiplier
from cldm.settings import ControlUnit, SettingError
from tests.test_pipeline import PROMPT, hint, latents_of, model  # noqa: F401 (model: the tiny SD 1.5 fixture)


def test_keyframes_are_read_held_at_the_ends_and_eased_between():
    frames = keyframes(" 0.5:0.3, 0:1 ,")
    assert frames == [(0.0, 1.0), (0.5, 0.3)]
    assert multiplier(frames, 0.0) == 1.0 and multiplier(frames, 0.9) == 0.3 and multiplier([], 0.4) == 1.0
    assert multiplier(frames, 0.125) == pytest.approx(1 - 0.7 * 0.25)
    assert multiplier(frames, 0.125, "ease") == pytest.approx(1 - 0.7 * (1 - 2 ** -0.5) / 2)  # (1 - cos(pi/4)) / 2
    assert multiplier(frames, 0.25, "ease") == pytest.approx(multiplier(frames, 0.25))  # the midpoint agrees
    for text, message in (("0.5", "write fraction:multiplier"), ("a:b", "write fraction:multiplier"),
                          ("1.5:1", "0 to 1"), ("0:3", "multiplier 0 to 2"), ("0:1, 0:0.5", "one fraction twice"),
                          ("0:nan", "write fraction:multiplier")):
        with pytest.raises(SettingError, match=message):
            ControlUnit(strength_keyframes=text)


@torch.no_grad()
def test_keyframes_and_the_uncond_multiplier_keep_their_identities(model):  # noqa: F811
    def run(**values):
        return latents_of(model, hint(), PROMPT, steps=4, seed=3, **values)

    plain = run()
    assert torch.equal(run(strength_keyframes="0:1, 1:1"), plain)
    assert torch.equal(run(strength_keyframes="0:0.5", keyframe_curve="ease"), run(strength=0.5))
    # progress 0, 1/4, 1/2, 3/4: full strength to one half, none after, as control_end 0.5
    assert torch.equal(run(strength_keyframes="0:1, 0.5:1, 0.6:0"), run(control_end=0.5))
    assert torch.equal(run(uncond_multiplier=0.0), run(control_mode="control"))
    half = run(uncond_multiplier=0.5)
    assert (half - plain).abs().max() > 1e-4 and (half - run(control_mode="control")).abs().max() > 1e-4
    fading = run(strength_keyframes="0:1, 1:0")
    assert (fading - plain).abs().max() > 1e-4 and (fading - run(control_end=0.5)).abs().max() > 1e-4
