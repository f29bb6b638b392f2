"""The samplers users know: the release's DDIM, and diffusers' schedulers under the names the web UIs use.

Every sampler runs the same loop over a `denoise(x, t, progress)` function that returns the guided model
output (noise, or v for v-models) at timestep t, `progress` being the fraction of steps done (0 at the first
step), which is what control start/end are measured in.
"""

import inspect

import torch
from tqdm.auto import tqdm

from ldm.ddim import DDIMSampler

# name -> (diffusers scheduler class name, its settings); diffusers is imported only when one is used
SCHEDULERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
SAMPLERS = ("DDIM", *SCHEDULERS)


def diffusers_scheduler(model, name):
    """A diffusers scheduler on the model's own noise schedule (its betas, its parameterization)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")
    import diffusers

    class_name, extra = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    prediction = "v_prediction" if model.parameterization == "v" else "epsilon"
    return cls(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.detach().cpu().double().numpy(),
               prediction_type=prediction, timestep_spacing="leading", steps_offset=1, **extra)


def sample(model, denoise, x_T, steps, sampler="DDIM", eta=0.0, generator=None, verbose=True):
    """Latents denoised from x_T (pure noise) in `steps` steps of the named sampler."""
    if sampler == "DDIM":
        return sample_ddim(model, denoise, x_T, steps, eta, generator, verbose)
    scheduler = diffusers_scheduler(model, sampler)
    scheduler.set_timesteps(steps, device=x_T.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if takes_generator else {}
    x = x_T.float() * scheduler.init_noise_sigma  # the sampler arithmetic stays fp32 (ldm.precision)
    timesteps = scheduler.timesteps
    for i, t in enumerate(tqdm(timesteps, desc=sampler, disable=not verbose)):
        ts = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        output = denoise(scheduler.scale_model_input(x, t), ts, i / len(timesteps))
        x = scheduler.step(output, t, x, **extra).prev_sample
    return x


def sample_ddim(model, denoise, x_T, steps, eta=0.0, generator=None, verbose=True):
    """The release's DDIM (ldm.ddim), stepping on the given denoiser."""
    return DDIMSampler(model).run(denoise, x_T, steps, eta, generator, verbose)[0]
