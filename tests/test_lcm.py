"""LCM-distilled UNets, which take the guidance scale as an input (its embedding added to the timestep's) instead
of classifier-free guidance's two passes: a whole generation with a ControlNet against diffusers'
StableDiffusionControlNetPipeline with the LCM scheduler, on a tiny model with random weights."""

import numpy as np
import torch
import yaml
from diffusers import StableDiffusionControlNetPipeline
from PIL import Image

from cldm.pipeline import generate
from cldm.samplers import diffusers_scheduler
from ldm.config import load_yaml
from ldm.text_encoders import clip_tokenizer
from ldm.unet import guidance_embedding
from tests.helpers import TINY_V15, diffusers_parts, tiny_model

PROMPT, WIDTH = "a crimson circle", 16


def tiny_lcm(tmp_path, seed=4):
    config = load_yaml(TINY_V15)
    config["model"]["params"]["unet_config"]["params"]["time_cond_proj_dim"] = WIDTH
    path = tmp_path / "lcm.yaml"
    path.write_text(yaml.safe_dump(config))
    return tiny_model(path, seed=seed), config


def test_the_guidance_embedding_is_diffusers():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 0.5, 7.5])
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=WIDTH)
    assert torch.allclose(guidance_embedding(w, WIDTH), theirs, atol=1e-6)


def test_an_lcm_unet_generation_equals_diffusers_controlnet_pipeline(tmp_path):
    model, config = tiny_lcm(tmp_path)
    assert model.model.diffusion_model.time_embed.cond_proj.weight.shape == (32, WIDTH)
    hint = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    unet, controlnet, vae = diffusers_parts(model, config)
    assert unet.config.time_cond_proj_dim == WIDTH
    pipe = StableDiffusionControlNetPipeline(vae, model.cond_stage_model.transformer.text_model, clip_tokenizer(), unet,
                                             controlnet, diffusers_scheduler(model, "LCM"), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = {}
    for scale in (1.5, 4.0):
        ours, _ = generate(model, hint, PROMPT, steps=4, sampler="LCM", guidance_scale=scale, strength=0.8, seed=3,
                           verbose=False)
        with torch.no_grad():
            theirs = pipe(PROMPT, Image.fromarray(hint), num_inference_steps=4, guidance_scale=scale,
                          controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(3),
                          output_type="np").images[0]
        assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0
        images[scale] = ours[0].astype(int)
    assert np.abs(images[1.5] - images[4.0]).max() > 10  # the scale reaches the UNet


def test_an_lcm_model_in_a_diffusers_folder_loads_with_its_guidance_embedding(tmp_path):
    """LCM_Dreamshaper_v7's form: an SD 1.5 pipeline folder whose UNet has time_cond_proj_dim. Its yaml is made
    from the parts' configs, its weights land on the release's keys, and a control loads beside it."""
    from diffusers import LatentConsistencyModelPipeline

    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors

    model, config = tiny_lcm(tmp_path, seed=5)
    state = model.state_dict()
    unet, _, vae = diffusers_parts(model, config)
    LatentConsistencyModelPipeline(vae, model.cond_stage_model.transformer.text_model, clip_tokenizer(), unet,
                                   diffusers_scheduler(model, "LCM"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(tmp_path / "lcm")
    control = {k: v for k, v in state.items() if k.startswith("control_model.")}
    save_safetensors(control, tmp_path / "control.safetensors")
    loaded = load_model(None, tmp_path / "lcm", tmp_path / "control.safetensors")
    ours = loaded.state_dict()
    assert loaded.model.diffusion_model.config.time_cond_proj_dim == WIDTH
    different = [k for k, v in state.items() if not k.endswith("position_ids") and not torch.equal(ours[k], v)]
    assert len(state) > 300 and not different, different[:5]
    hint = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    settings = dict(steps=2, sampler="LCM", guidance_scale=2.0, seed=1, verbose=False)
    images = [generate(m, hint, PROMPT, **settings)[0][0] for m in (loaded, model)]
    assert np.array_equal(*images)


def test_an_lcm_model_in_one_file_loads_with_its_guidance_embedding(tmp_path):
    """A single-file LCM model as diffusers' converter writes it: the UNet in the release's layout but for its
    guidance projection, left under diffusers' name. Its width reaches the config; the generation is the same."""
    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors

    model, _ = tiny_lcm(tmp_path, seed=6)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")}
    state["model.diffusion_model.time_embedding.cond_proj.weight"] = state.pop(
        "model.diffusion_model.time_embed.cond_proj.weight")
    save_safetensors(state, tmp_path / "lcm.safetensors")
    control = {k: v for k, v in model.state_dict().items() if k.startswith("control_model.")}
    save_safetensors(control, tmp_path / "control.safetensors")
    loaded = load_model(TINY_V15, tmp_path / "lcm.safetensors", tmp_path / "control.safetensors")
    assert loaded.model.diffusion_model.config.time_cond_proj_dim == WIDTH
    hint = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    settings = dict(steps=2, sampler="LCM", guidance_scale=3.0, seed=2, verbose=False)
    images = [generate(m, hint, PROMPT, **settings)[0][0] for m in (loaded, model)]
    assert np.array_equal(*images)
