"""Tiny models with random weights, shared by the tests."""

from pathlib import Path

import torch

from cldm.model import create_model

ROOT = Path(__file__).resolve().parents[1]

TINY_V15 = ROOT / "tests/configs/cldm_tiny_v15.yaml"
TINY_V21 = ROOT / "tests/configs/cldm_tiny_v21.yaml"


def randomize(module, seed=0, skip=()):
    """Give every weight (zero-initialised ones included) a random value, so nothing passes by being zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(name.startswith(s) for s in skip):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif p.dim() <= 1:  # norm scales, logit_scale
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return module


def tiny_model(config=TINY_V15, seed=0, skip=()):
    torch.manual_seed(seed)
    return randomize(create_model(config).eval(), seed, skip)


def tiny_inputs(model, batch=2, seed=1, size=8):
    gen = torch.Generator().manual_seed(seed)
    ctx_dim = model.model.diffusion_model.config.context_dim
    return dict(
        x=torch.randn(batch, 4, size, size, generator=gen),
        t=torch.tensor([999, 321, 10, 500][:batch]),
        hint=torch.rand(batch, 3, size * 8, size * 8, generator=gen),
        context=torch.randn(batch, 77, ctx_dim, generator=gen),
    )



def diffusers_parts(model, config, **kwargs):
    """diffusers' (UNet2DConditionModel, ControlNetModel, AutoencoderKL) holding a tiny controlled model's weights,
    converted by diffusers' own single-file helpers (`kwargs`: cldm.diffusers_interop.diffusers_models')."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    from cldm.diffusers_interop import diffusers_models

    state = model.state_dict()
    unet, controlnet = diffusers_models(state, config, **kwargs)
    vae_config = create_vae_diffusers_config_from_ldm(config, state)
    vae = AutoencoderKL(**vae_config).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae_config), strict=True)
    return unet, controlnet, vae


def sd15_pipeline(model):
    """diffusers' StableDiffusionPipeline (UniPC) holding a tiny SD 1.x model's weights (TINY_V15's layout)."""
    from diffusers import StableDiffusionPipeline

    from cldm.samplers import diffusers_scheduler
    from ldm.config import load_yaml
    from ldm.text_encoders import clip_tokenizer

    unet, _, vae = diffusers_parts(model, load_yaml(TINY_V15))
    pipe = StableDiffusionPipeline(vae, model.cond_stage_model.transformer.text_model, clip_tokenizer(), unet,
                                   diffusers_scheduler(model, "UniPC"), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
