"""ControlNet++'s consistency reward: generated images should give back their condition when it is detected on them.

The denoising loss never looks at an image, only at noise; a control can lower it while its images still miss
the outline. ControlNet++ (Li et al. 2024) adds, at low noise, a loss on the image itself: noise the training
latent to a small t, predict x_0 in one step, decode it, run a differentiable detector of the condition on it
and compare with the condition. At low noise the one-step x_0 is sharp enough for a detector, and it costs one
more forward and a decode instead of a whole sampling chain.

A reward needs a detector that gradients pass through; each condition that has one is in REWARDS.
"""

import torch

from toy.reward import shape_region_loss

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
