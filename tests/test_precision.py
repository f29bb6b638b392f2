"""The precision policy: models cast to fp16/bf16 run end to end with their weights in that dtype, what must stay
fp32 stays fp32, and broken numbers stop with a message instead of a black picture."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cldm.model import create_model, load_checkpoint, load_control_net
from cldm.pipeline import Control, generate
from cldm.samplers import SAMPLERS
from ldm.checkpoint import CheckpointError, save_safetensors
from ldm.diffusion import SCHEDULE_BUFFERS
from ldm.precision import NonFiniteError, resolve_precision
from tests.helpers import ROOT, TINY_V15, TINY_V21, tiny_inputs, tiny_model

PROMPT = "a crimson circle"
# Relative L2 error of apply_model against fp32, in units of the format's unit roundoff u (bf16 2^-8, fp16
# 2^-11). Rounding at each of the ~25 layers on the tiny models' path adds about u/sqrt(3) of relative error,
# and independent roundings add up like a random walk: about sqrt(25/3) u ~ 3 u. Measured: 4.3-4.7 u for both
# formats and both tiny configs. The bound, 8 u, leaves room for other seeds without hiding a real fault (a
# missed cast or a bf16 timestep embedding gives 10-100 u).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
BOUND_IN_UNITS = 8


def hint(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def relative_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("config", [TINY_V15, TINY_V21], ids=["sd15", "sd21"])
@torch.no_grad()
def test_cast_model_agrees_with_fp32_and_holds_no_fp32_copy(config, dtype):
    model = tiny_model(config)
    inp = tiny_inputs(model)
    cond = {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}
    reference = model.apply_model(inp["x"], inp["t"], cond)
    text_reference = model.get_learned_conditioning([PROMPT])
    model.to(dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(model.get_buffer(name).dtype == torch.float32 for name in SCHEDULE_BUFFERS)  # the schedule stays

    out = model.apply_model(inp["x"], inp["t"], cond)
    assert out.dtype == torch.float32  # what the sampler gets back is in its own dtype
    error = relative_error(out, reference)
    assert error < BOUND_IN_UNITS * UNIT_ROUNDOFF[dtype], error
    text = model.get_learned_conditioning([PROMPT])
    assert text.dtype == dtype and relative_error(text, text_reference) < BOUND_IN_UNITS * UNIT_ROUNDOFF[dtype]
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = model.get_first_stage_encoding(model.encode_first_stage(images))
    decoded = model.decode_first_stage(z)
    assert z.dtype == torch.float32 and decoded.dtype == torch.float32 and decoded.shape == images.shape
    assert torch.isfinite(decoded).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
@torch.no_grad()
def test_every_sampler_runs_in_bf16_with_several_controls_and_guess_mode(sampler):
    model = tiny_model(TINY_V21).to(torch.bfloat16)  # v-prediction: the path with the most schedule arithmetic
    second = Control(hint(1), 0.5, end=0.5, net=tiny_model(TINY_V21, seed=3).control_model.to(torch.bfloat16))
    plain, seed = generate(model, hint(), PROMPT, steps=2, seed=-1, sampler=sampler, verbose=False)
    kwargs = dict(steps=2, seed=seed, sampler=sampler, verbose=False, guess_mode=True, controls=[second])
    a, _ = generate(model, hint(), PROMPT, **kwargs)
    b, _ = generate(model, hint(), PROMPT, **kwargs)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], plain[0])
    assert a[0].shape == plain[0].shape == (64, 64, 3) and a[0].std() > 1 and plain[0].std() > 1


@pytest.fixture(scope="module")
def default_models():
    from toy.model import load_default_model

    return {dtype: load_default_model(dtype=dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)}


@pytest.mark.parametrize("sampler", SAMPLERS)
@torch.no_grad()
def test_default_model_images_in_bf16_and_fp16_match_fp32(default_models, sampler):
    from generate import circle_outline

    prompt = "a crimson circle on a light sky blue background"
    images = {dtype: generate(model, circle_outline(64), prompt, steps=3, seed=0, sampler=sampler, verbose=False)[0][0]
              for dtype, model in default_models.items()}
    # Mean absolute pixel difference to fp32, in 1/255. Measured on this model (3 steps): bf16 0.9-2.0,
    # fp16 0.12-0.35, the most for DPM++ 2M Karras, whose second-order step amplifies differences.
    bounds = {torch.bfloat16: 3.0, torch.float16: 0.5}
    for dtype, bound in bounds.items():
        difference = np.abs(images[dtype].astype(int) - images[torch.float32].astype(int)).mean()
        assert difference < bound, (dtype, difference)


@torch.no_grad()
def test_low_vram_places_extra_controlnets_and_changes_nothing_in_bf16():
    from cldm.lowvram import low_vram

    model = tiny_model(TINY_V15).to(torch.bfloat16)
    net = tiny_model(TINY_V15, seed=3).control_model.to(torch.bfloat16)
    controls = [Control(hint(1), 0.7, net=net)]
    plain, _ = generate(model, hint(), PROMPT, steps=2, seed=5, verbose=False, controls=controls)
    trace = []
    with low_vram(model, "cpu", trace, nets=[net]):
        offloaded, _ = generate(model, hint(), PROMPT, steps=2, seed=5, verbose=False, controls=controls)
    assert np.array_equal(plain[0], offloaded[0])
    step = ["control", "control 1", "unet"]
    assert trace == ["text encoder", *step, *step, "vae decoder"]
    assert not any(m._forward_pre_hooks for m in [*model.modules(), *net.modules()])


def write_use_fp16_config(tmp_path):
    config = OmegaConf.load(TINY_V15)
    config.model.params.unet_config.params.use_fp16 = True
    config.model.params.control_stage_config.params.use_fp16 = True
    path = tmp_path / "tiny_fp16.yaml"
    OmegaConf.save(config, path)
    return path


@torch.no_grad()
def test_use_fp16_in_the_yaml_runs_the_unet_and_control_in_fp16(tmp_path):
    model = create_model(write_use_fp16_config(tmp_path)).eval()
    assert model.model.diffusion_model.dtype == model.control_model.dtype == torch.float16
    assert model.first_stage_model.encoder.conv_in.weight.dtype == torch.float32  # the VAE as the release kept it
    reference = tiny_model(TINY_V15)
    load_checkpoint(model, reference.state_dict())  # fp32 weights load into the fp16 networks
    inp = tiny_inputs(model)
    cond = {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}
    error = relative_error(model.apply_model(inp["x"], inp["t"], cond), reference.apply_model(inp["x"], inp["t"], cond))
    assert error < BOUND_IN_UNITS * UNIT_ROUNDOFF[torch.float16]
    images, _ = generate(model, hint(), PROMPT, steps=2, seed=1, verbose=False)
    assert images[0].shape == (64, 64, 3)


@torch.no_grad()
def test_fp16_vae_decode_that_overflows_is_redone_in_fp32():
    model = tiny_model(TINY_V15)
    decoder = model.first_stage_model.decoder
    decoder.conv_in.weight.mul_(3e4)  # activations beyond fp16's 65504 before the next GroupNorm; fine in fp32
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = model.decode_first_stage(z)
    model.half()
    assert not torch.isfinite(model.first_stage_model.decode(z / model.scale_factor)).all()  # it does overflow
    images = model.decode_first_stage(z)
    assert torch.isfinite(images).all() and relative_error(images, reference) < 1e-2
    assert decoder.conv_in.weight.dtype == torch.float16  # back in fp16 afterwards


def test_pooling_is_a_property_of_each_net():
    model = tiny_model(TINY_V15)
    model.global_average_pooling = True  # the 1.1 shuffle yaml's setting, at the ControlLDM level
    assert model.control_model.global_average_pooling
    extra = load_control_net(model, {f"control_model.{k}": v for k, v in model.control_model.state_dict().items()})
    assert not extra.global_average_pooling and not extra.only_mid_control
    inp = tiny_inputs(model)
    with torch.no_grad():
        pooled = model.control_model(inp["x"], inp["hint"], inp["t"], inp["context"])
        plain = extra(inp["x"], inp["hint"], inp["t"], inp["context"])
    assert all(p.shape[2:] == (1, 1) for p in pooled)
    assert plain[0].shape[2:] == inp["x"].shape[2:]
    torch.testing.assert_close(pooled[0], plain[0].mean(dim=(2, 3), keepdim=True))


def test_a_checkpoint_holding_nan_is_refused_naming_the_tensor(tmp_path):
    model = tiny_model(TINY_V15)
    state = model.state_dict()
    state["model.diffusion_model.middle_block.1.proj_in.weight"][0, 0] = float("nan")
    path = tmp_path / "broken.safetensors"
    save_safetensors(state, path)
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.middle_block\.1\.proj_in\.weight holds NaN"):
        load_checkpoint(create_model(TINY_V15), path)


@torch.no_grad()
def test_a_step_that_overflows_stops_naming_the_part_and_the_step():
    model = tiny_model(TINY_V15)
    model.model.diffusion_model.out[2].weight.fill_(float("inf"))
    message = r"the UNet produced NaN or infinite values at step 1 of 3, computing in fp32\. In fp16 .*bf16 or fp32"
    with pytest.raises(NonFiniteError, match=message):
        generate(model, hint(), PROMPT, steps=3, seed=0, verbose=False)
    model = tiny_model(TINY_V15).half()
    model.control_model.middle_block_out[0].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"the ControlNet .* at step 1 of 3, computing in fp16.*bf16 or fp32"):
        generate(model, hint(), PROMPT, steps=3, seed=0, verbose=False)


def test_auto_precision(monkeypatch):
    import ldm.precision

    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(ldm.precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(ldm.precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="not one of"):
        resolve_precision("int8")


def test_imports_change_nothing_and_pull_in_no_diffusers():
    code = ("import sys, logging; from transformers.utils import logging as hf; before = hf.get_verbosity(); "
            "import cldm.pipeline, cldm.model; from cldm.model import create_model; "
            "create_model('tests/configs/cldm_tiny_v15.yaml'); "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'; "
            "assert hf.get_verbosity() == before, 'log level changed'; "
            "from ldm.models.diffusion.ddim import DDIMSampler; from ldm.ddim import DDIMSampler as D; "
            "assert DDIMSampler is D")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
