"""The samplers users know: the release's DDIM, and diffusers' schedulers under the names the web UIs use.

Every sampler runs the same loop over a `denoiser(x, t, progress)` function that returns the guided model
output (noise, or v for v-models) at timestep t, `progress` being the fraction of the steps run that is done
(0 at the first step), which is what control start/end are measured in.

Image-to-image and inpainting are the same loop started later and steered: with an `init` latent and
`denoise` < 1 only the last round(denoise * steps) steps run, from `init` noised to the first of them's level
(diffusers' convention, the same for every sampler); `keep` (a latent-sized mask, 1 = keep) puts `init`,
noised to the current level, back where it is 1 before every step (the release's and the 1.1 inpaint app's
scheme).
"""

import inspect

import torch
from tqdm.auto import tqdm

from ldm.ddim import DDIMSampler, ddim_timesteps

# name -> (diffusers scheduler class name, its settings); diffusers is imported only when one is used
SCHEDULERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    # few-step samplers for distilled models and LoRAs: LCM (LCM-LoRA; guidance 1-2), TCD (its gamma is the eta
    # setting), and Euler on "trailing" timesteps, which SDXL-Lightning and Hyper-SD are sampled with
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
    "Euler trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
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
    settings = {"timestep_spacing": "leading", "steps_offset": 1, **extra}  # SD's pipelines' defaults, unless
    return cls(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.detach().cpu().double().numpy(),
               prediction_type=prediction, **settings)


def skipped_steps(steps, denoise):
    """How many of the `steps` an image-to-image generation at strength `denoise` (0..1) leaves out."""
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be between 0 (keep the image) and 1 (ignore it), got {denoise}")
    return steps - round(denoise * steps)


def sample(model, denoiser, x_T, steps, sampler="DDIM", eta=0.0, generator=None, verbose=True, init=None,
           denoise=1.0, keep=None):
    """Latents denoised in `steps` steps of the named sampler from the noise x_T, or image-to-image from the
    latent `init` (see the module's docstring); x_T is then the noise `init` is noised with."""
    first = skipped_steps(steps, denoise) if init is not None else 0
    if first == steps:
        return init.float()
    if sampler == "DDIM":
        if first:
            t = int(ddim_timesteps(steps, model.num_timesteps)[steps - 1 - first])
            x_T = model.q_sample(init.float(), torch.full((x_T.shape[0],), t, device=x_T.device), x_T.float())
        return DDIMSampler(model).run(denoiser, x_T, steps, eta, generator, verbose, mask=keep, x0=init,
                                      first=first)[0]
    scheduler = diffusers_scheduler(model, sampler)
    scheduler.set_timesteps(steps, device=x_T.device)
    scheduler.set_begin_index(first)
    timesteps = scheduler.timesteps[first:]
    step_parameters = inspect.signature(scheduler.step).parameters
    extra = {"generator": generator} if "generator" in step_parameters else {}
    if "eta" in step_parameters:  # TCD's gamma: how much fresh noise each step takes, as pipelines pass eta
        extra["eta"] = eta
    # the sampler arithmetic stays fp32 (ldm.precision)
    if first == 0:
        x = x_T.float() * scheduler.init_noise_sigma
    else:
        x = scheduler.add_noise(init.float(), x_T.float(), timesteps[:1])
    for i, t in enumerate(tqdm(timesteps, desc=sampler, disable=not verbose)):
        if keep is not None:
            noise = torch.randn(init.shape, generator=generator, device=x.device)
            x = scheduler.add_noise(init.float(), noise, t.reshape(1)) * keep + x * (1.0 - keep)
        ts = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        output = denoiser(scheduler.scale_model_input(x, t), ts, i / len(timesteps))
        x = scheduler.step(output, t, x, **extra).prev_sample
    return x
