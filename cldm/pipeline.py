"""One sampling function for the CLI, the apps, the training image logger and the tests."""

import random
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from cldm.cldm import RELEASE_SOFT_BASE, control_weights, sum_residuals
from cldm.img2img import mask_array, start_from
from cldm.ip_adapter import ImagePrompts, IPAdapter
from cldm.loras import applied, named_loras, prompt_loras
from cldm.reference import REFERENCE_MODES, ReferenceBanks, is_reference
from cldm.samplers import sample, skipped_steps
from cldm.schedules import batch_multipliers, keyframes, multiplier
from cldm.settings import ControlUnit, Settings
from cldm.union import AUTO, UnionControlNet
from ldm.conditioning import Conditioning
from ldm.ddim import classifier_free_guidance
from ldm.precision import all_finite, check_finite, non_finite_error, weights_dtype
from ldm.sdxl import SizeIds
from ldm.unet import Residuals, guidance_embedding


@dataclass
class Control:
    """A control unit (cldm.settings.ControlUnit) as the sampler runs it: its condition map at the generation's
    size, its weight, the steps it acts on, its ControlNet module."""

    hint: np.ndarray  # HWC, sides multiples of 64: uint8, or float32 in [-1, 1] (the inpaint condition)
    strength: float = 1.0
    start: float = 0.0  # fraction of the sampling steps done when it starts acting
    end: float = 1.0  # ... and when it stops
    mode: str = "balanced"
    net: nn.Module | None = None  # a ControlNet; None: the model's own control_model
    block_weights: object = "uniform"  # a preset or one weight per block (cldm.cldm.control_weights)
    region_mask: np.ndarray | None = None  # HW (or HWC), white where the control acts; any size of this shape
    control_type: str = AUTO  # the kind of map, for a ControlNet-Union (cldm.union.UNION_TYPES)
    keyframes: str = ""  # the strength's multiplier over the steps (cldm.schedules); empty: constant
    curve: str = "linear"  # between keyframes
    uncond_multiplier: float = 1.0  # its weight on guidance's unconditional branch
    batch_strengths: str = ""  # a multiplier of the strength per image of the batch
    soft_base: float = RELEASE_SOFT_BASE  # the soft block weights' ratio
    reference: str | None = None  # a reference mode (cldm.reference): `hint` is the reference picture, no net
    style_fidelity: float = 0.5  # a reference's pull on guidance's unconditional half

    def __post_init__(self):  # given directly (not of a unit): the units' check
        ControlUnit(strength=self.strength, control_start=self.start, control_end=self.end, control_mode=self.mode,
                    block_weights=self.block_weights, control_type=self.control_type,
                    strength_keyframes=self.keyframes, keyframe_curve=self.curve,
                    uncond_multiplier=self.uncond_multiplier, batch_strengths=self.batch_strengths,
                    soft_base=self.soft_base, style_fidelity=self.style_fidelity,
                    preprocessor=self.reference)
        if self.reference is not None and not is_reference(self.reference):
            raise ValueError(f"reference {self.reference!r} is not one of {', '.join(REFERENCE_MODES)}")
        self.frames = keyframes(self.keyframes)

    @classmethod
    def of(cls, unit, hint, net=None, region_mask=None):
        """A ControlUnit ready to run: its condition map `hint` (detected, at the generation's size), the
        ControlNet its `control` names (None: the model's own) and its region mask (default: the unit's). A
        reference unit (its preprocessor a reference mode) runs no net: `hint` is its picture."""
        reference = unit.preprocessor if is_reference(unit) else None
        return cls(hint, unit.strength, unit.control_start, unit.control_end, unit.control_mode,
                   None if reference else net, unit.block_weights,
                   unit.region_mask if region_mask is None else region_mask, unit.control_type,
                   unit.strength_keyframes, unit.keyframe_curve, unit.uncond_multiplier, unit.batch_strengths,
                   unit.soft_base, reference, unit.style_fidelity)

    def strength_at(self, progress):
        """Its strength at `progress`, the fraction of the steps done: the keyframes' multiple of it."""
        return self.strength * multiplier(self.frames, progress, self.curve) if self.frames else self.strength

    def active(self, progress):
        return self.strength_at(progress) != 0 and self.start <= progress <= self.end


def check_shared_unions(controls, nets):
    """Controls that share a ControlNet-Union run in one pass of it, so they must agree on what weighs the
    pass as a whole: the control mode, the block weights, the region mask and the multipliers of its rows."""
    first = {}
    for k, (control, net) in enumerate(zip(controls, nets), start=1):
        if not isinstance(net, UnionControlNet):
            continue
        if id(net) not in first:
            first[id(net)] = (k, control)
            continue
        j, other = first[id(net)]
        same_region = (control.region_mask is None and other.region_mask is None) or (
            control.region_mask is not None and other.region_mask is not None
            and np.array_equal(np.asarray(control.region_mask), np.asarray(other.region_mask)))
        if (control.mode != other.mode or control.block_weights != other.block_weights or not same_region
                or control.soft_base != other.soft_base or control.uncond_multiplier != other.uncond_multiplier
                or batch_multipliers(control.batch_strengths) != batch_multipliers(other.batch_strengths)):
            raise ValueError(f"controls {j} and {k} share a ControlNet-Union, which runs them in one pass: give "
                             "them the same control mode, block weights, soft base, uncond multiplier, batch "
                             "strengths and region mask (or separate files)")


def hint_tensor(hint, num_samples, device):
    """HWC condition -> (N, 3, H, W) float: uint8 maps scaled to [0, 1] as the release feeds them; float32
    conditions (values in [-1, 1], like the inpaint control's) as they are."""
    hint = np.asarray(hint)
    if hint.ndim != 3 or hint.shape[2] != 3 or hint.dtype not in (np.uint8, np.float32):
        raise ValueError(f"the condition image must be HxWx3 uint8 (or float32 in [-1, 1]), got {hint.shape} "
                         f"{hint.dtype}")
    if hint.shape[0] % 64 or hint.shape[1] % 64:
        raise ValueError(f"the condition image's sides must be multiples of 64, got {hint.shape[1]}x{hint.shape[0]}")
    if hint.dtype == np.float32 and not (np.isfinite(hint).all() and -1 <= hint.min() <= hint.max() <= 1):
        raise ValueError("a float32 condition must hold finite values in [-1, 1]")
    x = torch.from_numpy(hint.copy()).float().to(device)
    x = x / 255.0 if hint.dtype == np.uint8 else x
    return x.permute(2, 0, 1)[None].repeat(num_samples, 1, 1, 1)


def region_tensor(mask, device):
    """A control's region mask (HW or HWC; uint8, bool or float in [0, 1]; white = acts) -> (1, 1, H, W)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    return torch.from_numpy(mask_array(mask, mask.shape[:2]))[None, None].to(device)


class GuidedDenoiser:
    """(x_t, t, progress) -> the model's output with classifier-free guidance and every active control added.

    The unconditional and conditional halves run as one batch [uncond; cond]. A control that skips the
    unconditional branch (guess mode, "control" mode, a pooled net) runs on the conditional half only and adds
    zeros to the other, which leaves that half exactly as without the control. Controls that share a
    ControlNet-Union run as one pass of it, each condition weighed by its strength. Each call is one sampling
    step; a NaN or infinity stops the generation with the part and the step named.
    """

    def __init__(self, model, context, uncond_context, controls, guidance_scale, guess_mode=False, steps=None,
                 reference_noise=None):
        references = [c for c in controls if c.reference]
        prompts = [c for c in controls if isinstance(c.net, IPAdapter)]
        controls = [c for c in controls if not c.reference and not isinstance(c.net, IPAdapter)]
        self.model, self.controls, self.guess_mode = model, controls, guess_mode
        self.guided = guidance_scale != 1.0
        # reference units bank what the UNet sees of their pictures, drawing noise from `reference_noise`
        self.references = ReferenceBanks(model, references, self.guided, reference_noise) if references else None
        # IP-Adapter units: their pictures' tokens, read by the UNet's cross-attentions
        self.image_prompts = ImagePrompts(
            model.model.diffusion_model, prompts, len(context), self.guided,
            [self.rows_of(k, c, len(context), context.device) for k, c in enumerate(prompts, start=1)],
            [region_tensor(c.region_mask, context.device) for c in prompts]) if prompts else None
        self.guidance_scale = guidance_scale
        self.context = Conditioning.cat([uncond_context, context]) if self.guided else context
        self.nets = [c.net or model.control_model for c in controls]
        self.types = [net.type_index(c.control_type, f"control {k}") if isinstance(net, UnionControlNet) else None
                      for k, (c, net) in enumerate(zip(controls, self.nets), start=1)]  # None: not a Union net
        check_shared_unions(controls, self.nets)
        self.hints = [hint_tensor(c.hint, len(context), context.device) for c in controls]
        # a Union net reads its maps in [0, 1]: the inpaint condition's repainted pixels (-1) as 0, which is
        # ProMax's repaint condition
        self.hints = [h if kind is None else h.clamp(min=0) for h, kind in zip(self.hints, self.types)]
        self.regions = [region_tensor(c.region_mask, context.device) for c in controls]
        self.weights = [self.weights_of(i, c.strength) for i, c in enumerate(controls)]
        self.row_scales = [self.rows_of(k, c, len(context), context.device) for k, c in enumerate(controls, start=1)]
        self.hint_features = [None] * len(controls)  # computed at a control's first step, reused by the others
        self.step, self.steps = 0, steps
        self.finite = []  # (part, dtype, flag) of this step, read together: one device sync a step

    def passes(self, progress):
        """The controls acting at this step, as the passes that run them: each alone, but those sharing a
        ControlNet-Union together."""
        passes = {}
        for i, control in enumerate(self.controls):
            if control.active(progress):
                shared = self.types[i] is not None
                passes.setdefault(id(self.nets[i]) if shared else ("alone", i), []).append(i)
        return passes.values()

    def features(self, i):
        if self.hint_features[i] is None:
            net, hint = self.nets[i], self.hints[i]
            self.hint_features[i] = net.encode_hint([hint])[0] if self.types[i] is not None else net.encode_hint(hint)
        return self.hint_features[i]

    def weights_of(self, i, strength):
        """Control i's weight of each residual at `strength`: its mode's, block weights' and soft base's."""
        c = self.controls[i]
        return control_weights(self.nets[i].num_outputs, strength, self.guess_mode, c.mode, c.block_weights,
                               c.soft_base)

    def weights_at(self, i, progress):
        """Control i's weight of each residual at this step (its keyframes' strength)."""
        control = self.controls[i]
        return self.weights_of(i, control.strength_at(progress)) if control.frames else self.weights[i]

    def rows_of(self, k, control, images, device):
        """Control k's multiplier of each row of the batch ((rows, 1, 1, 1); [uncond; cond] when guided), from its
        batch strengths and uncond multiplier; None when all are 1."""
        try:
            per_image = batch_multipliers(control.batch_strengths, images) or [1.0] * images
        except ValueError as error:
            raise ValueError(f"control {k}: batch_strengths {error}") from None
        uncond = [m * control.uncond_multiplier for m in per_image] if self.guided else []
        rows = uncond + per_image
        return None if all(m == 1 for m in rows) else torch.tensor(rows, device=device)[:, None, None, None]

    def residuals(self, x, t, progress):
        """What the controls acting at this step add to the UNet, for the whole batch: ControlNets' skip residuals
        (a list), with T2I-Adapters' encoder additions as ldm.unet.Residuals; None when no control acts."""
        skips = inner = None
        for members in self.passes(progress):
            first, net = self.controls[members[0]], self.nets[members[0]]
            hint, weights, extra = self.hints[members[0]], self.weights_at(members[0], progress), {}
            features = [self.features(i) for i in members]
            if self.types[members[0]] is not None:
                hint, extra["types"] = [self.hints[i] for i in members], [self.types[i] for i in members]
                if len(members) > 1:  # each condition weighed by its strength, the residuals by the rest
                    weights = self.weights_of(members[0], 1.0)
                    extra["scales"] = [self.controls[i].strength_at(progress) for i in members]
            else:
                features = features[0]
            weighting = dict(weights=weights, region=self.regions[members[0]], **extra)
            # a pooled net (1.1 shuffle) passes only global statistics, which the release trained on the
            # conditional side of classifier-free guidance alone
            cond_only = (self.guess_mode or first.mode == "control" or getattr(net, "global_average_pooling", False)
                         or first.uncond_multiplier == 0)
            if self.guided and cond_only:  # conditional half only
                n = x.shape[0] // 2
                outputs = net(x[n:], hint, t[n:], self.context[n:], hint_features=features, **weighting)
                outputs = [None if o is None else torch.cat([torch.zeros_like(o), o]) for o in outputs]
            else:
                copies = x.shape[0] // self.hints[members[0]].shape[0]
                batched = lambda f: torch.cat([f] * copies)  # noqa: E731
                features = [batched(f) for f in features] if isinstance(features, list) else batched(features)
                outputs = net(x, hint, t, self.context, hint_features=features, **weighting)
            rows = self.row_scales[members[0]]
            if rows is not None:  # the unconditional half, or some images, weigh less
                outputs = [None if o is None else o * rows.to(o.dtype) for o in outputs]
            adapter = getattr(net, "adds_inside", False)
            self.finite.append(("T2I-Adapter" if adapter else "ControlNet", net.dtype, all_finite(outputs)))
            if adapter:
                inner = sum_residuals(inner, outputs)
            else:
                skips = sum_residuals(skips, outputs)
        return skips if inner is None else Residuals(skips, inner)

    @contextmanager
    def hooked(self):
        """The block within which it runs: its reference and IP-Adapter units' hooks in place."""
        with ExitStack() as stack:
            for part in (self.references, self.image_prompts):
                if part is not None:
                    stack.enter_context(part.hooked())
            yield self

    def model_output(self, x, t, progress):
        residuals = self.residuals(x, t, progress) if self.controls else None
        if self.image_prompts is not None:
            self.image_prompts.set_step(progress)
        if self.references is None:
            return self.model.denoise(x, t, {"c_crossattn": [self.context]}, residuals)
        self.references.write(x, t, self.context, progress)
        with self.references.read():
            return self.model.denoise(x, t, {"c_crossattn": [self.context]}, residuals)

    def __call__(self, x, t, progress):
        out = classifier_free_guidance(lambda x2, t2: self.model_output(x2, t2, progress), x, t, self.guidance_scale)
        self.finite.append(("UNet", weights_dtype(self.model.model), all_finite(out)))
        if not torch.stack([flag for _, _, flag in self.finite]).all():
            part, dtype, _ = next(check for check in self.finite if not check[2])
            raise non_finite_error(part, dtype, self.step, self.steps)
        self.finite.clear()
        self.step += 1
        return out


@torch.no_grad()
def generate(model, hint, prompt=None, *, settings=None, controls=(), nets=None, init_image=None, mask=None,
             region_mask=None, size=None, latents=None, verbose=True, release_text_encoders=False, **values):
    """Images (list of HWC uint8) following `hint` (HWC uint8, sides multiples of 64) and the prompt, and the
    seed used (a random one for seed=-1).

    `settings` (cldm.settings.Settings; default: its defaults) and any of its fields given as keywords
    (steps=30, sampler="Euler a", ...) say how. The model's own control is weighed by their strength,
    control start/end, mode and block weights, and acts where `region_mask` is white. The settings' other units
    (Settings.units[1:], each a ControlUnit whose image is its condition map) add more, each running the
    ControlNet `nets` holds for its control file (None: the model's own); `controls` adds ready `Control`s.
    hint=None and no controls samples from the text alone, at `size` (H, W). The starting noise is one seeded
    `randn` of the latents' shape, as diffusers' pipelines draw it, or `latents` (N, C, H/8, W/8) when given.

    Image-to-image: `init_image` (HWC uint8, the generation's size) noised to strength `denoise` and the
    remaining steps run (1: the init image is ignored; 0: it comes back through the VAE). Inpainting: `mask`
    (white = repaint) repaints the init image there only, softened by `mask_blur` pixels (cldm.img2img).

    LoRAs (the settings' `loras`, and <lora:name:weight> tags in the prompts, which are read out of them) are
    merged into the model for the generation and taken out after it, its weights back bit for bit.

    `release_text_encoders`: free the text encoders once the prompts are encoded (a run's last generation).
    """
    if prompt is not None:
        values["prompt"] = prompt
    s = (settings or Settings()).with_values(**values)
    untagged = s.with_values(prompt=prompt_loras(s.prompt)[0], added_prompt=prompt_loras(s.added_prompt)[0], loras="")
    with applied(model, named_loras(s)):
        return sampled(model, hint, untagged, controls, nets, init_image, mask, region_mask, size, latents, verbose,
                       release_text_encoders)


def sampled(model, hint, s, controls, nets, init_image, mask, region_mask, size, latents, verbose,
            release_text_encoders):
    """generate()'s generation, for settings `s` whose LoRAs are merged and read out of its prompts."""
    seed = random.randint(0, 2**31 - 1) if s.seed == -1 else s.seed
    device = model.betas.device
    own = [] if hint is None else [Control.of(s.units[0], hint, region_mask=region_mask)]
    for k, unit in enumerate(s.units[1:], start=2):
        if unit.image is None:
            raise ValueError(f"control unit {k} has no condition map: give it one (its image)")
    listed = [Control.of(unit, unit.image, (nets or {}).get(unit.control)) for unit in s.units[1:]]
    controls = own + listed + list(controls)
    if not hasattr(model, "control_model") and any(c.net is None and not c.reference for c in controls):
        raise ValueError("this model has no ControlNet: pass hint=None, or Control(..., net=a ControlNet)")
    if mask is not None and init_image is None:
        raise ValueError("a mask needs the picture it applies to: give init_image too")
    sizes = {np.asarray(c.hint).shape[:2] for c in controls}
    if init_image is not None:
        sizes.add(np.asarray(init_image).shape[:2])
    if len(sizes) > 1:
        raise ValueError(f"the condition images and the init image must have the same size, got {sorted(sizes)}")
    height, width = sizes.pop() if sizes else size
    n = s.num_samples
    full_prompt = ", ".join(p for p in (s.prompt, s.added_prompt) if p)
    ids = SizeIds.of(height, width)  # SDXL's size and crop conditioning: an uncropped picture of this size
    context = check_finite(model.condition([full_prompt] * n, ids), "text encoder")
    uncond_context = check_finite(model.condition([s.negative_prompt] * n, ids, negative=True), "text encoder")
    if release_text_encoders:
        model.release_text_encoders()
    guidance_scale = s.guidance_scale
    embedding = model.model.diffusion_model.config.time_cond_proj_dim
    if embedding:  # an LCM-distilled UNet takes the scale as an input (w = scale - 1), in one pass, as diffusers does
        w = torch.full((n,), s.guidance_scale - 1.0, device=device)
        context, guidance_scale = replace(context, guidance=guidance_embedding(w, embedding)), 1.0
    steps_run = s.steps - skipped_steps(s.steps, s.denoise) if init_image is not None else s.steps
    # a reference's noise comes from a generator of its own (the seed plus one), the sampler's stays as it was
    reference_noise = torch.Generator(device=device).manual_seed(seed + 1)
    denoiser = GuidedDenoiser(model, context, uncond_context, controls, guidance_scale, s.guess_mode, steps_run,
                              reference_noise)
    generator = torch.Generator(device=device).manual_seed(seed)
    # the starting noise and the latents the sampler updates are fp32 whatever the model computes in
    shape = (n, model.channels, height // 8, width // 8)
    x_T = torch.randn(shape, generator=generator, device=device) if latents is None else latents.float().to(device)
    if x_T.shape != shape:
        raise ValueError(f"latents of shape {tuple(x_T.shape)} given; this generation's are {shape}")
    start = None if init_image is None else start_from(model, init_image, n, mask, s.mask_blur)
    with denoiser.hooked():
        latents = sample(model, denoiser, x_T, s.steps, s.sampler, s.eta, generator, verbose,
                         init=start and start.latent, denoise=s.denoise, keep=start and start.keep)
    images = check_finite(model.decode_first_stage(latents), "VAE decoder", weights_dtype(model.first_stage_model))
    images = start.composite(images) if start else images
    images = (images.permute(0, 2, 3, 1) * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return list(images), seed
