"""ControlNet (Zhang, Rao and Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models").

The UNet's encoder is copied: the original stays locked, the copy is trainable and sees the condition
through a small hint encoder, and each copy block feeds the locked decoder through a 1x1 conv initialised
to zero, so a freshly added control leaves the base model's output exactly unchanged.

Checkpoint keys are the contract with every released control and every tool that reads them:
`control_model.input_hint_block.*`, `control_model.zero_convs.N.0.*`, `control_model.middle_block_out.0.*`,
and the copied encoder under `control_model.input_blocks.*` / `control_model.middle_block.*`.
"""

import torch
from torch import nn

from ldm.attention import zero_module
from ldm.diffusion import LatentDiffusion
from ldm.unet import TimestepEmbedSequential, UNetConfig, UNetModel, build_encoder, time_embedding, timestep_embedding

NUM_CONTROLS = 13  # SD 1.x/2.x: one per encoder block (12 input blocks) plus the middle block


def guess_mode_scales(strength=1.0, n=NUM_CONTROLS):
    """The release's guess-mode scales: deeper blocks count more, strength * 0.825 ** (12 - i) for SD."""
    return [strength * 0.825 ** float(n - 1 - i) for i in range(n)]


def zero_conv(channels):
    return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))


def hint_encoder(hint_channels, model_channels):
    """Image-space condition (B, hint_channels, 8H, 8W) -> latent-sized features (B, model_channels, H, W)."""
    widths = [(hint_channels, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2)]
    layers = []
    for c_in, c_out, stride in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride), nn.SiLU()]
    layers.append(zero_module(nn.Conv2d(256, model_channels, 3, padding=1)))
    return TimestepEmbedSequential(*layers)


class ControlNet(nn.Module):
    """The trainable copy of the UNet encoder; returns one residual per locked skip connection + the middle."""

    config_class = UNetConfig  # yaml params are its fields

    def __init__(self, hint_channels, **params):
        super().__init__()
        params.pop("out_channels", None)  # the control has no decoder
        self.config = cfg = UNetConfig(**params)
        self.model_channels = cfg.model_channels
        self.dtype = torch.float16 if cfg.use_fp16 else torch.float32
        self.time_embed = time_embedding(cfg.model_channels)
        self.input_hint_block = hint_encoder(hint_channels, cfg.model_channels)
        self.input_blocks, self.middle_block, block_channels = build_encoder(cfg)
        self.zero_convs = nn.ModuleList(zero_conv(ch) for ch in block_channels)
        self.middle_block_out = zero_conv(block_channels[-1])
        self.num_outputs = len(block_channels) + 1

    def encode_hint(self, hint):
        """The condition image's features (B, model_channels, H, W); they depend on nothing else, so a sampler
        may compute them once per generation and pass them to every step as `hint_features`."""
        return self.input_hint_block(hint, None, None)

    def forward(self, x, hint, timesteps, context, hint_features=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        guided_hint = self.encode_hint(hint) if hint_features is None else hint_features
        outs = []
        h = x.type(self.dtype)
        for i, (module, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = module(h, emb, context)
            if i == 0:
                h = h + guided_hint  # the condition enters once, after the first conv
            outs.append(zero(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs


class ControlledUnetModel(UNetModel):
    """The locked SD UNet with control residuals added to its middle output and skip connections.

    The encoder runs without autograd: it is never trained, and this saves the memory of its activations.
    """

    def forward(self, x, timesteps, context=None, control=None, only_mid_control=False):
        hs = []
        with torch.no_grad():
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
            h = x.type(self.dtype)
            for module in self.input_blocks:
                h = module(h, emb, context)
                hs.append(h)
            h = self.middle_block(h, emb, context)
        control = list(control) if control is not None else None
        if control is not None:
            h = h + control.pop()
        for module in self.output_blocks:
            skip = hs.pop()
            if control is not None and not only_mid_control:
                skip = skip + control.pop()
            h = module(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h.type(x.dtype))


class ControlLDM(LatentDiffusion):
    """Stable Diffusion with a ControlNet. `cond = {"c_concat": [hint], "c_crossattn": [text context]}`.

    control_scales: one multiplier per control output (13 for SD: input blocks first, middle last).
    sd_locked: train only the control (True), or the UNet decoder too.
    """

    def __init__(self, control_model, *, control_key="hint", only_mid_control=False, global_average_pooling=False,
                 sd_locked=True, **kwargs):
        super().__init__(**kwargs)
        self.control_model = control_model
        self.control_key = control_key
        self.only_mid_control = only_mid_control
        self.global_average_pooling = global_average_pooling
        self.sd_locked = sd_locked  # also sets which UNet weights need gradients
        self.control_scales = [1.0] * control_model.num_outputs

    def apply_model(self, x_noisy, t, cond, control_scales=None):
        context = torch.cat(cond["c_crossattn"], 1)
        unet = self.model.diffusion_model
        if cond.get("c_concat") is None:
            return unet(x_noisy, t, context=context, control=None, only_mid_control=self.only_mid_control)
        hint = torch.cat(cond["c_concat"], 1)
        control = self.control_model(x_noisy, hint, t, context)
        scales = self.control_scales if control_scales is None else control_scales
        if len(scales) != len(control):
            raise ValueError(f"control_scales has {len(scales)} values; this control has {len(control)} outputs")
        control = [c * s for c, s in zip(control, scales)]
        if self.global_average_pooling:  # ControlNet 1.1 shuffle: only global statistics of the control pass
            control = [c.mean(dim=(2, 3), keepdim=True) for c in control]
        return unet(x_noisy, t, context=context, control=control, only_mid_control=self.only_mid_control)

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
