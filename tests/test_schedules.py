"""Strength schedules: their identities (constant keyframes are the plain strength bit for bit, a step schedule is
control start/end, uncond 0 is the control mode "control", an image's batch strength is that image's strength,
the release's soft base is the release's soft scales) and their text forms."""

import pytest
import torch

from cldm.cldm import guess_mode_scales
from cldm.schedules import batch_multipliers, keyframes, multiplier
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


def test_batch_strengths_are_read_and_the_last_is_held():
    assert batch_multipliers("") == [] and batch_multipliers("1, 0.5", images=4) == [1.0, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="3 multipliers for a batch of 2"):
        batch_multipliers("1 1 1", images=2)
    for text, message in (("1, x", "not numbers"), ("1, 2.5", "0 to 2"), ("inf", "0 to 2")):
        with pytest.raises(SettingError, match=f"batch_strengths: .*{message}"):
            ControlUnit(batch_strengths=text)


@torch.no_grad()
def test_each_image_of_a_batch_takes_its_own_strength(model):  # noqa: F811
    def run(**values):
        return latents_of(model, hint(), PROMPT, steps=3, seed=5, num_samples=3, **values)

    plain = run()
    assert torch.equal(run(batch_strengths="1"), plain)
    mixed, half, none = run(batch_strengths="1, 0.5, 0"), run(strength=0.5), run(strength=0.0)
    assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[1], half[1]) and torch.equal(mixed[2], none[2])
    with pytest.raises(ValueError, match="control 1: batch_strengths .* 4 multipliers for a batch of 3"):
        run(batch_strengths="1, 1, 1, 1")


def test_the_release_soft_base_gives_each_net_its_released_soft_scales():
    release = [0.825 ** float(12 - i) for i in range(13)]
    assert guess_mode_scales(1.0, 13) == release and guess_mode_scales(2.0, 13, 0.825) == [2 * w for w in release]
    assert guess_mode_scales(1.0, 10) == pytest.approx([10 ** (i / 9 - 1) for i in range(10)], rel=1e-6)
    other = guess_mode_scales(1.0, 10, 0.9)  # base ** 12 at the shallowest block, 1 at the middle, geometric
    assert other[0] == pytest.approx(0.9 ** 12) and other[-1] == 1.0
    assert other[1] / other[0] == pytest.approx(0.9 ** (-12 / 9))


@torch.no_grad()
def test_the_soft_base_weighs_the_prompt_mode(model):  # noqa: F811
    def run(**values):
        return latents_of(model, hint(), PROMPT, steps=2, seed=7, control_mode="prompt", **values)

    assert torch.equal(run(soft_base=0.825), run())
    assert (run(soft_base=0.5) - run()).abs().max() > 1e-4
