"""T2I-Adapters, exact against diffusers: files written by diffusers' own code (and in TencentARC's layout) give
diffusers' features, the features enter the UNet where diffusers' UNet takes them, and whole generations equal
diffusers' adapter pipelines; then as a control unit through the CLI."""

import re

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter as DiffusersAdapter
from PIL import Image
from safetensors.torch import save_file

from cldm.model import load_control_net
from cldm.pipeline import generate
from cldm.settings import ControlUnit
from cldm.t2i_adapter import read_t2i_adapter
from ldm.checkpoint import CheckpointError
from ldm.config import load_yaml
from ldm.unet import Residuals
from tests.helpers import TINY_V15, diffusers_parts, randomize, tiny_inputs, tiny_model

KINDS = {  # diffusers' adapter_type and arguments, at test size
    "full": dict(adapter_type="full_adapter", channels=[32, 64], num_res_blocks=2, in_channels=3),
    "full, one channel": dict(adapter_type="full_adapter", channels=[32, 64], num_res_blocks=1, in_channels=1),
    "light": dict(adapter_type="light_adapter", channels=[32, 64], num_res_blocks=2, in_channels=3),
    "xl": dict(adapter_type="full_adapter_xl", channels=[32, 64, 64, 64], num_res_blocks=2, in_channels=3,
               downscale_factor=16),
}


def diffusers_adapter(kind, seed=0):
    return randomize(DiffusersAdapter(**KINDS[kind]).eval(), seed)


def tencentarc_state(adapter):
    """A diffusers adapter's weights in TencentARC's original layout (as diffusers' conversion script reads it):
    the full kinds number their residual blocks through the whole body, the light kind nests them."""
    blocks, light = adapter.config.num_res_blocks, adapter.config.adapter_type == "light_adapter"
    state = {}
    for key, value in adapter.state_dict().items():
        key = key[len("adapter."):]
        if light:
            key = re.sub(r"^body\.(\d+)\.resnets\.", r"body.\1.body.", key)
        elif match := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            key = f"body.{int(match[1]) * blocks + int(match[2])}.{match[3]}"
        elif match := re.match(r"body\.(\d+)\.in_conv\.(.*)", key):
            key = f"body.{int(match[1]) * blocks}.in_conv.{match[2]}"
        state[key] = value.clone()
    return state


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_file_layout_gives_diffusers_features(tmp_path, kind):
    theirs = diffusers_adapter(kind)
    theirs.save_pretrained(tmp_path / "folder")
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "diffusers.safetensors")
    torch.save(tencentarc_state(theirs), tmp_path / "original.pth")
    save_file(tencentarc_state(theirs), tmp_path / "original.safetensors")
    hint = torch.rand(2, KINDS[kind]["in_channels"], 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(hint)
        for source in ("folder", "diffusers.safetensors", "original.pth", "original.safetensors"):
            ours = read_t2i_adapter(tmp_path / source).encode_hint(hint)
            assert len(ours) == len(expected), source
            for a, b in zip(ours, expected):
                assert torch.equal(a, b), source
    assert min(f.abs().max() for f in expected) > 0.1


def test_the_features_enter_the_unet_where_diffusers_unet_takes_them(tmp_path):
    from cldm.diffusers_interop import diffusers_models

    model = tiny_model(TINY_V15)
    unet, _ = diffusers_models(model.state_dict(), load_yaml(TINY_V15))
    diffusers_adapter("full").save_pretrained(tmp_path / "adapter")
    adapter = load_control_net(model, tmp_path / "adapter")
    inp = tiny_inputs(model)
    with torch.no_grad():
        inner = adapter(inp["x"], inp["hint"], inp["t"], inp["context"], weights=[0.7, 0.7])
        assert [i for i, f in enumerate(inner) if f is not None] == [1, 3]  # each level's last block (attention)
        ours = model.denoise(inp["x"], inp["t"], {"c_crossattn": [inp["context"]]}, Residuals(inner=inner))
        plain = model.denoise(inp["x"], inp["t"], {"c_crossattn": [inp["context"]]})
        features = [f * 0.7 for f in adapter.encode_hint(inp["hint"])]
        theirs = unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"],
                      down_intrablock_additional_residuals=features).sample
    assert (ours - plain).abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def tiny_three_level_xl(seed=0):
    """A tiny SDXL of three levels (attention on the last two, as SDXL's), holding an unused ControlNet (the
    diffusers conversion helper takes a controlled model)."""
    from cldm.model import build_model, controlled
    from tests.test_sdxl import TINY_XL_UNET, TINY_XL_YAML

    config = load_yaml(TINY_XL_YAML)
    params = dict(channel_mult=[1, 2, 2], attention_resolutions=[2, 4], transformer_depth=[1, 1, 1])
    config["model"]["params"]["network_config"]["params"].update(params)
    config = controlled(config, {**TINY_XL_UNET, **params, "hint_channels": 3})
    torch.manual_seed(seed)
    return randomize(build_model(config).eval(), seed), config


def box(value=255):
    hint = np.zeros((64, 128, 3), np.uint8)
    hint[16:48, 32:96] = value
    return hint


def test_a_whole_sdxl_generation_with_an_adapter_equals_diffusers_adapter_pipeline(tmp_path):
    """StableDiffusionXLAdapterPipeline with the same weights, prompt, seed, scheduler and adapter scale: within
    1/255 (the adapter's features added at the middle block too)."""
    from diffusers import StableDiffusionXLAdapterPipeline

    from cldm.samplers import diffusers_scheduler
    from tests.test_sdxl import ID_WIDTH, diffusers_text_encoders

    model, config = tiny_three_level_xl(seed=3)
    unet, _, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    adapter = diffusers_adapter("xl", seed=4)
    adapter.save_pretrained(tmp_path / "adapter")
    pipe = StableDiffusionXLAdapterPipeline(vae, *diffusers_text_encoders(model.conditioner), unet, adapter,
                                            diffusers_scheduler(model, "UniPC"))
    pipe.set_progress_bar_config(disable=True)
    net = load_control_net(model, tmp_path / "adapter")
    assert net.positions == [3, 5, 8, 9]  # after level 0's downsampling, levels 1 and 2, the middle block
    prompt, common = "a crimson circle", dict(steps=3, seed=1, guidance_scale=5.0, sampler="UniPC", verbose=False)
    unit = ControlUnit(image=box(), control=str(tmp_path / "adapter"), strength=0.8)
    ours, _ = generate(model, None, prompt, size=(64, 128), units=(ControlUnit(), unit), nets={unit.control: net},
                       **common)
    plain, _ = generate(model, None, prompt, size=(64, 128), **common)
    with torch.no_grad():
        theirs = pipe(prompt, image=Image.fromarray(box()), height=64, width=128, num_inference_steps=3,
                      guidance_scale=5.0, adapter_conditioning_scale=0.8, generator=torch.Generator().manual_seed(1),
                      output_type="np").images[0]
    assert np.abs(ours[0].astype(int) - plain[0]).max() > 10
    assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0


def test_a_whole_sd15_generation_with_an_adapter_equals_diffusers_adapter_pipeline(tmp_path):
    from diffusers import StableDiffusionAdapterPipeline

    from cldm.samplers import diffusers_scheduler
    from ldm.text_encoders import clip_tokenizer

    model = tiny_model(TINY_V15, seed=2)
    unet, _, vae = diffusers_parts(model, load_yaml(TINY_V15))
    adapter = diffusers_adapter("full, one channel", seed=5)
    torch.save(tencentarc_state(adapter), tmp_path / "t2iadapter_sketch.pth")
    pipe = StableDiffusionAdapterPipeline(vae, model.cond_stage_model.transformer.text_model, clip_tokenizer(), unet,
                                          adapter, diffusers_scheduler(model, "UniPC"), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    source = str(tmp_path / "t2iadapter_sketch.pth")
    unit = ControlUnit(image=box(), control=source, strength=0.6)
    common = dict(steps=3, seed=2, guidance_scale=7.0, sampler="UniPC", verbose=False)
    ours, _ = generate(model, None, "a crimson circle", size=(64, 128), units=(ControlUnit(), unit),
                       nets={source: load_control_net(model, source)}, **common)
    plain, _ = generate(model, None, "a crimson circle", size=(64, 128), **common)
    assert np.abs(ours[0].astype(int) - plain[0]).max() > 10
    with torch.no_grad():
        theirs = pipe("a crimson circle", image=Image.fromarray(box()[..., 0]), height=64, width=128,
                      num_inference_steps=3, guidance_scale=7.0, adapter_conditioning_scale=0.6,
                      generator=torch.Generator().manual_seed(2), output_type="np").images[0]
    assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0


def test_an_adapter_for_another_base_is_refused_with_what_each_takes(tmp_path):
    model, _ = tiny_three_level_xl()
    diffusers_adapter("full").save_pretrained(tmp_path / "sd15_adapter")
    with pytest.raises(CheckpointError, match=r"features \(32 at 1/1, 64 at 1/2 .* takes 32 at 1/2, 64 at 1/2.* "
                                              r"made for this base"):
        load_control_net(model, tmp_path / "sd15_adapter")


def test_an_adapter_runs_as_a_cli_unit_recorded_and_reproduced(tmp_path):
    """The shipped toy model's UNet takes the SDXL kind's feature sizes (its first level has no attention)."""
    import generate as cli
    from cldm.outputs import read_params

    adapter = randomize(DiffusersAdapter(adapter_type="full_adapter_xl", channels=[64, 128, 128, 128],
                                         num_res_blocks=1, downscale_factor=16).eval())
    save_file(tencentarc_state(adapter), tmp_path / "t2i.safetensors")
    Image.fromarray(box()).save(tmp_path / "box.png")
    first = tmp_path / "first.png"
    cli.main(["--resolution", "64", "--steps", "2", "--seed", "3", "--extra-control",
              str(tmp_path / "t2i.safetensors"), str(tmp_path / "box.png"), "0.7", "--out", str(first)])
    (unit,) = read_params(first)["controls"]
    assert unit["control"] == "t2i.safetensors" and unit["strength"] == 0.7
    again, plain = tmp_path / "again.png", tmp_path / "plain.png"
    cli.main(["--reproduce", str(first), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    cli.main(["--resolution", "64", "--steps", "2", "--seed", "3", "--out", str(plain)])
    assert np.abs(np.asarray(Image.open(first)).astype(int) - np.asarray(Image.open(plain))).max() > 10


@torch.no_grad()
def test_low_vram_moves_an_adapter_as_a_part_of_its_own(tmp_path):
    from cldm.lowvram import low_vram
    from cldm.pipeline import Control

    model = tiny_model(TINY_V15)
    diffusers_adapter("full").save_pretrained(tmp_path / "adapter")
    adapter = load_control_net(model, tmp_path / "adapter")
    controls = [Control(box()[:, :64], 0.7, net=adapter)]
    plain, _ = generate(model, None, "a crimson circle", size=(64, 64), steps=2, seed=5, verbose=False,
                        controls=controls)
    trace = []
    with low_vram(model, "cpu", trace, nets=[adapter]):
        offloaded, _ = generate(model, None, "a crimson circle", size=(64, 64), steps=2, seed=5, verbose=False,
                                controls=controls)
    assert np.array_equal(plain[0], offloaded[0])
    assert trace == ["text encoder", "control 1", "unet", "control 1", "unet", "vae decoder"]
