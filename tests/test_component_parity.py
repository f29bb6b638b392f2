"""VAE, SD 2.x text encoder and a whole DDIM sample against independent implementations (diffusers, transformers)."""

import warnings

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_vae_diffusers_config_from_ldm,
)
from transformers import CLIPTextConfig, CLIPTextModel

from cldm.ddim_hacked import DDIMSampler
from ldm.config import load_yaml
from tests.helpers import TINY_V15, TINY_V21, tiny_inputs, tiny_model
from tests.test_diffusers_parity import diffusers_eps, diffusers_pair


def relative_error(ours, theirs):
    return float((ours - theirs).abs().max() / max(1.0, float(theirs.abs().max())))


def test_vae_matches_diffusers():
    model = tiny_model(TINY_V15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_vae_diffusers_config_from_ldm(load_yaml(TINY_V15), {}, image_size=64)
    vae = AutoencoderKL(**config).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(model.state_dict(), config), strict=True)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        ours_latent = model.encode_first_stage(image).mode()
        theirs_latent = vae.encode(image).latent_dist.mean
        ours_image = model.decode_first_stage(z)
        theirs_image = vae.decode(z / model.scale_factor).sample
    assert relative_error(ours_latent, theirs_latent) < 1e-5
    assert relative_error(ours_image, theirs_image) < 1e-5


def test_sd2_penultimate_text_features_match_transformers_clip():
    """diffusers runs SD 2.x's OpenCLIP text tower as a transformers CLIPTextModel one layer shorter."""
    model = tiny_model(TINY_V21)
    encoder = model.cond_stage_model
    width = encoder.model.width
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                            num_attention_heads=encoder.model.heads, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=width)
    clip = CLIPTextModel(config).eval()
    converted = convert_open_clip_checkpoint(clip, model.state_dict())
    converted = {k.removeprefix("text_model."): v for k, v in converted.items() if "layers.1." not in k}
    result = clip.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and all("position_ids" in k for k in result.missing_keys)
    prompts = ["a crimson circle on a light sky blue background", ""]
    with torch.no_grad():
        ours = model.get_learned_conditioning(prompts)
        theirs = clip(input_ids=encoder.tokenize(prompts)).last_hidden_state
    assert relative_error(ours, theirs) < 1e-5


def test_four_step_guided_ddim_sample_matches_diffusers_scheduler():
    model = tiny_model(TINY_V15)
    unet, controlnet = diffusers_pair(model, TINY_V15)
    inp = tiny_inputs(model)
    uncontext = torch.zeros_like(inp["context"])
    with torch.no_grad():
        ours, _ = DDIMSampler(model).sample(
            4, 2, (4, 8, 8), {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}, verbose=False,
            x_T=inp["x"], unconditional_guidance_scale=9.0,
            unconditional_conditioning={"c_concat": [inp["hint"]], "c_crossattn": [uncontext]})

        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
        scheduler.set_timesteps(4)
        x = inp["x"]
        for t in scheduler.timesteps:
            ts = t.repeat(2)
            cond = diffusers_eps(unet, controlnet, {**inp, "x": x, "t": ts})
            uncond = diffusers_eps(unet, controlnet, {**inp, "x": x, "t": ts, "context": uncontext})
            x = scheduler.step(uncond + 9.0 * (cond - uncond), t, x).prev_sample
    assert [int(t) for t in scheduler.timesteps] == [751, 501, 251, 1]
    assert relative_error(ours, x) < 1e-4
