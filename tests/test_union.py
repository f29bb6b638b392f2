"""ControlNet-Union and ProMax on SDXL, exact against diffusers' ControlNetUnionModel and its pipeline on a tiny
config with every weight random (task embeddings, the mixing layer and the zero projections included)."""

import numpy as np
import pytest
import torch

from cldm.settings import ControlUnit
from ldm.conditioning import Conditioning
from ldm.sdxl import vector
from tests.helpers import diffusers_parts, randomize
from tests.test_sdxl import ID_WIDTH, TINY_XL_UNET, TINY_XL_YAML, diffusers_text_encoders, tiny_xl_inputs

PROMAX = 8  # control types: ProMax adds tile and repaint to the six


def tiny_union_xl(seed=0, types=PROMAX, hint_widths=None):
    from cldm.model import build_model, controlled
    from ldm.config import load_yaml

    params = {**TINY_XL_UNET, "hint_channels": 3, "transformer_depth": [0, 2], "num_control_types": types,
              "type_features": ID_WIDTH, **({"hint_widths": hint_widths} if hint_widths else {})}
    config = controlled(load_yaml(TINY_XL_YAML), params)
    torch.manual_seed(seed)
    return randomize(build_model(config).eval(), seed), config


def box(value=255, where=(slice(16, 48), slice(32, 96))):
    hint = np.zeros((64, 128, 3), np.uint8)
    hint[where] = value
    return hint


@pytest.mark.parametrize("types, strengths, guess", [([3], [0.7], False), ([0, 7], [0.6, 1.2], False),
                                                     ([1], [0.8], True), ([2, 5], [1.0, 0.5], True)],
                         ids=["one", "two", "one-guess", "two-guess"])
def test_union_residuals_and_eps_equal_diffusers_controlnetunionmodel(types, strengths, guess):
    from cldm.cldm import guess_mode_scales
    from cldm.diffusers_interop import diffusers_models

    model, config = tiny_union_xl(hint_widths=[8, 16, 24, 32])  # widths of the file's own, not the release's
    unet, controlnet = diffusers_models(model.state_dict(), config, id_features=ID_WIDTH)
    assert type(controlnet).__name__ == "ControlNetUnionModel"
    inp = tiny_xl_inputs()
    gen = torch.Generator().manual_seed(3)
    hints = [torch.rand(2, 3, 128, 128, generator=gen) for _ in types]
    cond = Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH))
    added = {"text_embeds": inp["pooled"], "time_ids": inp["ids"]}
    one_hot = torch.zeros(2, PROMAX)
    one_hot[:, types] = 1
    net, n = model.control_model, model.control_model.num_outputs
    if len(types) == 1:  # one condition: its strength weighs the residuals; several: each one's features
        weights, scales = guess_mode_scales(strengths[0], n) if guess else [strengths[0]] * n, None
    else:
        weights, scales = guess_mode_scales(1.0, n) if guess else None, strengths
    with torch.no_grad():
        down, mid = controlnet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=hints,
                               control_type=one_hot, control_type_idx=types, conditioning_scale=strengths,
                               added_cond_kwargs=added, guess_mode=guess, return_dict=False)
        ours = net(inp["x"], hints, inp["t"], cond, weights=weights, types=types, scales=scales)
        theirs = [*down, mid]
        assert len(ours) == len(theirs) == n and min(r.abs().max() for r in theirs) > 0.5
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        eps = model.denoise(inp["x"], inp["t"], {"c_crossattn": [cond]}, ours)
        expected = unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], added_cond_kwargs=added,
                        down_block_additional_residuals=theirs[:-1], mid_block_additional_residual=theirs[-1])
        torch.testing.assert_close(eps, expected.sample, rtol=0, atol=1e-5)


def test_whole_union_generations_equal_diffusers_union_pipeline_with_one_and_two_conditions():
    """One condition, two in one pass (the second unit on the same Union net), and ProMax's repaint (the picture
    with the repainted pixels at 0, as the inpaint app makes it) against StableDiffusionXLControlNetUnionPipeline
    with the same weights, scheduler, seed and prompt: within 1/255."""
    from diffusers import StableDiffusionXLControlNetUnionPipeline
    from PIL import Image

    from cldm.img2img import condition_picture, inpaint_condition
    from cldm.pipeline import generate
    from cldm.samplers import diffusers_scheduler

    model, config = tiny_union_xl(seed=10)
    unet, controlnet, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    pipe = StableDiffusionXLControlNetUnionPipeline(vae, *diffusers_text_encoders(model.conditioner), unet,
                                                    controlnet, diffusers_scheduler(model, "UniPC"))
    pipe.set_progress_bar_config(disable=True)
    lines, depth = box(), box(200, (slice(None), slice(0, 64)))
    common = dict(steps=3, seed=1, guidance_scale=5.0, sampler="UniPC", verbose=False)
    plain, _ = generate(model, None, "a crimson circle", size=(64, 128), **common)
    one, _ = generate(model, lines, "a crimson circle", strength=0.8, control_type="thin_lines", **common)
    two, _ = generate(model, lines, "a crimson circle", strength=0.8, control_type="thin_lines",
                      units=(ControlUnit(), ControlUnit(image=depth, strength=0.5, control_type="depth")), **common)
    picture = np.random.default_rng(1).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    mask = np.zeros((64, 128), np.uint8)
    mask[8:40, 24:72] = 255
    masked = condition_picture(inpaint_condition(picture, mask))
    assert (masked[8:40, 24:72] == 0).all() and np.array_equal(masked[48:], picture[48:])
    repaint, _ = generate(model, inpaint_condition(picture, mask), "a crimson circle", control_type="repaint",
                          **common)
    cases = ((one, [lines], [3], 0.8), (two, [lines, depth], [3, 1], [0.8, 0.5]), (repaint, [masked], [7], 1.0))
    for ours, images, modes, scales in cases:
        with torch.no_grad():
            theirs = pipe("a crimson circle", control_image=[Image.fromarray(i) for i in images], control_mode=modes,
                          controlnet_conditioning_scale=scales, height=64, width=128, num_inference_steps=3,
                          guidance_scale=5.0, generator=torch.Generator().manual_seed(1), output_type="np").images[0]
        # measured: at most 1 (we truncate to 8 bits as the release does, diffusers rounds), 0.46 on average
        assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0
        assert np.abs(ours[0].astype(int) - plain[0]).mean() > 5  # the control did act
    assert np.abs(one[0].astype(int) - two[0]).mean() > 1  # and the second condition too


def test_a_union_net_round_trips_through_diffusers_folders_and_loads_from_a_single_file(tmp_path):
    from diffusers import ControlNetUnionModel

    from cldm.control_files import control_params
    from cldm.diffusers_interop import control_to_diffusers_keys, export_diffusers_controlnet, read_diffusers_controlnet
    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors

    model, config = tiny_union_xl(seed=2, types=6, hint_widths=[8, 16, 24, 32])
    control = model.control_model.state_dict()
    folder = export_diffusers_controlnet(control, config, tmp_path / "union")
    loaded = ControlNetUnionModel.from_pretrained(folder)
    assert loaded.config.num_control_type == 6
    assert list(loaded.config.conditioning_embedding_out_channels) == [8, 16, 24, 32]
    back = read_diffusers_controlnet(folder)
    assert back.keys() == control.keys() and all(torch.equal(back[k], control[k]) for k in control)
    # one file in diffusers' layout, as xinsir's are downloaded: its layout from its keys and shapes
    save_safetensors(control_to_diffusers_keys(control, dict(loaded.config)), tmp_path / "union.safetensors")
    base = {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")}
    single = load_model(str(TINY_XL_YAML), base, tmp_path / "union.safetensors")
    assert type(single.control_model).__name__ == "UnionControlNet" and single.control_model.num_control_types == 6
    assert all(torch.equal(single.control_model.state_dict()[k], v) for k, v in control.items())
    params = control_params(TINY_XL_UNET, control)
    assert params["num_control_types"] == 6 and params["type_features"] == ID_WIDTH


def test_a_union_net_needs_each_maps_type_and_one_pass_shares_its_weighting():
    from cldm.pipeline import generate
    from cldm.union import union_type_of

    model, _ = tiny_union_xl(seed=4, types=6)
    common = dict(steps=1, seed=1, verbose=False)
    with pytest.raises(ValueError, match=r"ControlNet-Union.*control_type one of pose, depth.*segmentation\)$"):
        generate(model, box(), "x", **common)  # auto, and nothing said which annotator made it
    with pytest.raises(ValueError, match="control type 'tile'"):  # ProMax's, not the six-type net's
        generate(model, box(), "x", control_type="tile", **common)
    with pytest.raises(ValueError, match="controls 1 and 2 share a ControlNet-Union.*same control mode, block"):
        generate(model, box(), "x", control_type="depth", units=(
            ControlUnit(), ControlUnit(image=box(), control_type="pose", block_weights="only_mid")), **common)
    assert [union_type_of("auto", a) for a in ("canny", "hed", "openpose", "seg", "shuffle")] == [
        "thin_lines", "thick_lines", "pose", "segmentation", None]
    assert union_type_of("depth", "canny") == "depth"  # a type given is kept


def test_apps_give_a_union_net_their_maps_kind_and_inpaint_uses_promax_repaint(tmp_path, monkeypatch):
    """The canny app's map is thin lines, a scribble unit's thick lines (one pass of the same net); the inpaint app
    gives ProMax the picture with the repainted pixels at 0 as a repaint condition. The records say so."""
    from skimage import data

    from apps.runner import Runner
    from cldm.outputs import read_params
    from cldm.union import UnionControlNet
    from tests.test_apps import NOTE, task_of, values

    model, _ = tiny_union_xl(seed=9)
    seen = []
    forward = UnionControlNet.forward

    def spy(net, x, hint, *args, types=(), **kwargs):
        seen.append((list(types), [h.clone() for h in hint]))
        return forward(net, x, hint, *args, types=types, **kwargs)

    monkeypatch.setattr(UnionControlNet, "forward", spy)
    canny = Runner(task_of("gradio_canny2image"), model, NOTE, tmp_path)
    _, info = canny(data.astronaut(), **values(canny.task, steps=1, unit2_enabled=True, unit2_preprocessor="scribble"))
    assert seen[-1][0] == [3, 2]  # thin lines and thick lines, in one pass
    record = read_params(sorted(tmp_path.glob("canny-*.png"))[0])
    assert record["control_type"] == "thin_lines" and record["controls"][0]["control_type"] == "thick_lines"

    picture = data.astronaut()
    mask = np.zeros(picture.shape[:2], np.uint8)
    mask[100:300, 150:350] = 255
    inpaint = Runner(task_of("gradio_inpaint2image"), model, NOTE, tmp_path)
    inpaint({"background": picture, "layers": [mask], "composite": None},
            **values(inpaint.task, steps=1, mask_blur=0.0))
    types, (hint,) = seen[-1]
    assert types == [7] and hint.min() == 0 and hint.max() > 0.5  # repaint: the picture, its masked pixels 0
    assert (hint[0].amax(0) == 0).float().mean() > 0.05  # the repainted square, black
    assert read_params(sorted(tmp_path.glob("inpaint-*.png"))[0])["control_type"] == "repaint"


def test_the_cli_says_a_union_maps_kind_for_the_first_and_the_extra_controls(tmp_path, capsys):
    from PIL import Image

    import generate as cli
    from cldm.outputs import read_params
    from ldm.checkpoint import save_safetensors
    from ldm.errors import run_main

    model, _ = tiny_union_xl(seed=11, types=6)
    state = model.state_dict()
    base, union = tmp_path / "base.safetensors", tmp_path / "union.safetensors"
    save_safetensors({k: v for k, v in state.items() if not k.startswith("control_model.")}, base)
    save_safetensors({k: v for k, v in state.items() if k.startswith("control_model.")}, union)
    Image.fromarray(box()).save(tmp_path / "lines.png")
    Image.fromarray(box(200, (slice(None), slice(0, 64)))).save(tmp_path / "depth.png")
    common = ["--config", str(TINY_XL_YAML), "--ckpt", str(base), str(union), "--hint", str(tmp_path / "lines.png"),
              "--steps", "1", "--resolution", "64", "--seed", "1", "--precision", "fp32"]
    cli.main([*common, "--control-type", "thin_lines", "--extra-control", str(union),
              str(tmp_path / "depth.png"), "depth:0.5", "--out", str(tmp_path / "out.png")])
    record = read_params(tmp_path / "out.png")
    assert record["control_type"] == "thin_lines" and record["controls"][0]["control_type"] == "depth"
    assert record["controls"][0]["control"] is None  # the model's own Union net: both maps in one pass
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(cli.main, [*common, "--out", str(tmp_path / "x.png")])
    assert "runs a ControlNet-Union, which was given no control type" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["plain", "union"])
def test_tool_convert_control_moves_sdxl_controls_between_the_sgm_and_diffusers_layouts(tmp_path, kind):
    import tool_convert_control
    from cldm.model import read_any
    from ldm.checkpoint import read_lazily, save_safetensors
    from tests.test_sdxl import tiny_controlled_xl

    model, _ = tiny_union_xl(seed=13, types=6) if kind == "union" else tiny_controlled_xl(seed=13, depth=(0, 1))
    control = {k: v for k, v in model.state_dict().items() if k.startswith("control_model.")}
    save_safetensors(control, tmp_path / "sgm.safetensors")
    config = ["--config", str(TINY_XL_YAML)]
    tool_convert_control.main([str(tmp_path / "sgm.safetensors"), str(tmp_path / "folder"), "--to", "diffusers",
                               *config])
    tool_convert_control.main([str(tmp_path / "sgm.safetensors"), str(tmp_path / "single.safetensors"), "--to",
                               "diffusers", *config])
    assert (tmp_path / "folder/config.json").is_file()
    assert "controlnet_cond_embedding.conv_in.weight" in read_lazily(tmp_path / "single.safetensors")
    for source in ("folder", "single.safetensors"):
        out = tmp_path / f"back-{source.split('.')[0]}.safetensors"
        tool_convert_control.main([str(tmp_path / source), str(out), "--to", "release"])
        back = read_any(out)
        assert back.keys() == control.keys() and all(torch.equal(back[k], v) for k, v in control.items())


def test_tool_add_control_makes_a_fresh_union_net_that_starts_at_its_base(tmp_path):
    """--union 8: the base's encoder copied, the Union parts fresh (the types' embeddings random, the mixed tokens'
    projection and the zero convolutions zero): the eps is the base's, bit for bit, whatever the types."""
    import tool_add_control
    from cldm.model import create_model, load_model
    from ldm.checkpoint import save_safetensors
    from ldm.diffusion import SCHEDULE_BUFFERS

    torch.manual_seed(0)
    base = randomize(create_model(TINY_XL_YAML).eval())
    save_safetensors({k: v for k, v in base.state_dict().items() if k not in (*SCHEDULE_BUFFERS, "logvar")},
                     tmp_path / "base.safetensors")
    tool_add_control.main([str(tmp_path / "base.safetensors"), str(tmp_path / "union.safetensors"), "--config",
                           str(TINY_XL_YAML), "--union", "8"])
    model = load_model(str(TINY_XL_YAML), tmp_path / "union.safetensors")
    net = model.control_model
    assert type(net).__name__ == "UnionControlNet" and net.num_control_types == 8 and net.type_features == 8
    assert net.task_embedding.abs().max() > 1 and net.spatial_ch_projs.weight.abs().max() == 0
    inp = tiny_xl_inputs()
    cond = Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH))
    hints = [torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    with torch.no_grad():
        residuals = net(inp["x"], hints, inp["t"], cond, types=[0, 7])
        plain = model.denoise(inp["x"], inp["t"], {"c_crossattn": [cond]}, None)
        assert torch.equal(model.denoise(inp["x"], inp["t"], {"c_crossattn": [cond]}, residuals), plain)
