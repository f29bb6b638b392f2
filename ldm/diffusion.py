"""Latent diffusion: the DDPM noise schedule, the training loss, and the model that ties UNet, VAE and text together.

`LatentDiffusion` keeps the release's attribute names, so a checkpoint's top-level keys (`betas`,
`alphas_cumprod`, ..., `logvar`, `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`) load
unchanged, and the release's methods (`apply_model`, `get_learned_conditioning`, `decode_first_stage`, ...).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.conditioning import Conditioning
from ldm.precision import computing_in_fp32, weights_dtype

# The schedule buffers; released checkpoints store all but lvlb_weights at top level, with logvar.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights",
)
PARAMETERIZATIONS = ("eps", "v", "x0")


def make_betas(schedule, timesteps, linear_start, linear_end, cosine_s=8e-3):
    """Noise variances beta_t (float64 numpy), as the LDM release computes them."""
    if schedule == "linear":
        return np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    if schedule == "cosine":
        steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps + cosine_s
        alphas = np.cos(steps / (1 + cosine_s) * np.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, timesteps, dtype=np.float64)
    if schedule == "sqrt":
        return np.linspace(linear_start, linear_end, timesteps, dtype=np.float64) ** 0.5
    raise ValueError(f"beta_schedule {schedule!r} is not one of linear, cosine, sqrt_linear, sqrt")


def schedule_buffers(betas, parameterization):
    """All schedule quantities (float64 numpy) derived from the betas."""
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    if parameterization == "eps":
        with np.errstate(divide="ignore"):  # t=0 divides by a zero posterior variance; replaced below
            lvlb = betas**2 / (2 * posterior_variance * alphas * (1 - ac))
    elif parameterization == "x0":
        lvlb = 0.5 * np.sqrt(ac) / (2.0 * 1 - ac)
    else:
        lvlb = np.ones_like(betas)
    lvlb[0] = lvlb[1]  # the t=0 weight is infinite for eps; the release reuses t=1's
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "lvlb_weights": lvlb,
    }


def extract(values, t, like):
    """values[t] shaped (B, 1, 1, 1) to broadcast against `like`."""
    return values.gather(0, t).reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _schedule_from_config(model, state_dict, prefix, *_):
    # The schedule follows from the config, so files may leave it out (the shipped toy models, exports); the
    # release's files always carried it, and its scripts load them strictly. A file that has it keeps its own.
    # A model built on the meta device has no values to give: there a missing schedule stays missing.
    for name in (*SCHEDULE_BUFFERS, "logvar"):
        buffer = model._buffers.get(name)
        if buffer is not None and not buffer.is_meta and name not in model._non_persistent_buffers_set:
            state_dict.setdefault(prefix + name, buffer)


class DiffusionWrapper(nn.Module):
    """Routes the conditioning to the UNet; kept as its own module for the `model.diffusion_model.` keys."""

    def __init__(self, diffusion_model, conditioning_key):
        super().__init__()
        if conditioning_key not in ("crossattn", "concat", "hybrid"):
            raise ValueError(f"conditioning_key {conditioning_key!r} is not one of crossattn, concat, hybrid")
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None, control=None):
        if self.conditioning_key in ("concat", "hybrid"):
            x = torch.cat([x, *c_concat], dim=1)
        context = Conditioning.of(c_crossattn) if self.conditioning_key != "concat" else None
        return self.diffusion_model(x, t, context=context, control=control)


class LatentDiffusion(nn.Module):
    """Stable Diffusion: denoise VAE latents with a text-conditioned UNet.

    Constructor arguments are the `params` of the release's yaml; the sub-models arrive already built
    (see `ldm.config`). Arguments that only configured the release's training loop are accepted and ignored.
    """

    TEXT_MODULE = "cond_stage_model"  # the text encoder's name, its checkpoint keys' prefix (SDXL: conditioner)

    def __init__(self, unet, first_stage_model, cond_stage_model, *, timesteps=1000, beta_schedule="linear",
                 linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3, parameterization="eps", scale_factor=1.0,
                 scale_by_std=False, conditioning_key="crossattn", first_stage_key="image", cond_stage_key="image",
                 image_size=256, channels=3, loss_type="l2", l_simple_weight=1.0, original_elbo_weight=0.0,
                 logvar_init=0.0, learn_logvar=False, use_ema=True, cond_stage_trainable=False,
                 cond_stage_forward=None, num_timesteps_cond=None, log_every_t=100, monitor=None,
                 scheduler_config=None, use_positional_encodings=False, clip_denoised=True, v_posterior=0.0,
                 given_betas=None, ckpt_path=None, ignore_keys=(), load_only_unet=False, make_it_fit=False,
                 reset_ema=False, reset_num_ema_updates=False, unet_trainable=True, concat_mode=True):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization {parameterization!r} is not one of {PARAMETERIZATIONS}")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type {loss_type!r} is not one of l1, l2")
        if v_posterior or ckpt_path:
            raise ValueError("v_posterior and ckpt_path are not supported: load weights with load_state_dict")
        self.model = DiffusionWrapper(unet, conditioning_key)
        self.first_stage_model = first_stage_model.eval().requires_grad_(False)
        self.add_module(self.TEXT_MODULE, cond_stage_model)
        if not cond_stage_trainable:
            cond_stage_model.eval().requires_grad_(False)
        self.parameterization, self.loss_type = parameterization, loss_type
        self.l_simple_weight, self.original_elbo_weight = l_simple_weight, original_elbo_weight
        self.first_stage_key, self.cond_stage_key = first_stage_key, cond_stage_key
        self.image_size, self.channels = image_size, channels
        self.scale_factor = scale_factor
        self.num_timesteps = int(timesteps)
        betas = np.asarray(given_betas, dtype=np.float64) if given_betas is not None else make_betas(
            beta_schedule, self.num_timesteps, linear_start, linear_end, cosine_s)
        for name, value in schedule_buffers(betas, parameterization).items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=name != "lvlb_weights")
        logvar = torch.full((self.num_timesteps,), float(logvar_init))
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar)
        self.register_load_state_dict_pre_hook(_schedule_from_config)

    def _apply(self, fn, recurse=True):
        """`.to(dtype)`, `.half()`, `.bfloat16()` cast the networks; the noise schedule follows the device but
        stays fp32 (ldm.precision: the sampler arithmetic needs it)."""
        schedule = {name: b for name, b in self._buffers.items() if name in SCHEDULE_BUFFERS or name == "logvar"}
        super()._apply(fn, recurse)
        for name, original in schedule.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != original.dtype:
                self._buffers[name] = original.to(moved.device)
        return self

    # -- conditioning and the VAE -------------------------------------------------------------------------

    @property
    def cond_stage_model(self):
        """The text encoder (under whatever name its checkpoint keys give it)."""
        if self.TEXT_MODULE not in self._modules:  # still being built
            raise AttributeError(f"{type(self).__name__} has no {self.TEXT_MODULE} yet")
        return self._modules[self.TEXT_MODULE]

    @cond_stage_model.setter
    def cond_stage_model(self, module):
        self._modules[self.TEXT_MODULE] = module

    @torch.no_grad()
    def get_learned_conditioning(self, c):
        """The release's call: the text encoder's output for prompts `c` (SD 1.x/2.x: token features)."""
        return self.cond_stage_model.encode(c)

    def release_text_encoders(self):
        """Free the text encoders' weights (they become shapes on the meta device): for a run that has encoded
        all its prompts and needs the memory for sampling (SDXL's two encoders hold 0.8 billion weights)."""
        self.cond_stage_model.to("meta")

    def condition(self, prompts, size=None, negative=False):
        """The Conditioning of `prompts`: what the networks take, passed along unopened (ldm.conditioning). A
        conditioner that makes a whole Conditioning (SDXL's) also reads the generation's `size`
        (ldm.sdxl.SizeIds) and whether these are negative prompts; SD 1.x/2.x's text encoders read neither."""
        encoder = self.cond_stage_model
        if any(p.is_meta for p in encoder.parameters()):
            raise RuntimeError("the text encoders were released after encoding this run's prompts (to save memory);"
                               " load the model again to encode more")
        if hasattr(encoder, "condition"):
            return encoder.condition(list(prompts), size, negative)
        return Conditioning.of(self.get_learned_conditioning(list(prompts)))

    def get_unconditional_conditioning(self, n):
        return self.get_learned_conditioning([""] * n)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior, generator=None):
        if isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            z = encoder_posterior.sample(generator=generator)
        return self.scale_factor * z

    @torch.no_grad()
    def decode_first_stage(self, z):
        """Images in [-1, 1], in z's dtype. An fp16 VAE whose decode overflows decodes again in fp32."""
        vae = self.first_stage_model
        images = vae.decode(z / self.scale_factor)
        if weights_dtype(vae) == torch.float16 and not torch.isfinite(images).all():
            with computing_in_fp32(vae):
                images = vae.decode(z / self.scale_factor)
        return images

    # -- the denoiser -------------------------------------------------------------------------------------

    def apply_model(self, x_noisy, t, cond):
        return self.denoise(x_noisy, t, cond)

    def denoise(self, x_noisy, t, cond, control=None):
        """The UNet's prediction (noise, or v), with ControlNet residuals `control` added if given: the one
        place where controls meet the locked UNet, for `apply_model`, the samplers and training."""
        if not isinstance(cond, dict):
            cond = cond if isinstance(cond, list) else [cond]
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond}
        return self.model(x_noisy, t, **cond, control=control)

    # -- the forward process and the loss -------------------------------------------------------------------

    def q_sample(self, x_start, t, noise):
        return (extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def get_v(self, x, noise, t):
        return extract(self.sqrt_alphas_cumprod, t, x) * noise - extract(self.sqrt_one_minus_alphas_cumprod, t, x) * x

    def predict_start_from_z_and_v(self, x_t, t, v):
        return extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_start(self, x_t, t, model_output):
        """The one-step estimate of x_0 from x_t and the model's prediction at t, whatever it predicts."""
        if self.parameterization == "v":
            return self.predict_start_from_z_and_v(x_t, t, model_output)
        if self.parameterization == "x0":
            return model_output
        return ((x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * model_output)
                / extract(self.sqrt_alphas_cumprod, t, x_t))

    def predict_eps_from_z_and_v(self, x_t, t, v):
        return extract(self.sqrt_alphas_cumprod, t, x_t) * v + extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

    def p_losses(self, x_start, cond, t, noise=None):
        """The training loss at timesteps t, and a dict of logged values."""
        noise = torch.randn_like(x_start) if noise is None else noise
        model_output = self.apply_model(self.q_sample(x_start, t, noise), t, cond)
        target = {"eps": noise, "x0": x_start, "v": None}[self.parameterization]
        if target is None:
            target = self.get_v(x_start, noise, t)
        per_elem = F.mse_loss if self.loss_type == "l2" else F.l1_loss
        loss_simple = per_elem(model_output.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        logvar_t = self.logvar.to(loss_simple.device)[t]
        loss = self.l_simple_weight * (loss_simple / torch.exp(logvar_t) + logvar_t).mean()
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss = loss + self.original_elbo_weight * loss_vlb
        return loss, {"loss_simple": loss_simple.mean().detach(), "loss_vlb": loss_vlb.detach(), "loss": loss.detach()}

    def forward(self, x, c, generator=None):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=x.device, generator=generator)
        return self.p_losses(x, c, t)
