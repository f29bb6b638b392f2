"""LoRAs against diffusers' `load_lora_weights` + `fuse_lora` on tiny random weights: kohya files (diffusers'
module names for SD 1.5, sgm's for SDXL, LoCon convolutions, alphas, both text encoders) and files written by
diffusers' own `save_lora_weights` from PEFT layers; the base back bit for bit after a generation; a LoRA of
another family refused."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cldm.loras import applied, lora_targets
from cldm.pipeline import generate
from ldm.checkpoint import CheckpointError
from tests.helpers import TINY_V15, diffusers_parts, sd15_pipeline, tiny_model

PROMPT = "a crimson circle"
COMMON = dict(size=(64, 64), steps=3, seed=2, guidance_scale=7.0, sampler="UniPC", verbose=False)


def kohya_file(path, modules, prefix, seed=0, rank=4, alpha=2.0):
    """A kohya LoRA over `modules` ({dotted module name: the nn.Linear or nn.Conv2d it adapts}): each module's
    name with underscores after `prefix`, random down and up weights (LoCon's for convolutions) and an alpha."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in modules.items():
        key = f"{prefix}_{name.replace('.', '_')}"
        if isinstance(module, torch.nn.Conv2d):
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=gen)
        else:
            down = torch.randn(rank, module.in_features, generator=gen)
            up = torch.randn(module.out_features, rank, generator=gen)
        state[f"{key}.lora_down.weight"] = down / down[0].numel() ** 0.5
        state[f"{key}.lora_up.weight"] = 0.5 * up / rank ** 0.5
        state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, path)
    return path


def pick(module, patterns, within=""):
    """The linear and convolution layers of `module` whose names hold one of `patterns`, named from `within`."""
    return {within + name: m for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and any(p in name for p in patterns)}


def diffusers_image(pipe, **extra):
    with torch.no_grad():
        image = pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=7.0,
                     generator=torch.Generator().manual_seed(2), output_type="np", **extra).images[0]
    return (image * 255).round()


def test_a_kohya_lora_with_locon_and_the_text_encoder_equals_diffusers_fused(tmp_path):
    import copy

    model = tiny_model(TINY_V15, seed=2)
    pipe = sd15_pipeline(model)
    modules = pick(pipe.unet, ("attn1.to_q", "attn2.to_v", "to_out.0", "ff.net.0.proj", "proj_in", "resnets.0.conv1",
                               "time_emb_proj"))
    path = kohya_file(tmp_path / "style.safetensors", modules, "lora_unet")
    # the text encoder's MLP: diffusers (0.42 with transformers 5) drops kohya's attention LoRAs of the text
    # encoder as unexpected keys, so those are checked against the weights' arithmetic below instead
    text = kohya_file(tmp_path / "te.safetensors", pick(model.cond_stage_model.transformer, ("fc1",)), "lora_te",
                      seed=1)
    from safetensors.torch import load_file

    save_file({**load_file(path), **load_file(text)}, tmp_path / "both.safetensors")
    before = copy.deepcopy(model.state_dict())
    with applied(model, [(tmp_path / "both.safetensors", 0.7)]):
        ours, _ = generate(model, None, PROMPT, **COMMON)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # unloaded bit for bit
    plain, _ = generate(model, None, PROMPT, **COMMON)
    pipe.load_lora_weights(str(tmp_path / "both.safetensors"))
    pipe.fuse_lora(lora_scale=0.7)
    theirs = diffusers_image(pipe)
    assert np.abs(ours[0].astype(int) - plain[0]).max() > 10
    assert np.abs(ours[0].astype(float) - theirs).max() <= 1.0


def test_a_diffusers_lora_saved_from_peft_layers_equals_diffusers_fused(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = tiny_model(TINY_V15, seed=3)
    writer = sd15_pipeline(model)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_out.0",
                                                                                    "conv1"])
    writer.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(writer.unet),
                                              unet_lora_adapter_metadata=config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    with applied(model, [(path, 0.6)]):
        ours, _ = generate(model, None, PROMPT, **COMMON)
    pipe = sd15_pipeline(model)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.6)
    assert np.abs(ours[0].astype(float) - diffusers_image(pipe)).max() <= 1.0


def test_an_sdxl_kohya_lora_with_sgm_names_and_both_text_encoders_equals_diffusers_fused(tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from cldm.samplers import diffusers_scheduler
    from tests.test_sdxl import ID_WIDTH, diffusers_text_encoders, tiny_controlled_xl

    model, config = tiny_controlled_xl(seed=6)
    unet = model.model.diffusion_model
    kohya_file(tmp_path / "unet.safetensors", pick(unet, ("attn1.to_k", "attn2.to_q", "proj_out", "in_layers.2",
                                                          "emb_layers.1")), "lora_unet")
    encoders = diffusers_text_encoders(model.conditioner)
    kohya_file(tmp_path / "te1.safetensors", pick(encoders[0], ("fc2",), "text_model."), "lora_te1", seed=1)
    kohya_file(tmp_path / "te2.safetensors", pick(encoders[1], ("fc1",)), "lora_te2", seed=2)
    state = {k: v for name in ("unet", "te1", "te2") for k, v in load_file(tmp_path / f"{name}.safetensors").items()}
    save_file(state, tmp_path / "xl.safetensors")
    with applied(model, [(tmp_path / "xl.safetensors", 0.8)]):
        ours, _ = generate(model, None, PROMPT, **{**COMMON, "guidance_scale": 5.0})
    d_unet, _, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    pipe = StableDiffusionXLPipeline(vae, *encoders, d_unet, diffusers_scheduler(model, "UniPC"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "xl.safetensors"))
    pipe.fuse_lora(lora_scale=0.8)
    with torch.no_grad():
        theirs = pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(2), output_type="np").images[0]
    assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0


def test_a_lora_for_another_family_is_refused_with_what_it_targets(tmp_path):
    from tests.test_sdxl import tiny_controlled_xl

    model = tiny_model(TINY_V15)
    xl, _ = tiny_controlled_xl()
    path = kohya_file(tmp_path / "xl.safetensors", pick(xl.model.diffusion_model, ("attn1.to_k", "attn2.to_k")),
                      "lora_unet")
    with pytest.raises(CheckpointError, match="modules are not this model's .*input_blocks.*a LoRA for "
                                              "cross-attention width 64"):
        with applied(model, [(path, 1.0)]):
            pass
    assert "lora_unet_input_blocks_1_1_proj_in" in lora_targets(model)  # sgm names name SD 1.5's modules too


@torch.no_grad()
def test_attention_loras_of_both_text_encoder_layouts_update_the_clip_weights_they_name(tmp_path):
    """SDXL's CLIP-L (transformers' layout) and OpenCLIP bigG (q, k, v fused in one in-projection): after merging,
    each weight read in CLIP's layout (through diffusers' own converter) is its original plus weight * alpha /
    rank * up @ down."""
    from safetensors.torch import load_file

    from tests.test_sdxl import diffusers_text_encoders, tiny_controlled_xl

    model, _ = tiny_controlled_xl(seed=6)
    before = diffusers_text_encoders(model.conditioner)[:2]
    # diffusers' CLIP-L is the transformer inside CLIPTextModel, whose names kohya writes from text_model.
    modules = {1: pick(before[0], ("k_proj", "out_proj"), "text_model."),
               2: pick(before[1], ("q_proj", "v_proj", "out_proj", "fc2"))}
    for k, chosen in modules.items():
        kohya_file(tmp_path / f"te{k}.safetensors", chosen, f"lora_te{k}", seed=k, rank=2, alpha=3.0)
    state = {**load_file(tmp_path / "te1.safetensors"), **load_file(tmp_path / "te2.safetensors")}
    save_file(state, tmp_path / "te.safetensors")
    with applied(model, [(tmp_path / "te.safetensors", 0.5)]):
        after = diffusers_text_encoders(model.conditioner)[:2]
    for k, (old, new) in enumerate(zip(before, after), start=1):
        for name in modules[k]:
            key = f"lora_te{k}_{name.replace('.', '_')}"
            delta = 0.5 * 3.0 / 2 * state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]
            inner = name.removeprefix("text_model.") if k == 1 else name
            expected = old.get_submodule(inner).weight + delta
            torch.testing.assert_close(new.get_submodule(inner).weight, expected, rtol=0, atol=1e-6, msg=key)


@torch.no_grad()
def test_the_setting_and_the_prompt_tag_apply_the_same_lora_and_the_tag_is_read_out(tmp_path, monkeypatch):
    import cldm.loras

    monkeypatch.setattr(cldm.loras, "LORA_FOLDER", tmp_path)
    model = tiny_model(TINY_V15, seed=2)
    kohya_file(tmp_path / "style.safetensors", pick(model.model.diffusion_model, ("attn2.to_k", "proj_out")),
               "lora_unet")
    with applied(model, [(tmp_path / "style.safetensors", 0.7)]):
        merged, _ = generate(model, None, PROMPT, **COMMON)
    by_setting, _ = generate(model, None, PROMPT, loras="style:0.7", **COMMON)
    by_tag, _ = generate(model, None, f"{PROMPT}, <lora:style:0.7>", **COMMON)
    assert np.array_equal(by_setting[0], merged[0]) and np.array_equal(by_tag[0], merged[0])
    kohya_file(tmp_path / "other.safetensors", pick(model.model.diffusion_model, ("attn2.to_k", "conv2")),
               "lora_unet", seed=5)
    with applied(model, [(tmp_path / "style.safetensors", 0.7), (tmp_path / "other.safetensors", -0.4)]):
        both, _ = generate(model, None, PROMPT, **COMMON)
    mixed, _ = generate(model, None, f"{PROMPT} <lora:other:-0.4>", loras="style.safetensors:0.7", **COMMON)
    assert np.array_equal(mixed[0], both[0]) and not np.array_equal(both[0], merged[0])
    with pytest.raises(CheckpointError, match="LoRA 'missing' is not a file in"):
        generate(model, None, "<lora:missing:1>", **COMMON)
    with pytest.raises(ValueError, match="prompt: <lora:style:x>: its weight is no number"):
        generate(model, None, "<lora:style:x>", **COMMON)


def test_a_lora_through_the_cli_is_recorded_and_reproduced_and_a_page_takes_only_its_folders(tmp_path, monkeypatch):
    from PIL import Image

    import cldm.loras
    import generate as cli
    from apps.runner import Runner
    from cldm.outputs import read_params
    from tests.test_apps import NOTE, task_of, values
    from toy.model import circle_outline, load_default_model

    toy = load_default_model()
    path = kohya_file(tmp_path / "toy_style.safetensors", pick(toy.model.diffusion_model, ("attn1.to_q", "to_out.0")),
                      "lora_unet", alpha=4.0)
    out, plain = tmp_path / "lora.png", tmp_path / "plain.png"
    common = ["--resolution", "64", "--steps", "2", "--seed", "4"]
    cli.main([*common, "--lora", f"{path}:0.9", "--out", str(out)])
    cli.main([*common, "--out", str(plain)])
    assert read_params(out)["loras"] == f"{path}:0.9"
    assert np.abs(np.asarray(Image.open(out)).astype(int) - np.asarray(Image.open(plain))).max() > 10
    cli.main(["--reproduce", str(out), "--out", str(tmp_path / "again.png")])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))

    monkeypatch.setattr(cldm.loras, "LORA_FOLDER", tmp_path / "loras")
    task = task_of("gradio_canny2image")
    runner = Runner(task, toy, NOTE, tmp_path / "app", toy=True)
    with pytest.raises(CheckpointError, match="is not a file in .*loras/: put it there"):
        runner(circle_outline(256), **values(task, loras=f"{path}:0.9"))  # a path: not from a page
    (tmp_path / "loras").mkdir()
    path.rename(tmp_path / "loras" / path.name)
    images, _ = runner(circle_outline(256), **values(task, prompt="<lora:toy_style:0.9> a circle"))
    assert read_params(max((tmp_path / "app").glob("canny-0*.png")))["prompt"] == "<lora:toy_style:0.9> a circle"
    # the page's picker offers the folder's files and adds the one chosen to the LoRAs box at weight 1
    from apps.page import build_demo
    from apps.widgets import with_lora

    demo = build_demo(task, runner)
    picker = next(c for c in demo.blocks.values() if getattr(c, "label", None) == "Add a LoRA")
    assert [choice[0] for choice in picker.choices] == ["toy_style"]
    assert with_lora("toy_style", "other:0.5 ") == ("other:0.5, toy_style:1", None)
    assert with_lora(None, "other:0.5") == ("other:0.5", None)
