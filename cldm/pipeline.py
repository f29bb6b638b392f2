"""One sampling function for the CLI, the apps, the training image logger and the tests."""

import random
from contextlib import contextmanager

import numpy as np
import torch

from cldm.cldm import guess_mode_scales
from ldm.ddim import DDIMSampler


def hint_tensor(hint, num_samples, device):
    """HWC uint8 condition image -> (N, 3, H, W) float in [0, 1], as the release feeds it."""
    hint = np.asarray(hint)
    if hint.ndim != 3 or hint.shape[2] != 3 or hint.dtype != np.uint8:
        raise ValueError(f"the condition image must be HxWx3 uint8, got {hint.shape} {hint.dtype}")
    if hint.shape[0] % 64 or hint.shape[1] % 64:
        raise ValueError(f"the condition image's sides must be multiples of 64, got {hint.shape[1]}x{hint.shape[0]}")
    x = torch.from_numpy(hint.copy()).float().div(255.0).to(device)
    return x.permute(2, 0, 1)[None].repeat(num_samples, 1, 1, 1)


@contextmanager
def control_scales(model, strength, guess_mode):
    """The model's control scales set for one generation, then restored."""
    if not hasattr(model, "control_model"):
        yield
        return
    n = model.control_model.num_outputs
    previous = model.control_scales
    model.control_scales = guess_mode_scales(strength, n) if guess_mode else [strength] * n
    try:
        yield
    finally:
        model.control_scales = previous


@torch.no_grad()
def generate(model, hint, prompt, added_prompt="", negative_prompt="", num_samples=1, steps=20, guidance_scale=9.0,
             strength=1.0, guess_mode=False, eta=0.0, seed=-1, verbose=True, size=None):
    """Images (list of HWC uint8) following `hint` (HWC uint8, sides multiples of 64) and the prompt.

    hint=None samples from the text alone (a plain LatentDiffusion, or a ControlLDM with its control off),
    at `size` (H, W). seed=-1 draws a random seed; the seed used is returned alongside the images.
    """
    seed = random.randint(0, 2**31 - 1) if seed == -1 else int(seed)
    device = model.betas.device
    control = None if hint is None else hint_tensor(hint, num_samples, device)
    height, width = size if control is None else control.shape[2:]
    full_prompt = ", ".join(p for p in (prompt, added_prompt) if p)
    cond = {"c_concat": None if control is None else [control],
            "c_crossattn": [model.get_learned_conditioning([full_prompt] * num_samples)]}
    uncond = {"c_concat": None if guess_mode or control is None else [control],
              "c_crossattn": [model.get_learned_conditioning([negative_prompt] * num_samples)]}
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (model.channels, height // 8, width // 8)
    x_T = torch.randn((num_samples, *shape), generator=generator, device=device)
    with control_scales(model, strength, guess_mode):
        latents, _ = DDIMSampler(model).sample(steps, num_samples, shape, cond, eta=eta, x_T=x_T, verbose=verbose,
                                               unconditional_guidance_scale=guidance_scale,
                                               unconditional_conditioning=uncond, generator=generator)
    images = model.decode_first_stage(latents)
    images = (images.permute(0, 2, 3, 1) * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return list(images), seed
