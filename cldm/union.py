"""ControlNet-Union (xinsir's controlnet-union-sdxl-1.0 and its ProMax): one SDXL ControlNet for many kinds of
condition, told which kind each map is.

On the ControlNet's tree it adds: the control types as a one-hot vector through 256-wide Fourier features and
`control_add_embedding` into the timestep embedding; each condition's features pooled to one token plus its
type's `task_embedding`, mixed with the input's pooled token by one transformer layer (`transformer_layes`, the
released files' spelling) whose output, projected by `spatial_ch_projs`, shifts each condition's features
before they are summed into the copy's first features. Several conditions therefore run in one pass.

As the released model does, the mixing layer attends across the batch's first dimension (torch's
MultiheadAttention reads (sequence, batch, width) and is given (batch, tokens, width)): the samples of one batch
see each other there. It is reproduced, not corrected, since the weights were trained that way.
"""

import torch
from torch import nn

from cldm.cldm import ControlNet
from ldm.attention import zero_module
from ldm.sdxl import ID_FEATURES, id_features
from ldm.unet import timestep_embedding

# The control types in the order of the released one-hot (ProMax adds the last two).
UNION_TYPES = ("pose", "depth", "thick_lines", "thin_lines", "normal", "segmentation", "tile", "repaint")
AUTO = "auto"  # the type of the map's annotator (union_type_of)
# an annotator (or app) -> the type of its maps
ANNOTATOR_TYPES = {
    **dict.fromkeys(("openpose", "openpose_mediapipe", "pose"), "pose"),
    **dict.fromkeys(("depth", "depth_leres", "depth_zoe"), "depth"),
    **dict.fromkeys(("hed", "softedge", "scribble", "fake_scribble", "scribble_from_photo", "scribble_interactive"),
                    "thick_lines"),
    **dict.fromkeys(("canny", "mlsd", "hough", "lineart", "lineart_anime", "invert"), "thin_lines"),
    **dict.fromkeys(("normal", "normalbae"), "normal"),
    "seg": "segmentation", "tile": "tile", "inpaint": "repaint",
}


def union_type_of(control_type, annotator=None):
    """A unit's control type as a Union net reads it: the one given, or for "auto" its annotator's (None when
    the annotator makes no kind of map a Union net knows)."""
    if control_type != AUTO:
        return control_type
    return ANNOTATOR_TYPES.get(annotator)


def typed(unit, net, annotator):
    """A control unit with its control type said where it runs a ControlNet-Union (`net`) and says "auto": the
    kind of map its annotator makes (the app's, for an app's own control). Other units are left as they are."""
    kind = union_type_of(unit.control_type, annotator)
    if isinstance(net, UnionControlNet) and unit.control_type == AUTO and kind is not None:
        return unit.with_values(control_type=kind)
    return unit


def split_scale(text):
    """A CLI scale "0.6", or "TYPE:0.6" for a ControlNet-Union's map -> (control type, scale text)."""
    kind, _, scale = text.rpartition(":")
    return kind or AUTO, scale


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = nn.Linear(width, width * 4), QuickGELU(), nn.Linear(width * 4, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class TypeMixer(nn.Module):
    """One pre-norm transformer layer over the condition tokens (see the module's note on its first dimension)."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.mlp, self.ln_2 = nn.LayerNorm(width), Mlp(width), nn.LayerNorm(width)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TypeEmbedding(nn.Module):
    """The control types' one-hot features -> the timestep embedding's width (diffusers' TimestepEmbedding)."""

    def __init__(self, in_features, width):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class UnionControlNet(ControlNet):
    """A ControlNet that takes several typed conditions at once: `hint` and `hint_features` are lists (one per
    condition), `types` the index of each in UNION_TYPES, and `scales` (None for one condition) each one's
    strength, which then weighs its features rather than the residuals, as the released pipelines do."""

    def __init__(self, hint_channels, num_control_types=6, mixer_layers=1, mixer_heads=8, type_features=ID_FEATURES,
                 **params):
        super().__init__(hint_channels, **params)
        width, emb_width = self.model_channels, self.model_channels * 4
        self.num_control_types, self.type_features = num_control_types, type_features
        # a fresh net as the released one was initialised: the types' embeddings at the features' scale, and
        # the projection of the mixed tokens at zero, so that (with the zero convolutions) it starts at the base
        self.task_embedding = nn.Parameter(width**0.5 * torch.randn(num_control_types, width))
        self.transformer_layes = nn.ModuleList(TypeMixer(width, mixer_heads) for _ in range(mixer_layers))
        self.spatial_ch_projs = zero_module(nn.Linear(width, width))
        self.control_add_embedding = TypeEmbedding(type_features * num_control_types, emb_width)
        if self.config.use_fp16:
            self.half()

    @property
    def type_names(self):
        return UNION_TYPES[:self.num_control_types]

    def type_index(self, control_type, where="this control"):
        """The index of a type name, or a message naming the types this net knows."""
        if control_type not in self.type_names:
            said = "no control type" if control_type in (None, AUTO) else f"control type {control_type!r}"
            raise ValueError(f"{where} runs a ControlNet-Union, which was given {said}: say which kind of map it "
                             f"is (control_type one of {', '.join(self.type_names)})")
        return self.type_names.index(control_type)

    def encode_hint(self, hint):
        return [super(UnionControlNet, self).encode_hint(h) for h in hint]

    def embedding(self, timesteps, cond, dtype, types=(), scales=None):
        # the released order of the sums: timesteps, control types, then the label embedding
        one_hot = torch.zeros(len(timesteps), self.num_control_types, device=timesteps.device)
        one_hot[:, list(types)] = 1
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        emb = emb + self.control_add_embedding(id_features(one_hot, self.type_features).to(dtype))
        return emb if self.label_emb is None else emb + self.label_emb(cond.vector.to(dtype))

    def conditioned(self, h, hint_features, types=(), scales=None):
        if len(types) != len(hint_features):
            raise ValueError(f"got {len(hint_features)} conditions and {len(types)} control types")
        scaled = scales is not None  # in the released order of operations, so that the sums round alike
        tokens = [f.mean(dim=(2, 3)) + self.task_embedding[t].to(h.dtype) for f, t in zip(hint_features, types)]
        tokens = [x * s for x, s in zip(tokens, scales)] if scaled else tokens
        features = [f.to(h.dtype) * s for f, s in zip(hint_features, scales)] if scaled else hint_features
        x = torch.stack([*tokens, h.mean(dim=(2, 3))], dim=1)
        for layer in self.transformer_layes:
            x = layer(x)
        fused = torch.zeros_like(h)
        for i, f in enumerate(features):
            shift = self.spatial_ch_projs(x[:, i])[:, :, None, None]
            fused = fused + (f + (shift * scales[i] if scaled else shift))
        return h + fused
