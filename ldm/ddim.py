"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models") with classifier-free guidance."""

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.conditioning import Conditioning


def ddim_timesteps(num_steps, num_train_timesteps=1000):
    """The S training timesteps DDIM visits, ascending: 1, 1 + c, 1 + 2c, ... with c = T // S.

    This equals the release's uniform schedule wherever that one returns S steps, and diffusers' "leading"
    spacing with steps_offset=1; unlike the release it gives exactly S steps for every S (S=3 crashed there).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be between 1 and {num_train_timesteps}, got {num_steps}")
    return np.arange(num_steps) * (num_train_timesteps // num_steps) + 1


def cat_cond(a, b):
    """Two conditionings batched into one, or None when they differ in structure (e.g. guess mode)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b]) if a.shape[1:] == b.shape[1:] else None
    if isinstance(a, Conditioning) and isinstance(b, Conditioning):
        same = all(x.shape[1:] == y.shape[1:] for x, y in zip(a.tensors().values(), b.tensors().values()))
        return Conditioning.cat([a, b]) if same and a.tensors().keys() == b.tensors().keys() else None
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        out = {}
        for key in a:
            if a[key] is None and b[key] is None:
                out[key] = None
            elif a[key] is None or b[key] is None or len(a[key]) != len(b[key]):
                return None
            else:
                parts = [cat_cond(x, y) for x, y in zip(a[key], b[key])]
                if any(p is None for p in parts):
                    return None
                out[key] = parts
        return out
    return None


def classifier_free_guidance(run, x, t, scale):
    """Classifier-free guidance (Ho and Salimans 2022): uncond + scale * (cond - uncond).

    `run(x2, t2)` evaluates the model on the batch [x; x], unconditional half first. With scale 1 there is no
    unconditional half: the caller's `run` then gets x alone and gives the conditional output.
    """
    if scale == 1.0:
        return run(x, t)
    out_uncond, out_cond = run(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
    return out_uncond + scale * (out_cond - out_uncond)


def guided_model_output(model, x, t, cond, uncond, scale):
    """`model.apply_model` with classifier-free guidance over the release's conditioning dicts."""
    if uncond is None or scale == 1.0:
        return model.apply_model(x, t, cond)
    both = cat_cond(uncond, cond)

    def run(x2, t2):
        if both is not None:
            return model.apply_model(x2, t2, both)
        n = x.shape[0]  # conditionings of different structure (e.g. guess mode): two calls
        return torch.cat([model.apply_model(x2[:n], t2[:n], uncond), model.apply_model(x2[n:], t2[n:], cond)])

    return classifier_free_guidance(run, x, t, scale)


class DDIMSampler:
    """DDIM over a `LatentDiffusion` (or `ControlLDM`): the release's `DDIMSampler(model).sample(...)` API."""

    def __init__(self, model):
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps

    def make_schedule(self, ddim_num_steps, ddim_eta=0.0, verbose=False):
        self.ddim_timesteps = ddim_timesteps(ddim_num_steps, self.ddpm_num_timesteps)
        steps = torch.from_numpy(self.ddim_timesteps)
        alphas_cumprod = self.model.alphas_cumprod.detach().float().cpu()
        self.ddim_alphas = alphas_cumprod[steps]
        self.ddim_alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[steps[:-1]]])
        self.ddim_sigmas = ddim_eta * torch.sqrt(
            (1 - self.ddim_alphas_prev) / (1 - self.ddim_alphas) * (1 - self.ddim_alphas / self.ddim_alphas_prev))
        self.ddim_sqrt_one_minus_alphas = torch.sqrt(1.0 - self.ddim_alphas)
        self.ddim_eta = ddim_eta

    @torch.no_grad()
    def sample(self, S, batch_size, shape, conditioning=None, callback=None, img_callback=None, eta=0.0,
               mask=None, x0=None, temperature=1.0, x_T=None, log_every_t=100, unconditional_guidance_scale=1.0,
               unconditional_conditioning=None, verbose=True, generator=None, **unused):
        """Sample (batch_size, *shape) latents; returns (samples, {"x_inter": [...], "pred_x0": [...]})."""
        unsupported = sorted(k for k, v in unused.items() if v not in (None, False))
        if unsupported:
            raise TypeError(f"DDIMSampler.sample does not support {unsupported}")
        device = self.model.betas.device
        if x_T is None:
            x_T = torch.randn((batch_size, *shape), generator=generator, device=device)

        def denoise(x, t, progress):
            return guided_model_output(self.model, x, t, conditioning, unconditional_conditioning,
                                       unconditional_guidance_scale)

        return self.run(denoise, x_T.to(device), S, eta, generator, verbose, mask=mask, x0=x0,
                        temperature=temperature, callback=callback, img_callback=img_callback, log_every_t=log_every_t)

    def run(self, denoise, x_T, steps, eta=0.0, generator=None, verbose=True, mask=None, x0=None, temperature=1.0,
            callback=None, img_callback=None, log_every_t=100, first=0):
        """The DDIM loop over `denoise(x, t, progress)` (the guided model output at timesteps t; progress is the
        fraction of the steps run that is done), from x_T in `steps` steps, of which the first `first` are left
        out (image-to-image: x_T is then already at the level of the first step run); returns (x_0,
        intermediates)."""
        self.make_schedule(steps, ddim_eta=eta)
        img = x_T.float()  # the sampler arithmetic stays fp32 whatever the model computes in (ldm.precision)
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        timesteps = np.flip(self.ddim_timesteps)[first:]
        for i, step in enumerate(tqdm(timesteps, desc="DDIM", disable=not verbose)):
            index = len(timesteps) - i - 1
            ts = torch.full((img.shape[0],), int(step), device=img.device, dtype=torch.long)
            if mask is not None:  # inpainting: keep the known region on the forward-noised original
                noise = torch.randn(x0.shape, generator=generator, device=img.device)
                img = self.model.q_sample(x0, ts, noise) * mask + (1.0 - mask) * img
            img, pred_x0 = self.step(img, denoise(img, ts, i / len(timesteps)), ts, index, temperature, generator)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == len(timesteps) - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    def p_sample_ddim(self, x, c, t, index, guidance_scale=1.0, uncond=None, temperature=1.0, generator=None):
        """One DDIM step from x_t to x_{t-1}; returns (x_prev, predicted x0)."""
        model_output = guided_model_output(self.model, x, t, c, uncond, guidance_scale)
        return self.step(x, model_output, t, index, temperature, generator)

    def step(self, x, model_output, t, index, temperature=1.0, generator=None):
        """x_t and the (guided) model output at it -> (x_{t-1}, predicted x0)."""
        model = self.model
        full = lambda values: torch.full((x.shape[0], 1, 1, 1), float(values[index]), device=x.device)  # noqa: E731
        a_t, a_prev = full(self.ddim_alphas), full(self.ddim_alphas_prev)
        sigma_t, sqrt_one_minus_at = full(self.ddim_sigmas), full(self.ddim_sqrt_one_minus_alphas)
        if model.parameterization == "v":
            e_t = model.predict_eps_from_z_and_v(x, t, model_output)
            pred_x0 = model.predict_start_from_z_and_v(x, t, model_output)
        else:
            e_t = model_output
            pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        if self.ddim_eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_prev = x_prev + sigma_t * noise * temperature
        return x_prev, pred_x0
