"""SDXL, exact against diffusers on tiny configs with every weight random: the UNet with its label embedding
of the pooled text embedding and the size and crop ids."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from cldm.diffusers_interop import diffusers_unet_config
from ldm.conditioning import Conditioning
from ldm.sdxl import SizeIds, id_features, vector
from ldm.unet import UNetModel
from tests.helpers import ROOT, diffusers_parts, randomize

POOLED, ID_WIDTH = 32, 8  # diffusers' own SDXL tests: a 32-wide pooled embedding, 8 Fourier features an id
TINY_XL_UNET = dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2, attention_resolutions=[2],
                    channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True, transformer_depth=[0, 2],
                    context_dim=64, use_linear_in_transformer=True, legacy=False, num_classes="sequential",
                    adm_in_channels=POOLED + 6 * ID_WIDTH)


def tiny_xl_inputs(batch=2, seed=1, size=16):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([SizeIds((1024, 768), (32, 0), (size * 8, size * 8)).tensor()[0],
                       SizeIds.of(size * 8, size * 8).tensor()[0]])[:batch]
    return dict(x=torch.randn(batch, 4, size, size, generator=gen), t=torch.tensor([999, 321][:batch]),
                context=torch.randn(batch, 77, 64, generator=gen), pooled=torch.randn(batch, POOLED, generator=gen),
                ids=ids)


def test_the_size_ids_features_are_diffusers_add_time_ids_features():
    from diffusers.models.embeddings import Timesteps

    ids = SizeIds((1024, 768), (32, 16), (512, 512)).tensor(2)
    theirs = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(ids.flatten()).reshape(2, -1)
    torch.testing.assert_close(id_features(ids), theirs, rtol=0, atol=0)
    assert SizeIds.of(512, 768).values() == [512, 768, 0, 0, 512, 768]


def test_the_sdxl_unet_matches_diffusers_unet2dconditionmodel():
    torch.manual_seed(0)
    ours = randomize(UNetModel(**TINY_XL_UNET).eval())
    config = diffusers_unet_config(TINY_XL_UNET, ID_WIDTH)
    theirs = UNet2DConditionModel(**config).eval()
    state = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(convert_ldm_unet_checkpoint(state, config), strict=True)
    inp = tiny_xl_inputs()
    with torch.no_grad():
        eps = ours(inp["x"], inp["t"], Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH)))
        expected = theirs(inp["x"], inp["t"], encoder_hidden_states=inp["context"],
                          added_cond_kwargs={"text_embeds": inp["pooled"], "time_ids": inp["ids"]}).sample
    assert eps.abs().max() > 0.1
    torch.testing.assert_close(eps, expected, rtol=0, atol=1e-5)


TEXT_ARCH = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4)
BIGG_ARCH = dict(width=32, heads=4, layers=5, output_dim=POOLED)
EMBEDDERS = "sgm.modules.encoders.modules."
TINY_XL_CONDITIONER = {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
    {"is_trainable": False, "input_key": "txt", "target": EMBEDDERS + "FrozenCLIPEmbedder",
     "params": {"layer": "hidden", "layer_idx": 4, "arch": TEXT_ARCH}},  # the penultimate of 5 layers
    {"is_trainable": False, "input_key": "txt", "target": EMBEDDERS + "FrozenOpenCLIPEmbedder2",
     "params": {"arch": "tiny", "layer": "penultimate", "always_return_pooled": True, "legacy": False,
                "text_cfg": BIGG_ARCH}},
    *({"is_trainable": False, "input_key": key, "target": EMBEDDERS + "ConcatTimestepEmbedderND",
       "params": {"outdim": ID_WIDTH}} for key in ("original_size_as_tuple", "crop_coords_top_left",
                                                   "target_size_as_tuple"))]}}


def diffusers_text_encoders(conditioner):
    """diffusers' SDXL text encoders holding the conditioner's weights: CLIPTextModel and, converted by
    diffusers' own single-file helper, CLIPTextModelWithProjection; their tokenizers (the second pads with "!")."""
    import copy

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ldm.text_encoders import clip_tokenizer

    first = copy.deepcopy(conditioner.embedders[0].transformer.text_model)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
                            projection_dim=POOLED, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    second = CLIPTextModelWithProjection(config).eval()
    prefix = "conditioner.embedders.1.model."
    state = {prefix + k: v for k, v in conditioner.embedders[1].model.state_dict().items()}
    missing, unexpected = second.load_state_dict(convert_open_clip_checkpoint(second, state, prefix), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return first, second, clip_tokenizer(), clip_tokenizer(pad_token="!")


def test_the_sdxl_conditioner_matches_diffusers_encode_prompt_and_time_ids():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    from ldm.config import LDM_TARGETS, instantiate

    conditioner = randomize(instantiate(TINY_XL_CONDITIONER, LDM_TARGETS).eval())
    assert {"embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "embedders.1.model.text_projection",
            "embedders.1.model.transformer.resblocks.4.attn.in_proj_weight"} <= set(conditioner.state_dict())
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = diffusers_text_encoders(conditioner)
    unet = UNet2DConditionModel(**diffusers_unet_config(TINY_XL_UNET, ID_WIDTH))
    pipe = StableDiffusionXLPipeline(AutoencoderKL(), text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet,
                                     EulerDiscreteScheduler())
    prompts = ["a crimson circle on a light sky blue background", "a dog " * 60]  # the second one is cut at 77
    ids = SizeIds((1024, 768), (32, 16), (512, 512))
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, device="cpu", negative_prompt=None)
        theirs_ids = pipe._get_add_time_ids((1024, 768), (32, 16), (512, 512), torch.float32, POOLED)
        ours = conditioner(prompts, ids.tensor(2))
        empty = conditioner(["", ""], ids.tensor(2), zero_text=True)
    assert embeds.shape == (2, 77, 64) and embeds.abs().max() > 0.1
    torch.testing.assert_close(ours.crossattn, embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.vector[:, :POOLED], pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(ids.tensor(), theirs_ids, rtol=0, atol=0)
    torch.testing.assert_close(ours.vector[:, POOLED:], id_features(theirs_ids.repeat(2, 1), ID_WIDTH))
    # an empty negative prompt: zeros, as SDXL's pipelines give it (force_zeros_for_empty_prompt)
    assert torch.equal(empty.crossattn, negative) and torch.equal(empty.vector[:, :POOLED], negative_pooled)


TINY_XL_YAML = ROOT / "tests/configs/sdxl_tiny.yaml"


def test_an_sdxl_base_in_the_sgm_single_file_layout_loads_and_generates(tmp_path):
    from cldm.model import create_model, load_model
    from cldm.pipeline import generate
    from ldm.checkpoint import save_safetensors
    from ldm.diffusion import SCHEDULE_BUFFERS

    model = randomize(create_model(TINY_XL_YAML).eval())
    state = {k: v for k, v in model.state_dict().items() if k not in (*SCHEDULE_BUFFERS, "logvar")}
    assert {k.split(".")[0] for k in state} == {"model", "conditioner", "first_stage_model"}  # sgm's layout
    assert {"conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight"} <= set(state)
    save_safetensors({**state, "denoiser.sigmas": torch.ones(1000)}, tmp_path / "sd_xl_tiny.safetensors")
    loaded = load_model(TINY_XL_YAML, tmp_path / "sd_xl_tiny.safetensors")
    assert loaded.scale_factor == 0.13025 and all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(loaded.alphas_cumprod, model.alphas_cumprod)  # SD's schedule, from the yaml
    images, _ = generate(loaded, None, "a red circle", steps=2, seed=1, size=(64, 96), guidance_scale=5.0)
    assert images[0].shape == (64, 96, 3)
    with pytest.raises(ValueError, match="needs the generation's size"):
        loaded.get_learned_conditioning(["a red circle"])


def tiny_controlled_xl(seed=0, depth=(0, 2)):
    """The tiny SDXL base holding a ControlNet (every weight random, zero convolutions included) of transformer
    `depth` per level (the reduced "mid" and "small" SDXL ControlNets have fewer, down to none)."""
    from cldm.model import build_model, controlled
    from ldm.config import load_yaml

    config = controlled(load_yaml(TINY_XL_YAML), {**TINY_XL_UNET, "hint_channels": 3, "transformer_depth": list(depth)})
    torch.manual_seed(seed)
    return randomize(build_model(config).eval(), seed), config


@pytest.mark.parametrize("depth", [(0, 2), (0, 1), (0, 0)], ids=["full", "mid", "small"])
def test_an_sdxl_controlnet_matches_diffusers_controlnetmodel_and_unet(depth):
    from cldm.cldm import guess_mode_scales
    from cldm.diffusers_interop import diffusers_models

    model, config = tiny_controlled_xl(depth=depth)
    assert controlnet_depth(model.control_model) == [depth[1]] * 3  # level 1's two blocks and the middle
    assert "control_model.label_emb.0.2.weight" in model.state_dict()
    unet, controlnet = diffusers_models(model.state_dict(), config, id_features=ID_WIDTH)
    inp = tiny_xl_inputs()
    hint = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    cond = Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH))
    added = {"text_embeds": inp["pooled"], "time_ids": inp["ids"]}
    n = model.control_model.num_outputs
    with torch.no_grad():
        for name, scales in (("control", [1.0] * n), ("guess mode", guess_mode_scales(1.0, n))):
            residuals = model.control_model(inp["x"], hint, inp["t"], cond, weights=scales)
            down, mid = controlnet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=hint,
                                   added_cond_kwargs=added, return_dict=False)
            theirs = [r * s for r, s in zip([*down, mid], scales)]
            assert len(residuals) == len(theirs) == 7  # SDXL's 10 at full size: 9 down and the middle
            for ours_r, their_r in zip(residuals, theirs):
                torch.testing.assert_close(ours_r, their_r, rtol=0, atol=1e-5, msg=name)
            eps = model.apply_model(inp["x"], inp["t"], {"c_concat": [hint], "c_crossattn": [cond]},
                                    control_scales=scales)
            expected = unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], added_cond_kwargs=added,
                            down_block_additional_residuals=theirs[:-1], mid_block_additional_residual=theirs[-1])
            assert eps.abs().max() > 0.1
            torch.testing.assert_close(eps, expected.sample, rtol=0, atol=1e-5, msg=name)


def controlnet_depth(net):
    """Transformer blocks in each attention block of a tiny ControlNet: level 1's two, then the middle one."""
    blocks = lambda block: sum(k.endswith("attn1.to_q.weight") for k in block.state_dict())  # noqa: E731
    return [blocks(net.input_blocks[4]), blocks(net.input_blocks[5]), blocks(net.middle_block)]


def test_an_sdxl_controlnet_exports_to_a_diffusers_folder_and_back(tmp_path):
    from diffusers import ControlNetModel

    from cldm.diffusers_interop import export_diffusers_controlnet, read_diffusers_controlnet

    model, config = tiny_controlled_xl(seed=2)
    control = model.control_model.state_dict()
    folder = export_diffusers_controlnet(control, config, tmp_path / "controlnet")
    loaded = ControlNetModel.from_pretrained(folder)
    assert loaded.config.addition_embed_type == "text_time" and loaded.add_embedding is not None
    back = read_diffusers_controlnet(folder)
    assert back.keys() == control.keys() and all(torch.equal(back[k], control[k]) for k in control)


def test_sdxl_generates_with_its_control_through_the_one_pipeline():
    import numpy as np

    from cldm.pipeline import generate

    model, _ = tiny_controlled_xl(seed=4)
    hint = np.zeros((64, 128, 3), np.uint8)
    hint[16:48, 32:96] = 255
    common = dict(steps=2, seed=3, guidance_scale=5.0, verbose=False)
    plain, _ = generate(model, None, "a red circle", size=(64, 128), **common)
    off, _ = generate(model, hint, "a red circle", strength=0.0, **common)
    on, _ = generate(model, hint, "a red circle", **common)
    late, _ = generate(model, hint, "a red circle", control_start=0.5, block_weights="soft", **common)
    assert np.array_equal(plain[0], off[0])  # strength 0: the base alone, bit for bit
    assert np.abs(on[0].astype(int) - plain[0]).max() > 0 and np.abs(late[0].astype(int) - on[0]).max() > 0


def test_the_cli_takes_an_sdxl_base_and_a_control_file_with_the_bases_yaml(tmp_path, capsys):
    """sgm's yaml describes the base only: the control's layout (here a small one) comes from its file; an SD 1.5
    control on that base is refused naming both families."""
    import generate as cli
    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors
    from ldm.errors import run_main
    from tests.helpers import TINY_V15, tiny_model

    model, _ = tiny_controlled_xl(seed=5, depth=(0, 0))
    state = model.state_dict()
    base = {k: v for k, v in state.items() if not k.startswith("control_model.")}
    save_safetensors(base, tmp_path / "base.safetensors")
    control = {k: v for k, v in state.items() if k.startswith("control_model.")}
    save_safetensors(control, tmp_path / "control.safetensors")
    loaded = load_model(str(TINY_XL_YAML), tmp_path / "base.safetensors", tmp_path / "control.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    cli.main(["--config", str(TINY_XL_YAML), "--ckpt", str(tmp_path / "base.safetensors"),
              str(tmp_path / "control.safetensors"), "--steps", "2", "--resolution", "64", "--seed", "1",
              "--precision", "fp32", "--out", str(tmp_path / "out.png")])
    assert (tmp_path / "out.png").is_file() and (tmp_path / "out-map.png").is_file()
    sd15 = tiny_model(TINY_V15).state_dict()
    save_safetensors({k: v for k, v in sd15.items() if k.startswith("control_model.")}, tmp_path / "sd15.safetensors")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(cli.main, ["--config", str(TINY_XL_YAML), "--ckpt", str(tmp_path / "base.safetensors"),
                            str(tmp_path / "sd15.safetensors"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert "sd15.safetensors is a control for cross-attention width 32" in err
    assert "but the base is cross-attention width 64" in err


@pytest.mark.parametrize("depth", [(0, 2), (0, 0)], ids=["full", "small"])
def test_a_diffusers_sdxl_controlnet_single_file_loads_without_its_config(tmp_path, depth):
    """diffusers' layout in one file (as lllyasviel's sd_control_collection ships them): the layout, the label
    embedding and the transformer depth per level come from the keys and shapes."""
    from cldm.diffusers_interop import config_from_keys, control_to_diffusers_keys, diffusers_controlnet_config
    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors

    model, config = tiny_controlled_xl(seed=6, depth=depth)
    control = model.control_model.state_dict()
    theirs = control_to_diffusers_keys(control, diffusers_controlnet_config(config, id_features=ID_WIDTH))
    assert config_from_keys(theirs)["transformer_layers_per_block"] == list(depth)
    save_safetensors(theirs, tmp_path / "diffusers_xl_tiny.safetensors")
    base = {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")}
    loaded = load_model(str(TINY_XL_YAML), base, tmp_path / "diffusers_xl_tiny.safetensors")
    assert loaded.control_model.state_dict().keys() == control.keys()
    assert all(torch.equal(loaded.control_model.state_dict()[k], v) for k, v in control.items())


def test_the_family_yaml_follows_the_base_file():
    from cldm.model import family_config

    assert family_config({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": 0}).name == \
        "sd_xl_base.yaml"
    assert family_config({"cond_stage_model.model.ln_final.weight": 0}).name == "cldm_v21.yaml"
    assert family_config({"cond_stage_model.transformer.text_model.final_layer_norm.weight": 0}).name == \
        "cldm_v15.yaml"


def test_the_shipped_sdxl_yaml_builds_sdxl_at_its_real_size():
    from cldm.model import build_model

    model = build_model(ROOT / "models/sd_xl_base.yaml", device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert round(count(model.model) / 1e6) == 2567 and round(count(model.conditioner) / 1e6) == 818
    assert model.scale_factor == 0.13025 and model.model.diffusion_model.config.adm_in_channels == 2816


@pytest.mark.parametrize("layout, depth", [("full", 2), ("small", 0)])
def test_tool_add_control_makes_an_sdxl_control_that_starts_at_its_base(tmp_path, layout, depth):
    import numpy as np

    import tool_add_control
    from cldm.model import create_model, load_model
    from cldm.pipeline import generate
    from ldm.checkpoint import save_safetensors

    base = randomize(create_model(TINY_XL_YAML).eval(), seed=7).state_dict()
    save_safetensors(base, tmp_path / "base.safetensors")
    tool_add_control.main([str(tmp_path / "base.safetensors"), str(tmp_path / "ini.safetensors"), "--config",
                           str(TINY_XL_YAML), "--layout", layout])
    model = load_model(str(TINY_XL_YAML), tmp_path / "ini.safetensors")
    net, state = model.control_model, model.state_dict()
    assert controlnet_depth(net) == [depth] * 3
    copied = [k for k in net.state_dict() if f"model.diffusion_model.{k}" in base]
    assert "label_emb.0.2.weight" in copied and all(
        torch.equal(state[f"control_model.{k}"], base[f"model.diffusion_model.{k}"]) for k in copied)
    assert all(not v.any() for k, v in net.state_dict().items() if k.startswith(("zero_convs", "middle_block_out")))
    hint = np.full((64, 64, 3), 255, np.uint8)
    common = dict(steps=2, seed=1, verbose=False)
    with_control, _ = generate(model, hint, "a red circle", **common)
    plain, _ = generate(model, None, "a red circle", size=(64, 64), **common)
    assert np.array_equal(with_control[0], plain[0])  # zero convolutions: exactly the base, until trained


def test_the_transfer_and_extract_tools_work_on_sdxl(tmp_path):
    """A control trained on one SDXL base moved to a community SDXL checkpoint (control + community - base on
    the copied encoder), then extracted; the community model with it loads from the base's yaml."""
    import tool_extract_control
    import tool_transfer_control
    from cldm.model import load_model
    from ldm.checkpoint import read_state_dict, save_safetensors

    trained, _ = tiny_controlled_xl(seed=8)
    state = trained.state_dict()
    base = {k: v for k, v in state.items() if not k.startswith("control_model.")}
    community = {k: v + 0.01 if k.startswith("model.diffusion_model.") else v for k, v in base.items()}
    for name, weights in (("control", state), ("base", base), ("community", community)):
        save_safetensors(weights, tmp_path / f"{name}.safetensors")
    named = {flag: str(tmp_path / f"{name}.safetensors") for flag, name in (
        ("--control", "control"), ("--base", "base"), ("--community", "community"), ("--output", "moved"))}
    tool_transfer_control.main([item for pair in named.items() for item in pair])
    tool_extract_control.main([str(tmp_path / "moved.safetensors"), str(tmp_path / "only.safetensors")])
    moved = read_state_dict(tmp_path / "only.safetensors")
    key = "control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # copied from the UNet: moved
    torch.testing.assert_close(moved[key], state[key] + 0.01)
    assert torch.equal(moved["control_model.zero_convs.0.0.weight"], state["control_model.zero_convs.0.0.weight"])
    loaded = load_model(str(TINY_XL_YAML), tmp_path / "community.safetensors", tmp_path / "only.safetensors")
    assert torch.equal(loaded.state_dict()[key], moved[key])


def test_an_app_runs_an_sdxl_base_and_control_starting_at_1024(tmp_path):
    from skimage import data

    from apps.page import build_demo
    from apps.runner import Runner
    from tests.test_apps import NOTE, task_of, values

    model, _ = tiny_controlled_xl(seed=9)
    task = task_of("gradio_canny2image")
    runner = Runner(task, model, NOTE, tmp_path)
    assert runner.defaults().image_resolution == 1024
    build_demo(task, runner)  # the page shows those defaults
    gallery, info = runner(data.astronaut(), **values(task, resolution=64, steps=1))
    assert len(gallery) == 2 and gallery[1].shape == (64, 64, 3) and "Seed 1" in info


@pytest.mark.parametrize("sampler", ["UniPC", "Euler a", "LCM", "TCD", "Euler trailing"])
def test_a_whole_sdxl_generation_equals_diffusers_controlnet_pipeline(sampler):
    """The same weights, prompt, seed and scheduler in StableDiffusionXLControlNetPipeline: the same image within
    1/255 a pixel (conditioning, UNet, control, sampler loop, starting noise and VAE together), the few-step
    samplers (LCM, TCD, trailing Euler) included."""
    import numpy as np
    from diffusers import StableDiffusionXLControlNetPipeline
    from PIL import Image

    from cldm.pipeline import generate
    from cldm.samplers import diffusers_scheduler

    model, config = tiny_controlled_xl(seed=10)
    unet, controlnet, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = diffusers_text_encoders(model.conditioner)
    pipe = StableDiffusionXLControlNetPipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet,
                                               controlnet, diffusers_scheduler(model, sampler))
    pipe.set_progress_bar_config(disable=True)
    hint = np.zeros((64, 128, 3), np.uint8)
    hint[16:48, 32:96] = 255
    prompt = "a crimson circle on a light sky blue background"
    eta = 0.3 if sampler == "TCD" else 0.0  # TCD's gamma, its stochastic part drawn from the generator
    ours, _ = generate(model, hint, prompt, steps=3, seed=1, guidance_scale=5.0, sampler=sampler, eta=eta,
                       verbose=False)
    with torch.no_grad():
        theirs = pipe(prompt, image=Image.fromarray(hint), height=64, width=128, num_inference_steps=3, eta=eta,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    theirs = (theirs * 255).round()
    assert ours[0].std() > 5  # an image, not a flat colour
    # measured: at most 1, 0.46 on average (we truncate to 8 bits as the release does, diffusers rounds)
    difference = np.abs(ours[0].astype(float) - theirs)
    assert difference.max() <= 1.0


@pytest.mark.parametrize("layout", ["release", "bare", "diffusers"])
def test_a_vae_file_replaces_the_bases_vae_in_any_layout(tmp_path, layout):
    """--vae (SDXL's fp16-fix VAE, a fine-tuned one): the release's keys, the VAE's own, or diffusers'."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    from cldm.model import create_model
    from cldm.vae_files import load_vae
    from ldm.checkpoint import save_safetensors
    from ldm.config import load_yaml

    model = create_model(TINY_XL_YAML).eval()
    other = randomize(create_model(TINY_XL_YAML), seed=11).first_stage_model.state_dict()
    written = {"release": {f"first_stage_model.{k}": v for k, v in other.items()}, "bare": other}.get(layout)
    if layout == "diffusers":
        config = create_vae_diffusers_config_from_ldm(load_yaml(TINY_XL_YAML), {})
        written = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in other.items()}, config)
    save_safetensors(written, tmp_path / "vae.safetensors")
    load_vae(model, tmp_path / "vae.safetensors")
    loaded = model.first_stage_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in other.items())


def test_an_sdxl_base_in_a_diffusers_folder_loads_into_sgms_layout(tmp_path):
    """A pipeline saved by diffusers (model_index.json, unet, text_encoder(_2), vae, ...): its yaml made from
    the parts' configs, its weights in sgm's keys, equal to the weights it was saved from."""
    import numpy as np
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    import generate as cli
    from cldm.model import load_model
    from cldm.samplers import diffusers_scheduler
    from ldm.checkpoint import save_safetensors

    model, config = tiny_controlled_xl(seed=12)
    state = model.state_dict()
    unet, _, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = diffusers_text_encoders(model.conditioner)
    text_encoder.config.hidden_act = "quick_gelu"  # the CLIP-L tower's, as the conditioner built it
    StableDiffusionXLPipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet,
                              diffusers_scheduler(model, "UniPC")).save_pretrained(tmp_path / "sdxl")
    loaded = load_model(None, tmp_path / "sdxl")
    ours = loaded.state_dict()
    # every weight but bigG's logit_scale, CLIP's image-text temperature, which diffusers' text encoder lacks
    base = {k: v for k, v in state.items() if not k.startswith("control_model.") and not k.endswith("logit_scale")}
    different = [k for k, v in base.items() if not k.endswith("position_ids") and not torch.equal(ours[k], v)]
    assert len(base) > 700 and not different, different[:5]
    assert loaded.scale_factor == 0.13025 and loaded.conditioner.embedders[2].outdim == ID_WIDTH
    # the CLI: the yaml from the folder, a control from its file
    control = {k: v for k, v in state.items() if k.startswith("control_model.")}
    save_safetensors(control, tmp_path / "control.safetensors")
    cli.main(["--ckpt", str(tmp_path / "sdxl"), str(tmp_path / "control.safetensors"), "--steps", "1",
              "--resolution", "64", "--out", str(tmp_path / "out.png")])
    assert (tmp_path / "out.png").is_file()
    # the base alone: from the text, and again from its record
    cli.main(["--ckpt", str(tmp_path / "sdxl"), "--steps", "2", "--resolution", "64", "--seed", "2",
              "--out", str(tmp_path / "text.png")])
    cli.main(["--ckpt", str(tmp_path / "sdxl"), "--reproduce", str(tmp_path / "text.png"), "--out",
              str(tmp_path / "again.png")])
    text, again = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("text", "again"))
    assert text.shape == (64, 64, 3) and np.array_equal(text, again) and not (tmp_path / "text-map.png").exists()


def test_the_starting_noise_can_be_given_as_latents():
    import numpy as np

    from cldm.pipeline import generate

    model, _ = tiny_controlled_xl(seed=13)
    hint = np.full((64, 64, 3), 255, np.uint8)
    seeded, _ = generate(model, hint, "a red circle", steps=2, seed=5, verbose=False)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))  # diffusers' draw of it
    given, _ = generate(model, hint, "a red circle", steps=2, seed=5, latents=noise, verbose=False)
    other, _ = generate(model, hint, "a red circle", steps=2, seed=5, latents=noise + 1, verbose=False)
    assert np.array_equal(seeded[0], given[0]) and not np.array_equal(seeded[0], other[0])
    with pytest.raises(ValueError, match=r"latents of shape \(1, 4, 4, 4\) given; this generation's are"):
        generate(model, hint, "a red circle", steps=1, latents=torch.zeros(1, 4, 4, 4), verbose=False)


def test_a_runs_last_generation_frees_the_text_encoders_and_makes_the_same_image():
    import numpy as np

    from cldm.pipeline import generate

    model, _ = tiny_controlled_xl(seed=12)
    hint = np.zeros((64, 64, 3), np.uint8)
    hint[16:48, 16:48] = 255
    kept, _ = generate(model, hint, "a red circle", steps=2, seed=3, verbose=False)
    freed, _ = generate(model, hint, "a red circle", steps=2, seed=3, verbose=False, release_text_encoders=True)
    assert np.array_equal(kept[0], freed[0])
    assert all(p.is_meta for p in model.conditioner.parameters())
    assert not any(p.is_meta for p in model.model.parameters())
    with pytest.raises(RuntimeError, match="text encoders were released after encoding"):
        generate(model, hint, "a red circle", steps=1, verbose=False)
