"""generate(): the release's DDIM path reproduced, every sampler, control range, control modes, several controls."""

import numpy as np
import pytest
import torch

from cldm.cldm import guess_mode_scales
from cldm.pipeline import Control, generate
from cldm.samplers import SAMPLERS, diffusers_scheduler
from cldm.settings import ControlUnit, Settings
from ldm.ddim import DDIMSampler
from tests.helpers import TINY_V15, TINY_V21, tiny_model

PROMPT = "a crimson circle"


@pytest.fixture(scope="module")
def model():
    return tiny_model(TINY_V15)


def hint(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def latents_of(model, *args, **kwargs):
    """generate() up to the latents (decoding would hide small differences behind uint8 rounding)."""
    captured = {}
    decode = model.decode_first_stage
    model.decode_first_stage = lambda z: captured.setdefault("z", z) * 0
    try:
        generate(model, *args, verbose=False, **kwargs)
    finally:
        model.decode_first_stage = decode
    return captured["z"]


def release_path(model, control_hint, seed, steps, scales, uncond_control=True, guidance=9.0):
    """The release's gradio apps: DDIMSampler.sample on ControlLDM.apply_model with model.control_scales set."""
    h = torch.from_numpy(control_hint).float().div(255).permute(2, 0, 1)[None]
    cond = {"c_concat": [h], "c_crossattn": [model.get_learned_conditioning([PROMPT])]}
    uncond = {"c_concat": [h] if uncond_control else None, "c_crossattn": [model.get_learned_conditioning([""])]}
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((1, 4, 8, 8), generator=gen)
    previous, model.control_scales = model.control_scales, scales
    try:
        z, _ = DDIMSampler(model).sample(steps, 1, (4, 8, 8), cond, x_T=x_T, verbose=False, generator=gen,
                                         unconditional_guidance_scale=guidance, unconditional_conditioning=uncond)
    finally:
        model.control_scales = previous
    return z


def close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


@torch.no_grad()
def test_ddim_equals_the_release_path_plain_and_guess_mode(model):
    n = model.control_model.num_outputs
    close(latents_of(model, hint(), PROMPT, steps=4, seed=3, strength=0.7),
          release_path(model, hint(), 3, 4, [0.7] * n))
    close(latents_of(model, hint(), PROMPT, steps=4, seed=3, guess_mode=True),
          release_path(model, hint(), 3, 4, guess_mode_scales(1.0, n), uncond_control=False))


@torch.no_grad()
def test_control_modes(model):
    n = model.control_model.num_outputs
    close(latents_of(model, hint(), PROMPT, steps=3, seed=1, control_mode="prompt"),
          release_path(model, hint(), 1, 3, guess_mode_scales(1.0, n)))
    close(latents_of(model, hint(), PROMPT, steps=3, seed=1, control_mode="control"),
          release_path(model, hint(), 1, 3, [1.0] * n, uncond_control=False))
    # Without guidance there is no unconditional branch, so "control" mode is plain control.
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=3, seed=1, guidance_scale=1.0, control_mode="control"),
                       latents_of(model, hint(), PROMPT, steps=3, seed=1, guidance_scale=1.0))
    with pytest.raises(ValueError, match="control_mode 'strong' is not one of"):
        generate(model, hint(), PROMPT, steps=1, control_mode="strong")


@torch.no_grad()
def test_a_pooled_net_acts_on_the_conditional_side_only(model):
    """The 1.1 shuffle control as the release runs it: pooled residuals, on the conditional half of guidance."""
    n = model.control_model.num_outputs
    model.global_average_pooling = True
    try:
        pooled = latents_of(model, hint(), PROMPT, steps=3, seed=1)
        close(pooled, release_path(model, hint(), 1, 3, [1.0] * n, uncond_control=False))
    finally:
        model.global_average_pooling = False
    unpooled = latents_of(model, hint(), PROMPT, steps=3, seed=1, control_mode="control")
    assert (pooled - unpooled).abs().max() > 1e-4


@torch.no_grad()
def test_control_range_and_strength_zero(model):
    off = latents_of(model, None, PROMPT, steps=4, seed=2, size=(64, 64))
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=4, seed=2, strength=0.0), off)
    full = latents_of(model, hint(), PROMPT, steps=4, seed=2)
    late = latents_of(model, hint(), PROMPT, steps=4, seed=2, control_start=0.5)
    early = latents_of(model, hint(), PROMPT, steps=4, seed=2, control_end=0.25)
    for a, b in ((full, late), (full, early), (late, off), (early, off), (late, early)):
        assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="control_start 0.8 is after control_end 0.2"):
        generate(model, hint(), PROMPT, steps=1, control_start=0.8, control_end=0.2)


@torch.no_grad()
def test_several_controls_add_up(model):
    one = latents_of(model, hint(), PROMPT, steps=3, seed=4)
    halves = latents_of(model, None, PROMPT, steps=3, seed=4, controls=[Control(hint(), 0.5), Control(hint(), 0.5)])
    close(halves, one)
    other = latents_of(model, hint(), PROMPT, steps=3, seed=4, controls=[Control(hint(1), 1.0, end=0.5)])
    assert (other - one).abs().max() > 1e-4
    second_net = tiny_model(TINY_V15, seed=7).control_model
    mixed = latents_of(model, hint(), PROMPT, steps=3, seed=4, controls=[Control(hint(), 1.0, net=second_net)])
    assert (mixed - one).abs().max() > 1e-4
    # the same controls as units of the settings: the model's own first, then each with its map and its net
    units = (ControlUnit(), ControlUnit(image=hint(1), control_end=0.5), ControlUnit(image=hint(), control="b"))
    both = latents_of(model, hint(), PROMPT, steps=3, seed=4, settings=Settings().with_values(units=units),
                      nets={"b": second_net})
    close(both, latents_of(model, hint(), PROMPT, steps=3, seed=4,
                           controls=[Control(hint(1), 1.0, end=0.5), Control(hint(), 1.0, net=second_net)]))
    with pytest.raises(ValueError, match="same size"):
        generate(model, hint(), PROMPT, steps=1, controls=[Control(np.zeros((128, 64, 3), np.uint8))])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("config", [TINY_V15, TINY_V21], ids=["eps", "v"])
@torch.no_grad()
def test_every_sampler_runs_reproducibly(sampler, config):
    model = tiny_model(config)
    a, seed = generate(model, hint(), PROMPT, steps=3, seed=-1, sampler=sampler, eta=0.5, verbose=False)
    b, _ = generate(model, hint(), PROMPT, steps=3, seed=seed, sampler=sampler, eta=0.5, verbose=False)
    assert np.array_equal(a[0], b[0]) and a[0].shape == (64, 64, 3)


def test_diffusers_schedulers_use_the_models_noise_schedule(model):
    for name in SAMPLERS[1:]:
        scheduler = diffusers_scheduler(model, name)
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), model.alphas_cumprod.double(), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="sampler 'Heun' is not one of"):
        generate(model, hint(), PROMPT, steps=1, sampler="Heun")


@torch.no_grad()
def test_low_vram_runs_part_by_part_and_changes_nothing(model):
    from cldm.lowvram import low_vram

    plain, _ = generate(model, hint(), PROMPT, steps=2, seed=5, verbose=False)
    trace = []
    with low_vram(model, "cpu", trace):
        offloaded, _ = generate(model, hint(), PROMPT, steps=2, seed=5, verbose=False)
    assert np.array_equal(plain[0], offloaded[0])
    # per step the control runs, then the UNet; text first, the VAE decoder last
    assert trace == ["text encoder", "control", "unet", "control", "unet", "vae decoder"]
    assert all(not m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def test_block_weights_all_ones_change_nothing_and_presets_are_the_release_scales(model):
    n = model.control_model.num_outputs
    plain = latents_of(model, hint(), PROMPT, steps=3, seed=5)
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=3, seed=5, block_weights=[1.0] * n), plain)
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=3, seed=5, block_weights=", ".join(["1"] * n)), plain)
    close(latents_of(model, hint(), PROMPT, steps=3, seed=5, block_weights="soft"),
          latents_of(model, hint(), PROMPT, steps=3, seed=5, control_mode="prompt"))
    close(latents_of(model, hint(), PROMPT, steps=3, seed=5, block_weights="only_mid"),
          release_path(model, hint(), 5, 3, [0.0] * (n - 1) + [1.0]))
    halved = [0.5] * (n - 1) + [1.0]
    close(latents_of(model, hint(), PROMPT, steps=3, seed=5, block_weights=halved),
          release_path(model, hint(), 5, 3, halved))
    with pytest.raises(ValueError, match=f"this ControlNet has {n} blocks"):
        generate(model, hint(), PROMPT, steps=1, block_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="neither a preset"):
        generate(model, hint(), PROMPT, steps=1, block_weights="strong")


@torch.no_grad()
def test_region_masks_white_is_no_mask_black_is_strength_zero(model):
    plain = latents_of(model, hint(), PROMPT, steps=3, seed=6)
    white, black = np.full((64, 64), 255, np.uint8), np.zeros((64, 64), np.uint8)
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=3, seed=6, region_mask=white), plain)
    off = latents_of(model, hint(), PROMPT, steps=3, seed=6, strength=0.0)
    assert torch.equal(latents_of(model, hint(), PROMPT, steps=3, seed=6, region_mask=black), off)
    big = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    left = np.zeros((128, 128), np.uint8)
    left[:, :64] = 255  # the control acts on the left half only
    runs = {name: latents_of(model, big, PROMPT, steps=1, seed=6, guidance_scale=1.0, **kw) for name, kw in
            (("half", dict(region_mask=left)), ("full", {}), ("none", dict(strength=0.0)))}
    effect = {name: (runs[name] - runs["none"]).abs() for name in ("half", "full")}
    ratio_left = effect["half"][..., :8].mean() / effect["full"][..., :8].mean()
    ratio_right = effect["half"][..., 8:].mean() / effect["full"][..., 8:].mean()
    # measured 1.10 and 0.54: the tiny random UNet's receptive field spans the whole 16x16 latent, so the
    # right half still feels the left's control through it, but only about half as much
    assert ratio_left > 0.85 and ratio_right < 0.75


@torch.no_grad()
def test_a_pooled_control_in_a_region_acts_there_only(model):
    model.global_average_pooling = True
    try:
        black = np.zeros((64, 64), np.uint8)
        off = latents_of(model, hint(), PROMPT, steps=2, seed=7, strength=0.0)
        assert torch.equal(latents_of(model, hint(), PROMPT, steps=2, seed=7, region_mask=black), off)
        white = np.full((64, 64), 255, np.uint8)
        assert torch.equal(latents_of(model, hint(), PROMPT, steps=2, seed=7, region_mask=white),
                           latents_of(model, hint(), PROMPT, steps=2, seed=7))
    finally:
        model.global_average_pooling = False
