"""ControlNet++'s consistency reward: generated images should give back their condition when it is detected on them.

The denoising loss never looks at an image, only at noise; a control can lower it while its images still miss
the outline. ControlNet++ (Li et al. 2024) adds, at low noise, a loss on the image itself: noise the training
latent to a small t, predict x_0 in one step, decode it, run a differentiable detector of the condition on it
and compare with the condition. At low noise the one-step x_0 is sharp enough for a detector, and it costs one
more forward and a decode instead of a whole sampling chain.

A reward needs a detector that gradients pass through; each condition that has one is in REWARDS.
"""

import numpy as np
import torch
import torch.nn.functional as F

from training.metrics import outline_interior
from training.shapes import prompt_colors

# how sharply a pixel's soft membership of the shape follows "nearer the shape's colour than the background's":
# in units of the [-1, 1] pixel range, where the dataset's colours are at least 0.94 apart
SHAPE_REGION_SOFTNESS = 0.1


def shape_region_loss(images, batch):
    """The toy's shapes: bench/controllability.py finds the shape as the pixels nearer the prompt's shape colour
    than its background's; softened, that region is scored against the outline's interior by cross-entropy."""
    try:
        colours = [prompt_colors(prompt) for prompt in batch["txt"]]
    except ValueError as error:
        raise ValueError(f"the shapes reward reads the colours from the prompt: {error}") from None
    shape, background = (torch.tensor(np.array(c), dtype=torch.float32, device=images.device) / 127.5 - 1
                         for c in zip(*colours))
    pixels = images.float()
    to_shape = (pixels - shape[:, :, None, None]).norm(dim=1)
    to_background = (pixels - background[:, :, None, None]).norm(dim=1)
    hints = batch["hint"].cpu().numpy()
    inside = torch.from_numpy(np.stack([outline_interior(h * 255) for h in hints]))
    logits = (to_background - to_shape) / SHAPE_REGION_SOFTNESS
    return F.binary_cross_entropy_with_logits(logits, inside.to(logits), reduction="none").mean(dim=(1, 2))


REWARDS = {"shapes": shape_region_loss}


def consistency_loss(model, x0, cond, batch, gen, condition, max_timestep):
    """The mean reward loss of one batch: each latent in `x0` noised to a t below `max_timestep`, its x_0
    predicted in one step under `cond` (the control's condition and the prompts), decoded, and scored by the
    condition's differentiable detector against the batch's hints."""
    t = torch.randint(0, min(max_timestep, model.num_timesteps), (x0.shape[0],), generator=gen, device=gen.device)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    x_t = model.q_sample(x0, t, noise)
    predicted = model.predict_start(x_t, t, model.apply_model(x_t, t, cond))
    images = model.first_stage_model.decode(predicted / model.scale_factor)
    return REWARDS[condition](images, batch).mean()
