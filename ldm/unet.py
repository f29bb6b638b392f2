"""Stable Diffusion's denoising UNet (the `openaimodel.UNetModel` of the LDM release).

The encoder half (input blocks + middle block) is built by `build_encoder`, which ControlNet calls too:
its trainable copy is the same code, so "copy the encoder into the control" is a plain key rename.
Attribute names are the checkpoint keys (`input_blocks.N.M`, `in_layers`, `emb_layers`, `op`, `out`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.attention import SpatialTransformer, zero_module
from ldm.conditioning import Conditioning
from ldm.precision import weights_dtype


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) fp32, cosines first as in the LDM release.

    Always fp32 (ldm.precision): t * frequency reaches 999 radians, where bf16 would be off by whole radians.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def normalization(channels):
    # The release upcast to fp32 here because fp16 statistics overflow; torch's GroupNorm kernels accumulate
    # fp16 and bf16 inputs in fp32 themselves, so no fp32 copy of the activations is needed (ldm.precision).
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between, plus a (1x1 if needed) skip."""

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False,
                 use_checkpoint=False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks get the timestep embedding and whose transformers get the text."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


@dataclass
class UNetConfig:
    """The `params` of a UNet (or ControlNet) in the LDM yaml, with the release's names and defaults."""

    in_channels: int
    model_channels: int
    num_res_blocks: int | list
    attention_resolutions: list
    out_channels: int | None = None  # None: same as in_channels
    channel_mult: tuple = (1, 2, 4, 8)
    dropout: float = 0.0
    conv_resample: bool = True
    dims: int = 2
    num_heads: int = -1
    num_head_channels: int = -1
    num_heads_upsample: int = -1  # only used by the non-spatial attention, which SD does not use
    use_scale_shift_norm: bool = False
    use_spatial_transformer: bool = False
    transformer_depth: int | list = 1
    context_dim: int | None = None
    legacy: bool = True
    disable_self_attentions: list | None = None
    num_attention_blocks: list | None = None
    disable_middle_self_attn: bool = False
    use_linear_in_transformer: bool = False
    use_checkpoint: bool = False
    use_fp16: bool = False
    num_classes: str | None = None  # "sequential": SDXL's label embedding of the conditioning's vector part
    adm_in_channels: int | None = None  # ... and that vector's width (SDXL: 2816)
    time_cond_proj_dim: int | None = None  # an LCM-distilled UNet's guidance embedding width (diffusers' name)
    image_size: int | None = None  # unused: the network is fully convolutional
    spatial_transformer_attn_type: str = "softmax"  # sgm's kernel choice; attention here is torch's SDPA

    def __post_init__(self):
        if not self.use_spatial_transformer or self.context_dim is None:
            raise ValueError("only the text-conditioned UNet of Stable Diffusion is supported: "
                             "set use_spatial_transformer: True and context_dim")
        if self.dims != 2 or not self.conv_resample:
            raise ValueError("only 2-D UNets with convolutional resampling (dims: 2, conv_resample: True) are supported")
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("set exactly one of num_heads and num_head_channels")
        n_levels = len(self.channel_mult)
        if isinstance(self.num_res_blocks, int):
            self.num_res_blocks = [self.num_res_blocks] * n_levels
        if isinstance(self.transformer_depth, int):
            self.transformer_depth = [self.transformer_depth] * n_levels
        if len(self.num_res_blocks) != n_levels or len(self.transformer_depth) < n_levels:
            raise ValueError(f"num_res_blocks and transformer_depth need one entry per channel_mult level ({n_levels})")
        self.out_channels = self.out_channels or self.in_channels
        if self.num_classes not in (None, "sequential") or (self.num_classes is None) != (self.adm_in_channels is None):
            raise ValueError("a label embedding is SDXL's: num_classes: sequential with adm_in_channels, or neither")

    def heads_for(self, ch):
        """(number of heads, channels per head) of the transformer at width `ch`."""
        if self.num_head_channels == -1:
            return self.num_heads, ch // self.num_heads
        num_heads = ch // self.num_head_channels
        return num_heads, (ch // num_heads if self.legacy else self.num_head_channels)

    def transformer(self, ch, level, nr=0, middle=False):
        heads, dim_head = self.heads_for(ch)
        disabled = self.disable_middle_self_attn if middle else bool(
            self.disable_self_attentions and self.disable_self_attentions[level])
        return SpatialTransformer(
            ch, heads, dim_head, depth=self.transformer_depth[-1 if middle else level], dropout=self.dropout,
            context_dim=self.context_dim, disable_self_attn=disabled, use_linear=self.use_linear_in_transformer,
            use_checkpoint=self.use_checkpoint,
        )

    def has_attention(self, ds, level, nr):
        if ds not in self.attention_resolutions:
            return False
        return self.num_attention_blocks is None or nr < self.num_attention_blocks[level]

    def resblock(self, ch, out_ch):
        return ResBlock(ch, self.model_channels * 4, self.dropout, out_ch, self.use_scale_shift_norm, self.use_checkpoint)


def guidance_embedding(scales, dim):
    """Sinusoidal embedding of (B,) guidance scales -> (B, dim) fp32, as LCM's distillation embedded w (sines
    first; diffusers' pipelines pass w = guidance scale - 1). What `TimeEmbedding.cond_proj` reads."""
    half = dim // 2
    # in fp32 and in this order of operations: at w * 1000 radians a rounding elsewhere moves the result
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step).to(scales.device)
    args = (scales.float() * 1000.0)[:, None] * freqs[None]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return torch.nn.functional.pad(embedding, (0, dim % 2))


class TimeEmbedding(nn.Sequential):
    """The timestep embedding's MLP. An LCM-distilled UNet (`time_cond_proj_dim`) also reads the guidance scale:
    its embedding, projected by `cond_proj`, is added to the timestep's before the MLP."""

    def __init__(self, model_channels, cond_proj_dim=None):
        dim = model_channels * 4
        super().__init__(nn.Linear(model_channels, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cond_proj = None if cond_proj_dim is None else nn.Linear(cond_proj_dim, model_channels, bias=False)

    def forward(self, x, guidance=None):
        if self.cond_proj is not None and guidance is not None:
            x = x + self.cond_proj(guidance.to(x.dtype))
        return self[2](self[1](self[0](x)))


def time_embedding(model_channels, cond_proj_dim=None):
    return TimeEmbedding(model_channels, cond_proj_dim)


def label_embedding(cfg):
    """SDXL's label embedding (sgm's num_classes: "sequential"): the conditioning's vector part (the pooled text
    embedding and the size and crop ids) to the timestep embedding's width; None for SD 1.x/2.x."""
    if cfg.num_classes is None:
        return None
    dim = cfg.model_channels * 4
    return nn.Sequential(nn.Sequential(nn.Linear(cfg.adm_in_channels, dim), nn.SiLU(), nn.Linear(dim, dim)))


def embed(time_embed, label_emb, model_channels, timesteps, cond, dtype):
    """The embedding every ResBlock gets: the timesteps', plus the label embedding of the conditioning's vector
    part where the network has one (SDXL). Shared by the UNet and ControlNet's copy."""
    guidance = None if cond is None else cond.guidance  # read by an LCM UNet's embedding only
    emb = time_embed(timestep_embedding(timesteps, model_channels).to(dtype), guidance)
    vector = None if cond is None else cond.vector
    if label_emb is None:
        if vector is not None:
            raise ValueError("this network takes no vector conditioning (it has no label embedding): an SDXL "
                             "conditioning given to an SD 1.x/2.x model?")
        return emb
    if vector is None:
        raise ValueError("this network needs the conditioning's vector part (SDXL: the pooled text embedding and "
                         "the size and crop ids)")
    return emb + label_emb(vector.to(dtype))


def build_encoder(cfg: UNetConfig):
    """The input blocks and middle block, and the channel count after each input block.

    Shared by the UNet and by ControlNet's trainable copy, so both have identical keys below
    `input_blocks` and `middle_block`.
    """
    ch = cfg.model_channels
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
    block_channels = [ch]
    ds = 1  # downsampling factor so far; attention_resolutions lists the factors that get attention
    for level, mult in enumerate(cfg.channel_mult):
        for nr in range(cfg.num_res_blocks[level]):
            layers = [cfg.resblock(ch, mult * cfg.model_channels)]
            ch = mult * cfg.model_channels
            if cfg.has_attention(ds, level, nr):
                layers.append(cfg.transformer(ch, level, nr))
            input_blocks.append(TimestepEmbedSequential(*layers))
            block_channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
            block_channels.append(ch)
            ds *= 2
    middle_block = TimestepEmbedSequential(
        cfg.resblock(ch, ch), cfg.transformer(ch, len(cfg.channel_mult) - 1, middle=True), cfg.resblock(ch, ch)
    )
    return input_blocks, middle_block, block_channels


def build_decoder(cfg: UNetConfig, block_channels):
    """The output blocks, each taking the previous output concatenated with one skip connection."""
    skips = list(block_channels)
    ch = skips[-1]
    ds = 2 ** (len(cfg.channel_mult) - 1)
    output_blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks[level] + 1):
            layers = [cfg.resblock(ch + skips.pop(), cfg.model_channels * mult)]
            ch = cfg.model_channels * mult
            if cfg.has_attention(ds, level, i):
                layers.append(cfg.transformer(ch, level, i))
            if level and i == cfg.num_res_blocks[level]:
                layers.append(Upsample(ch))
                ds //= 2
            output_blocks.append(TimestepEmbedSequential(*layers))
    return output_blocks, ch


def set_gradient_checkpointing(module, enabled):
    """Recompute ResBlock and transformer activations in backward instead of storing them (or stop doing so)."""
    for m in module.modules():
        if isinstance(m, (ResBlock, SpatialTransformer)):
            m.use_checkpoint = enabled


def add_residual(h, residual):
    """h plus a ControlNet residual (cast to h's dtype), or h itself when there is none."""
    return h if residual is None else h + residual.to(h.dtype)


@dataclass
class Residuals:
    """What controls add to a UNet, for controls of two kinds.

    `skips`: one per skip connection, in the encoder's order, then one for the middle block's output; added where
    the decoder reads them (ControlNets). `inner`: one per input block, then one for the middle block; added to
    the encoder's hidden state after that block, so the blocks after it and the skip connection taken there see
    it (T2I-Adapters). None, for either or any entry: nothing added there."""

    skips: list | None = None
    inner: list | None = None

    @classmethod
    def of(cls, control):
        """A UNet's `control`: Residuals, a list of skip residuals (the release's form), or None."""
        return control if isinstance(control, Residuals) else cls(skips=None if control is None else list(control))


class UNetModel(nn.Module):
    """eps/v prediction from a noisy latent x (B, C, H, W), timesteps (B,) and text context (B, T, D).

    `control` takes ControlNet residuals to add: one per skip connection, in the encoder's order, then one
    for the middle block (None adds nothing). The UNet only adds what it is given; the ControlNets weigh them.
    It computes in its weights' dtype and returns the prediction in x's dtype (ldm.precision).
    """

    config_class = UNetConfig  # yaml params are its fields

    def __init__(self, **params):
        super().__init__()
        self.config = cfg = UNetConfig(**params)
        self.model_channels = cfg.model_channels
        self.time_embed = time_embedding(cfg.model_channels, cfg.time_cond_proj_dim)
        self.label_emb = label_embedding(cfg)
        self.input_blocks, self.middle_block, block_channels = build_encoder(cfg)
        self.output_blocks, ch = build_decoder(cfg, block_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1))
        )
        if cfg.use_fp16:  # the release's switch: the UNet computes in fp16
            self.half()

    @property
    def dtype(self):
        return weights_dtype(self.time_embed)

    def encode(self, x, timesteps, cond, inner=None):
        """The encoder half for a Conditioning `cond` (or None), with `inner` (Residuals.inner) added along the
        way: (middle block output, skip connections, timestep embedding)."""
        emb = embed(self.time_embed, self.label_emb, self.model_channels, timesteps, cond, x.dtype)
        context = None if cond is None else cond.crossattn
        inner = [None] * (len(self.input_blocks) + 1) if inner is None else inner
        if len(inner) != len(self.input_blocks) + 1:
            raise ValueError(f"got {len(inner)} encoder additions; this UNet takes {len(self.input_blocks) + 1} "
                             "(one per input block, then the middle block)")
        hs = []
        h = x
        for module, added in zip(self.input_blocks, inner):
            h = add_residual(module(h, emb, context), added)
            hs.append(h)
        return add_residual(self.middle_block(h, emb, context), inner[-1]), hs, emb

    runtime = None  # an ldm.runtime.Runtime computing the prediction where it can (--backend)

    def forward(self, x, timesteps, context=None, control=None):
        """`context`: the Conditioning (or the release's tensor of token features); `control`: Residuals, or the
        release's list of skip residuals."""
        dtype = self.dtype
        cond = None if context is None else Conditioning.of(context).to(dtype)
        control = Residuals.of(control)
        skips = control.skips or []
        if self.runtime is not None and cond is not None and control.inner is None and all(
                s is not None for s in skips):
            parts = tuple(cond.tensors())

            def core(x, t, *rest):
                given = Residuals(skips=list(rest[len(parts):]) or None)
                return self.predict(x, t, Conditioning(**dict(zip(parts, rest))), given)

            out = self.runtime((parts, len(skips)), core, [x.to(dtype), timesteps, *cond.tensors().values(), *skips])
            if out is not None:
                return out[0].to(x.dtype)
        return self.predict(x.to(dtype), timesteps, cond, control).to(x.dtype)

    def predict(self, x, timesteps, cond, control):
        """The prediction for x in the network's dtype, a Conditioning (or None) and Residuals."""
        h, hs, emb = self.encode(x, timesteps, cond, control.inner)
        context = None if cond is None else cond.crossattn
        residuals = list(control.skips) if control.skips is not None else [None] * (len(hs) + 1)
        if len(residuals) != len(hs) + 1:
            raise ValueError(f"got {len(residuals)} control residuals; this UNet takes {len(hs) + 1} "
                             "(one per skip connection, then the middle block)")
        h = add_residual(h, residuals.pop())
        for module in self.output_blocks:
            h = module(torch.cat([h, add_residual(hs.pop(), residuals.pop())], dim=1), emb, context)
        return self.out(h)
