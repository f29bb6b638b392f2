"""ControlNet (Zhang, Rao and Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

The UNet's encoder is copied: the original stays locked, the copy is trainable and sees the condition
through a small hint encoder, and each copy block feeds the locked decoder through a 1x1 conv initialised
to zero, so a freshly added control leaves the base model's output exactly unchanged.

Checkpoint keys are the contract with every released control and every tool that reads them:
`control_model.input_hint_block.*`, `control_model.zero_convs.N.0.*`, `control_model.middle_block_out.0.*`,
and the copied encoder under `control_model.input_blocks.*` / `control_model.middle_block.*`.
"""

from dataclasses import replace

import torch
from torch import nn

from ldm.attention import zero_module
from ldm.conditioning import Conditioning
from ldm.diffusion import LatentDiffusion
from ldm.precision import weights_dtype
from ldm.sdxl import DiffusionEngine
from ldm.unet import (
    Residuals,
    TimestepEmbedSequential,
    UNetConfig,
    UNetModel,
    build_encoder,
    embed,
    label_embedding,
    time_embedding,
)

NUM_CONTROLS = 13  # SD 1.x/2.x: one per encoder block (12 input blocks) plus the middle block
CONTROL_PREFIX = "control_model."  # where a ControlLDM keeps its ControlNet's weights


RELEASE_SOFT_BASE = 0.825  # the release's guess-mode ratio between a block's weight and the next deeper one's


def guess_mode_scales(strength=1.0, n=NUM_CONTROLS, base=RELEASE_SOFT_BASE):
    """The soft scales of guess mode, deeper blocks counting more, with the shallowest of the n blocks weighing
    strength * base ** 12 (the middle block, last, the strength itself).

    The release's base (0.825) gives each net the soft scales it was released with: on SD 1.x/2.x's 13 outputs
    the release's strength * 0.825 ** (12 - i); on other nets (SDXL's 10), released for diffusers, diffusers'
    strength * 10 ** (i / (n - 1) - 1), the same series with its ratio (10 ** (-1/12) = 0.8254 over 12 blocks)
    spread over their blocks. Another base (ComfyUI-Advanced-ControlNet's soft weights' base multiplier) spreads
    base ** 12 ... 1 over the blocks the same way."""
    if base == RELEASE_SOFT_BASE and n != NUM_CONTROLS:
        return [strength * s for s in torch.logspace(-1, 0, n).tolist()]
    span = (NUM_CONTROLS - 1) / (n - 1) if n > 1 else 1.0
    return [strength * base ** (float(n - 1 - i) * span) for i in range(n)]


def control_weights(n, strength=1.0, guess_mode=False, control_mode="balanced", block_weights=None,
                    soft_base=RELEASE_SOFT_BASE):
    """The multiplier of each of a ControlNet's n residuals (shallowest block first, the middle block last):
    how the ways of weighing a control combine, the one place they do.

    1. `strength` multiplies every residual.
    2. The soft scales (guess_mode_scales with base `soft_base`; the release's: 0.825 ** (n - 1 - i)), apply
       when guess mode is on, or the control mode is "prompt" (the A1111 extension's name for them), or the
       block weights are the preset "soft". These are three names for one request and it is granted once:
       guess mode with "soft" block weights gives the soft scales, not their square (which would all but
       silence the shallow blocks: 0.825 ** 24 = 0.01).
    3. Block weights given as numbers, or the preset "only_mid", then multiply each residual in turn.
    """
    soft = guess_mode or control_mode == "prompt" or block_weights == "soft"
    weights = guess_mode_scales(strength, n, soft_base) if soft else [strength] * n
    scales = None if block_weights == "soft" else parse_block_weights(block_weights, n)
    return weights if scales is None else [w * s for w, s in zip(weights, scales)]


BLOCK_WEIGHT_PRESETS = ("uniform", "soft", "only_mid")


def parse_block_weights(value, n=NUM_CONTROLS):
    """Per-block weights of a control as numbers (None: uniform): a preset ("uniform": all ones; "only_mid": the
    middle block alone; "soft" is control_weights' to grant), n numbers, or their text "1, 0.5, ..."
    (shallowest block first, the middle block last); n=None takes any count of numbers."""
    if value is None or value == "uniform":
        return None
    if value == "only_mid":
        return None if n is None else [0.0] * (n - 1) + [1.0]
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"block weights {value!r} are neither a preset {BLOCK_WEIGHT_PRESETS} nor numbers "
                             f"like '1, 1, 0.5'") from None
    value = [float(v) for v in value]
    if n is not None and len(value) != n:
        raise ValueError(f"got {len(value)} block weights; this ControlNet has {n} blocks (the middle one last)")
    return value


def sum_residuals(a, b):
    """The residuals of two ControlNets added block by block (None: that net adds nothing there)."""
    if a is None:
        return b
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b)]


def control_nets(model, extra=()):
    """The ControlNets a generation runs: the model's own (if it has one), then the `extra` ones given."""
    own = [model.control_model] if hasattr(model, "control_model") else []
    return own + [n for n in extra if n is not None]


def zero_conv(channels):
    return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))


HINT_WIDTHS = (16, 32, 96, 256)  # the release's; ControlNet-Union's files may say others


def hint_encoder(hint_channels, model_channels, widths=HINT_WIDTHS):
    """Image-space condition (B, hint_channels, 8H, 8W) -> latent-sized features (B, model_channels, H, W): a
    conv to each width, each width's conv then a stride-2 conv to the next (three halvings), a zero conv out."""
    convs = [(hint_channels, widths[0], 1)]
    for c_in, c_out in zip(widths, widths[1:]):
        convs += [(c_in, c_in, 1), (c_in, c_out, 2)]
    layers = []
    for c_in, c_out, stride in convs:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride), nn.SiLU()]
    layers.append(zero_module(nn.Conv2d(widths[-1], model_channels, 3, padding=1)))
    return TimestepEmbedSequential(*layers)


class ControlNet(nn.Module):
    """The trainable copy of the UNet encoder; returns the residuals to add to the locked UNet, one per skip
    connection and one for the middle block, already weighted.

    Everything that decides a net's residuals is the net's own: its weighting per call (strength, the soft
    guess-mode scales, per-block scales) and its configuration (`global_average_pooling` for ControlNet 1.1
    shuffle, `only_mid_control`), so several nets side by side each keep theirs.
    """

    config_class = UNetConfig  # yaml params are its fields

    def __init__(self, hint_channels, global_average_pooling=False, only_mid_control=False, hint_widths=HINT_WIDTHS,
                 **params):
        super().__init__()
        params.pop("out_channels", None)  # the control has no decoder
        self.config = cfg = UNetConfig(**params)
        self.model_channels = cfg.model_channels
        self.global_average_pooling = global_average_pooling  # only global statistics of the control pass
        self.only_mid_control = only_mid_control  # residuals for the middle block only
        self.time_embed = time_embedding(cfg.model_channels)
        self.label_emb = label_embedding(cfg)
        self.input_hint_block = hint_encoder(hint_channels, cfg.model_channels, tuple(hint_widths))
        self.input_blocks, self.middle_block, block_channels = build_encoder(cfg)
        self.zero_convs = nn.ModuleList(zero_conv(ch) for ch in block_channels)
        self.middle_block_out = zero_conv(block_channels[-1])
        self.num_outputs = len(block_channels) + 1
        if cfg.use_fp16:  # the release's switch: the net computes in fp16
            self.half()

    @property
    def dtype(self):
        return weights_dtype(self.time_embed)

    def encode_hint(self, hint):
        """The condition image's features (B, model_channels, H, W); they depend on nothing else, so a sampler
        may compute them once per generation and pass them to every step as `hint_features`."""
        return self.input_hint_block(hint.to(self.dtype), None, None)

    def embedding(self, timesteps, cond, dtype):
        """What every ResBlock of the copy gets: the timesteps' embedding (and SDXL's label embedding)."""
        return embed(self.time_embed, self.label_emb, self.model_channels, timesteps, cond, dtype)

    def conditioned(self, h, hint_features):
        """The copy's first features with the condition's added."""
        return h + hint_features.to(h.dtype)

    runtime = None  # an ldm.runtime.Runtime computing the residuals where it can (--backend)

    def forward(self, x, hint, timesteps, context, hint_features=None, weights=None, region=None, **condition):
        """Residuals (B, C_i, H_i, W_i) in the net's dtype; None where `only_mid_control` adds nothing.

        `weights` multiply the residuals, one per block (control_weights makes them; None: all 1).

        `region` (B or 1, 1, H, W) in [0, 1], at any resolution, limits the control to part of the picture:
        each residual is multiplied by it, resized to the residual's size by area averaging.

        `condition`: what a kind of net reads beside the hint (ControlNet-Union: the conditions' types)."""
        dtype = self.dtype
        cond = Conditioning.of(context).to(dtype)
        guided_hint = self.encode_hint(hint) if hint_features is None else hint_features
        outs = None
        if self.runtime is not None and not condition and not self.only_mid_control:
            parts = tuple(cond.tensors())

            def core(x, t, hint_features, *rest):
                return self.residuals(x, t, hint_features, Conditioning(**dict(zip(parts, rest))))

            outs = self.runtime(parts, core, [x.to(dtype), timesteps, guided_hint.to(dtype), *cond.tensors().values()])
        if outs is None:
            outs = self.residuals(x.to(dtype), timesteps, guided_hint, cond, **condition)
        return self.weighted(outs, weights, region)

    def residuals(self, x, timesteps, hint_features, cond, **condition):
        """The residuals before the net's weighting, for x in its dtype and a Conditioning."""
        emb = self.embedding(timesteps, cond, x.dtype, **condition)
        context = cond.crossattn
        # the encoder copy; the condition enters once, after the first conv
        outs = []
        h = x
        for i, (module, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = module(h, emb, context)
            if i == 0:
                h = self.conditioned(h, hint_features, **condition)
            outs.append(None if self.only_mid_control else zero(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs

    def weighted(self, outs, weights=None, region=None):
        """The residuals with the net's weighting: per-block weights, pooling, the region mask."""
        sizes = [None if o is None else tuple(o.shape[2:]) for o in outs]  # each block's, before any pooling
        if weights is not None:
            if len(weights) != self.num_outputs:
                raise ValueError(f"got {len(weights)} control scales; this ControlNet has {self.num_outputs} outputs")
            outs = [None if o is None else o * w for o, w in zip(outs, weights)]
        if self.global_average_pooling:
            outs = [None if o is None else o.mean(dim=(2, 3), keepdim=True) for o in outs]
        if region is not None:  # a pooled residual acts uniformly inside the region, at its block's size
            scaled = {size: region_at(region, size, self.dtype) for size in set(sizes) - {None}}  # a few sizes
            outs = [None if o is None else o * scaled[size] for o, size in zip(outs, sizes)]
        return outs


def region_at(region, size, dtype):
    """A region mask averaged down to one residual's (h, w)."""
    return torch.nn.functional.interpolate(region.float(), size=tuple(size), mode="area").to(dtype)


class ControlledUnetModel(UNetModel):
    """The locked SD UNet, to which ControlNet residuals are added (UNetModel's `control`).

    The encoder runs without autograd: it is never trained, and this saves the memory of its activations.
    """

    @torch.no_grad()
    def encode(self, x, timesteps, cond, inner=None):
        return super().encode(x, timesteps, cond, inner)

    def forward(self, x, timesteps, context=None, control=None, only_mid_control=False):
        # only_mid_control: the release's argument; ControlNet(only_mid_control=True) is the way to ask for it
        control = Residuals.of(control)
        if only_mid_control and control.skips is not None:
            control = replace(control, skips=[None] * (len(control.skips) - 1) + [control.skips[-1]])
        return super().forward(x, timesteps, context, control)


class ControlLDM(LatentDiffusion):
    """Stable Diffusion with a ControlNet. `cond = {"c_concat": [hint], "c_crossattn": [text context]}`.

    control_scales: the release's attribute, one multiplier per control output (13 for SD); `apply_model`
        reads it only when its call names no `control_scales`.
    sd_locked: train only the control (True), or the UNet decoder too.
    only_mid_control, global_average_pooling: set on the ControlNet, whose properties they are.
    The release's training API (`trainer.fit(model)`, learning_rate, log_images) is cldm.lightning's
    ReleaseControlLDM, which `create_model` builds; train.py trains through training.module.Trainee, with the
    same step (cldm.loss). Generating needs no Lightning.
    """

    def __init__(self, control_model, *, control_key="hint", only_mid_control=False, global_average_pooling=False,
                 sd_locked=True, **kwargs):
        super().__init__(**kwargs)
        self.control_model = control_model
        self.control_key = control_key
        control_model.only_mid_control = only_mid_control
        control_model.global_average_pooling = global_average_pooling
        self.sd_locked = sd_locked  # also sets which UNet weights need gradients
        self.control_scales = [1.0] * control_model.num_outputs

    def apply_model(self, x_noisy, t, cond, control_scales=None):
        """The model's output; cond["control_types"] (B, K), with cond["c_concat"] [(B, K, 3, H, W)] maps, trains a
        ControlNet-Union: each sample runs its own conditions (types of -1 are left out)."""
        context = Conditioning.of(cond["c_crossattn"])
        control = None
        if cond.get("c_concat") is not None:
            scales = self.control_scales if control_scales is None else control_scales
            if cond.get("control_types") is not None:
                control = self.union_residuals(x_noisy, cond["c_concat"][0], cond["control_types"], t, context, scales)
            else:
                control = self.control_model(x_noisy, torch.cat(cond["c_concat"], 1), t, context, weights=scales)
        return self.denoise(x_noisy, t, {"c_crossattn": [context]}, control)

    def union_residuals(self, x, maps, types, t, context, scales):
        """A ControlNet-Union's residuals for samples that each carry their own conditions: one pass a sample."""
        per_sample = []
        for b in range(x.shape[0]):
            kept = [k for k in range(types.shape[1]) if types[b, k] >= 0]
            per_sample.append(self.control_model(x[b:b + 1], [maps[b:b + 1, k] for k in kept], t[b:b + 1],
                                                 context[b:b + 1], weights=scales,
                                                 types=[int(types[b, k]) for k in kept]))
        return [torch.cat(parts) for parts in zip(*per_sample)]

    # The release's attributes, now the ControlNet's own.
    only_mid_control = property(lambda self: self.control_model.only_mid_control,
                                lambda self, on: setattr(self.control_model, "only_mid_control", bool(on)))
    global_average_pooling = property(lambda self: self.control_model.global_average_pooling,
                                      lambda self, on: setattr(self.control_model, "global_average_pooling", bool(on)))

    @property
    def sd_locked(self):
        return self._sd_locked

    @sd_locked.setter
    def sd_locked(self, locked):
        # Locked weights get no gradients at all: backward still runs through the decoder to reach the
        # control, but computes no weight gradients there (the release computed and dropped them).
        self._sd_locked = bool(locked)
        unet = self.model.diffusion_model
        unet.requires_grad_(False)
        if not locked:
            unet.output_blocks.requires_grad_(True)
            unet.out.requires_grad_(True)

    def trainable_parameters(self):
        """The parameters the release's ControlLDM optimises: the control, plus the UNet decoder if unlocked."""
        params = list(self.control_model.parameters())
        if not self.sd_locked:
            unet = self.model.diffusion_model
            params += list(unet.output_blocks.parameters()) + list(unet.out.parameters())
        return params


class ControlDiffusionEngine(ControlLDM, DiffusionEngine):
    """SDXL with a ControlNet: sgm's DiffusionEngine (its keys: model.diffusion_model, conditioner,
    first_stage_model) and the control under `control_model.*`, as ControlLDM holds one on SD 1.x/2.x."""
