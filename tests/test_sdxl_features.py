"""Everything a control does on SD 1.5, on SDXL (tiny config, random weights): several controls of different
layouts, control modes, 10 block weights, region masks, image-to-image, inpainting, every sampler, bf16,
low-VRAM, and a CLI record reproduced bit for bit."""

import numpy as np
import pytest
import torch

from cldm.pipeline import generate
from cldm.samplers import SAMPLERS
from cldm.settings import ControlUnit
from tests.test_sdxl import TINY_XL_YAML, tiny_controlled_xl

PROMPT = "a red circle"


def square(value=255, size=64):
    hint = np.zeros((size, size, 3), np.uint8)
    hint[16:48, 16:48] = value
    return hint


@pytest.fixture(scope="module")
def xl():
    """The tiny SDXL base with a full control, and a small control file beside it."""
    model, _ = tiny_controlled_xl(seed=20)
    small, _ = tiny_controlled_xl(seed=21, depth=(0, 0))
    return model, {k: v for k, v in small.state_dict().items() if k.startswith("control_model.")}


def run(model, hint=None, **values):
    values.setdefault("steps", 2)
    images, _ = generate(model, square() if hint is None else hint, PROMPT, seed=3, verbose=False, **values)
    return images[0].astype(int)


@torch.no_grad()
def test_several_controls_modes_block_weights_and_regions_on_sdxl(xl):
    from cldm.model import load_control_net

    model, small_file = xl
    small = load_control_net(model, small_file)
    assert small.num_outputs == model.control_model.num_outputs == 7  # the tiny layout's; SDXL's real one: 10
    plain = run(model)
    second = ControlUnit(image=square(180)[::-1].copy(), control="small.safetensors", strength=0.7)
    both = run(model, units=(ControlUnit(), second), nets={"small.safetensors": small})
    assert np.abs(both - plain).mean() > 0.5
    for mode in ("prompt", "control"):
        assert np.abs(run(model, control_mode=mode) - plain).mean() > 0.5, mode
    n = model.control_model.num_outputs
    assert np.array_equal(run(model, block_weights=[1.0] * n), plain)
    assert np.array_equal(run(model, block_weights=[0.0] * (n - 1) + [1.0]), run(model, block_weights="only_mid"))
    everywhere = np.full((64, 64), 255, np.uint8)
    assert np.array_equal(run(model, region_mask=everywhere), plain)
    left = everywhere.copy()
    left[:, 32:] = 0
    assert np.abs(run(model, region_mask=left) - plain).mean() > 0.1


@torch.no_grad()
def test_image_to_image_inpainting_samplers_precision_and_low_vram_on_sdxl(xl):
    from cldm.lowvram import low_vram

    model, _ = xl
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    redrawn = run(model, init_image=picture, denoise=0.5)
    assert redrawn.shape == (64, 64, 3)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    inpainted = run(model, init_image=picture, mask=mask, mask_blur=0.0)
    assert np.array_equal(inpainted[:, 40:], picture[:, 40:])  # kept where not repainted
    for sampler in SAMPLERS:
        assert run(model, sampler=sampler).std() > 1, sampler
    plain = run(model)
    trace = []
    with low_vram(model, "cpu", trace):
        assert np.array_equal(run(model), plain)
    assert trace[:3] == ["text encoder", "control", "unet"]
    half = run(model.to(torch.bfloat16))
    model.float()
    assert np.abs(half - plain).mean() < 20  # bf16 follows fp32 (random weights amplify rounding)


def test_an_sdxl_cli_image_reproduces_bit_for_bit(tmp_path, xl):
    import generate as cli
    from ldm.checkpoint import save_safetensors

    model, small_file = xl
    state = model.state_dict()
    base, control = tmp_path / "base.safetensors", tmp_path / "control.safetensors"
    save_safetensors({k: v for k, v in state.items() if not k.startswith("control_model.")}, base)
    save_safetensors({k: v for k, v in state.items() if k.startswith("control_model.")}, control)
    save_safetensors(small_file, tmp_path / "small.safetensors")
    from PIL import Image

    Image.fromarray(square()).save(tmp_path / "map.png")
    Image.fromarray(square(200)[:, ::-1].copy()).save(tmp_path / "map2.png")
    flags = ["--config", str(TINY_XL_YAML), "--ckpt", str(base), str(control)]
    cli.main([*flags, "--hint", str(tmp_path / "map.png"), "--resolution", "64", "--steps", "2", "--seed", "4",
              "--sampler", "Euler a", "--block-weights", ", ".join(["0.5"] * 7), "--extra-control",
              str(tmp_path / "small.safetensors"), str(tmp_path / "map2.png"), "0.6", "--precision", "fp32",
              "--out", str(tmp_path / "first.png")])
    cli.main([*flags, "--reproduce", str(tmp_path / "first.png"), "--out", str(tmp_path / "again.png")])
    first, again = (np.asarray(Image.open(tmp_path / name)) for name in ("first.png", "again.png"))
    assert first.std() > 1 and np.array_equal(first, again)
