"""IP-Adapter (Ye et al. 2023): a picture as a prompt. A CLIP vision encoder reads the picture; a projection turns
what it sees into a few tokens of the text's width; each cross-attention of the UNet attends to those tokens
through keys and values of its own (`to_k_ip`, `to_v_ip`), separately from the text, and adds the result,
weighed by the scale, before its output projection. The tokens depend on the picture alone: computed once a
generation, and their keys and values with them.

Kinds, told by the projection's keys (the released files' own layout, `image_proj.*` and `ip_adapter.K.*`):
- plain (`proj`, `norm`; ip-adapter_sd15, ip-adapter_sdxl, *_vit-h): the encoder's projected image embedding,
  made into 4 tokens by one linear layer;
- plus (`latents`, `proj_in`, `layers`, ...; ip-adapter-plus*): the encoder's penultimate hidden states, read by a
  perceiver resampler's learned queries;
- full (`proj.0`, `proj.2`, `proj.3`; ip-adapter-full-face): every hidden state of the penultimate layer, through
  an MLP.
On guidance's unconditional half the tokens are those of a blank picture: zeros for the plain kind's embedding,
the encoder's reading of an all-zero (normalised) picture for the others, as diffusers' pipelines do.

`ip_adapter.K` (K = 1, 3, 5, ...) belongs to the UNet's cross-attentions in diffusers' order of attention
processors: the encoder's, then the decoder's, then the middle block's, each attention's cross-attention being
the odd one after its self-attention.

The CLIP vision encoder is the one the adapter was trained with (ViT-H/14 or ViT-bigG/14 as transformers'
CLIPVisionModelWithProjection, a folder with config.json): `image_encoder/` beside the adapter file (the
h94/IP-Adapter layout), else models/image_encoder/; its width must be the adapter's.
"""

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldm.attention import SpatialTransformer
from ldm.checkpoint import CheckpointError, read_state_dict, shape_of
from ldm.files import MODELS
from ldm.precision import weights_dtype

ENCODER_FOLDER = "image_encoder"
DIM_HEAD = 64  # the resampler's attention heads are 64 wide, as the released files have them


class PerceiverAttention(nn.Module):
    """The resampler's attention: its queries (the latents) read the picture's features and themselves."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * DIM_HEAD, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * DIM_HEAD, bias=False)
        self.to_out = nn.Linear(heads * DIM_HEAD, dim, bias=False)

    def forward(self, features, latents):
        features, latents = self.norm1(features), self.norm2(latents)
        split = lambda t: t.unflatten(-1, (self.heads, DIM_HEAD)).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(latents))
        k, v = (split(t) for t in self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """The plus kind's projection: learned queries refined by attention to the picture's hidden states."""

    def __init__(self, embed_dim, hidden_dim, output_dim, depth, heads, queries, ff_mult=4):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, queries, hidden_dim))
        self.proj_in = nn.Linear(embed_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        feed_forward = lambda: nn.Sequential(  # noqa: E731
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim * ff_mult, bias=False), nn.GELU(),
            nn.Linear(hidden_dim * ff_mult, hidden_dim, bias=False))
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(hidden_dim, heads), feed_forward()])
                                    for _ in range(depth))

    def forward(self, features):
        latents = self.latents.repeat(features.shape[0], 1, 1)
        features = self.proj_in(features)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class LinearProjection(nn.Module):
    """The plain kind's projection: the image embedding -> `tokens` tokens of the text's width."""

    def __init__(self, embed_dim, width, tokens):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(embed_dim, width * tokens)
        self.norm = nn.LayerNorm(width)

    def forward(self, embeds):
        return self.norm(self.proj(embeds).reshape(embeds.shape[0], self.tokens, -1))


class MLPProjection(nn.Module):
    """The full kind's projection: each hidden state through an MLP, then normalised."""

    def __init__(self, embed_dim, width):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, width),
                                  nn.LayerNorm(width))

    def forward(self, features):
        return self.proj(features)


class KeyValue(nn.Module):
    def __init__(self, width, inner):
        super().__init__()
        self.to_k_ip = nn.Linear(width, inner, bias=False)
        self.to_v_ip = nn.Linear(width, inner, bias=False)


class IPAdapter(nn.Module):
    """An IP-Adapter's weights (`image_proj`, `ip_adapter`) and the vision encoder that reads its pictures."""

    adds_inside = False

    def __init__(self, kind, image_proj, inner_widths, width):
        super().__init__()
        self.kind, self.image_proj = kind, image_proj
        self.ip_adapter = nn.ModuleDict({str(2 * i + 1): KeyValue(width, inner)
                                         for i, inner in enumerate(inner_widths)})
        self.encoder = self.processor = None  # set by load_ip_adapter (not part of the adapter's weights)

    @property
    def dtype(self):
        return weights_dtype(self.image_proj)

    @property
    def hidden_states(self):
        """Whether it reads the encoder's penultimate hidden states (else its projected image embedding)."""
        return self.kind != "plain"

    @torch.no_grad()
    def tokens(self, picture):
        """(tokens of `picture` (HWC uint8), tokens of a blank picture): (1, T, width) each."""
        pixels = self.processor(picture, return_tensors="pt").pixel_values
        pixels = pixels.to(device=next(self.encoder.parameters()).device, dtype=weights_dtype(self.encoder))
        if self.hidden_states:
            read = lambda p: self.encoder(p, output_hidden_states=True).hidden_states[-2]  # noqa: E731
            seen, blank = read(pixels), read(torch.zeros_like(pixels))
        else:
            seen = self.encoder(pixels).image_embeds
            blank = torch.zeros_like(seen)
        return self.image_proj(seen.to(self.dtype)), self.image_proj(blank.to(self.dtype))


def cross_attentions(unet):
    """The UNet's cross-attentions in diffusers' order of attention processors (encoder, decoder, middle), each
    with the SpatialTransformer it belongs to."""
    order = [*unet.input_blocks, *unet.output_blocks, unet.middle_block]
    return [(block.attn2, transformer) for module in order for transformer in module.modules()
            if isinstance(transformer, SpatialTransformer) for block in transformer.transformer_blocks]


def spatial_transformers(unet):
    """The UNet's SpatialTransformers, encoder first, then the middle block, then the decoder: one block weight
    each for an IP-Adapter unit."""
    order = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    return [m for module in order for m in module.modules() if isinstance(m, SpatialTransformer)]


# -- files ---------------------------------------------------------------------------------------------------

def is_ip_adapter(state):
    return any(k.startswith("image_proj.") for k in state) and any(k.startswith("ip_adapter.") for k in state)


def read_ip_adapter(source, state=None):
    """The adapter's weights (not yet with its encoder) from a .bin/.safetensors file or its state dict."""
    state = read_state_dict(source) if state is None else state
    if not is_ip_adapter(state):
        raise CheckpointError(f"{source} holds no IP-Adapter weights (image_proj.* and ip_adapter.* keys)")
    proj = {k[len("image_proj."):]: state[k] for k in state if k.startswith("image_proj.")}
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("ip_adapter.")})
    if layers != list(range(1, 2 * len(layers) + 1, 2)):
        raise CheckpointError(f"{source}: its ip_adapter layers are numbered {layers[:4]}...; the released files "
                              "number them 1, 3, 5, ...")
    width = shape_of(state, "ip_adapter.1.to_k_ip.weight")[1]
    inner = [shape_of(state, f"ip_adapter.{k}.to_k_ip.weight")[0] for k in layers]
    if "latents" in proj:
        hidden = shape_of(proj, "latents")[2]
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        projection = Resampler(shape_of(proj, "proj_in.weight")[1], hidden, shape_of(proj, "proj_out.weight")[0],
                               depth, shape_of(proj, "layers.0.0.to_q.weight")[0] // DIM_HEAD,
                               shape_of(proj, "latents")[1],
                               shape_of(proj, "layers.0.1.1.weight")[0] // hidden)
        kind = "plus"
    elif "proj.3.weight" in proj:
        projection, kind = MLPProjection(shape_of(proj, "proj.0.weight")[1], shape_of(proj, "proj.3.weight")[0]), "full"
    elif "proj.weight" in proj:
        out, embed = shape_of(proj, "proj.weight")
        projection = LinearProjection(embed, width, out // width)
        kind = "plain"
    else:
        raise CheckpointError(f"{source}: its image projection ({sorted(proj)[:3]}...) is none of the plain, plus "
                              "and full IP-Adapters' (FaceID adapters are not supported)")
    adapter = IPAdapter(kind, projection, inner, width)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit an IP-Adapter of its kind ({kind}): missing "
                              f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")
    return adapter.eval()


def encoder_width(adapter):
    """The width of what the adapter reads from its encoder: the projected embedding, or the hidden states."""
    proj = adapter.image_proj
    if isinstance(proj, LinearProjection):
        return proj.proj.in_features
    return proj.proj_in.in_features if isinstance(proj, Resampler) else proj.proj[0].in_features


def find_encoder(source, adapter):
    """The CLIP vision encoder folder for `adapter` from `source`: image_encoder/ beside it, else in models/,
    the first whose width fits."""
    from transformers import CLIPVisionConfig

    width, seen = encoder_width(adapter), []
    candidates = [Path(source).parent / ENCODER_FOLDER, MODELS / ENCODER_FOLDER]
    what = "hidden states" if adapter.hidden_states else "image embeddings"
    for folder in candidates:
        if not (folder / "config.json").is_file():
            continue
        config = CLIPVisionConfig.from_pretrained(folder)
        found = config.hidden_size if adapter.hidden_states else config.projection_dim
        if found == width:
            return folder
        seen.append(f"{folder} ({found})")
    raise CheckpointError(
        f"{source} needs the CLIP vision encoder it was trained with ({width}-wide {what}: ViT-H/14 gives 1024 "
        f"embeddings and 1280 hidden states, ViT-bigG/14 1280 and 1664): put its folder (config.json and weights, "
        f"h94/IP-Adapter's models/image_encoder or sdxl_models/image_encoder) in {candidates[0]} or "
        f"{candidates[1]}" + (f"; found only {', '.join(seen)}" if seen else ""))


def load_vision_encoder(folder, dtype):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True).eval().to(dtype)
    size = encoder.config.image_size  # as diffusers' pipelines make their processor for an adapter's encoder
    processor = (CLIPImageProcessor.from_pretrained(folder) if (Path(folder) / "preprocessor_config.json").is_file()
                 else CLIPImageProcessor(size=size, crop_size=size))
    return encoder, processor


def load_ip_adapter(unet, source, state=None, dtype=None):
    """An IP-Adapter for `unet` from its file (or `state`), with its vision encoder, in `dtype` (default: the
    UNet's); a CheckpointError says when it does not fit the UNet or its encoder is not found."""
    adapter = read_ip_adapter(source, state)
    layers = cross_attentions(unet)
    kv = list(adapter.ip_adapter.values())
    if len(kv) != len(layers) or any(
            m.to_k_ip.in_features != attn.to_k.in_features or m.to_k_ip.out_features != attn.to_k.out_features
            for m, (attn, _) in zip(kv, layers)):
        raise CheckpointError(f"{source} is an IP-Adapter for another base: it has {len(kv)} cross-attention "
                              f"layers of width {kv[0].to_k_ip.in_features}; the model's UNet has {len(layers)} of "
                              f"width {layers[0][0].to_k.in_features}")
    dtype = dtype or weights_dtype(unet)
    adapter.encoder, adapter.processor = load_vision_encoder(find_encoder(source, adapter), dtype)
    return adapter.to(dtype)


class ImagePrompts:
    """The IP-Adapter units of one generation over `unet`: each one's tokens, and their keys and values at every
    cross-attention, computed once for the batch ([unconditional; conditional] halves when `guided`, `images`
    each); at each step each unit adds its attention to the tokens, weighed by its strength, its block weights,
    `row_scales` (its multiplier of each row, or None) and `regions` (its region mask, (1, 1, H, W) at the
    generation's size, or None)."""

    def __init__(self, unet, controls, images, guided, row_scales, regions):
        self.layers = cross_attentions(unet)
        transformers = spatial_transformers(unet)
        self.controls, self.row_scales, self.scales = controls, row_scales, [0.0] * len(controls)
        self.regions, self.region_tokens = regions, {}  # (1, 1, H, W) or None; at each layer's tokens, cached
        self.keys_values, self.layer_weights = [], []
        for k, control in enumerate(controls, start=1):
            seen, blank = control.net.tokens(control.hint)
            tokens = torch.cat([blank] * images * guided + [seen] * images)
            self.keys_values.append([(kv.to_k_ip(tokens), kv.to_v_ip(tokens))
                                     for kv in control.net.ip_adapter.values()])
            try:
                weights = dict(zip(transformers, block_weights(control.block_weights, len(transformers))))
            except ValueError as error:
                raise ValueError(f"control {k}: {error}") from None
            self.layer_weights.append([weights[transformer] for _, transformer in self.layers])

    def set_step(self, progress):
        """The units' strengths at this step (0 where a unit does not act)."""
        self.scales = [c.strength_at(progress) if c.active(progress) else 0.0 for c in self.controls]

    @contextmanager
    def hooked(self):
        """The units' attention added to the UNet's cross-attentions within the block."""
        added = [(attn, self.addition(i)) for i, (attn, _) in enumerate(self.layers)]
        for attn, add in added:
            attn.added_attention.append(add)
        try:
            yield self
        finally:
            for attn, add in added:
                attn.added_attention.remove(add)

    def addition(self, layer):
        """What cross-attention `layer` adds for the queries q (B, heads, N, dim): each unit's attention to its
        tokens, weighed (None when no unit acts there)."""
        def add(q):
            total = None
            for k, scale in enumerate(self.scales):
                weight = scale * self.layer_weights[k][layer]
                if weight == 0:
                    continue
                key, value = (t.unflatten(-1, (q.shape[1], -1)).transpose(1, 2).to(q.dtype)
                              for t in self.keys_values[k][layer])
                out = F.scaled_dot_product_attention(q, key, value)
                rows = self.row_scales[k]
                term = weight * out if rows is None else (weight * rows.to(out.dtype)) * out
                if self.regions[k] is not None:
                    term = term * self.region_at(k, q.shape[2]).to(term.dtype)
                total = term if total is None else total + term
            return total

        return add

    def region_at(self, k, tokens):
        """Unit k's region mask at a layer of `tokens` image tokens (its grid: the picture's, downsampled by a
        power of two), as (1, 1, tokens, 1)."""
        if (k, tokens) not in self.region_tokens:
            from cldm.cldm import region_at

            region = self.regions[k]
            height, width = region.shape[2:]
            factor = round((height * width / tokens) ** 0.5)
            grid = (height // factor, width // factor)
            if grid[0] * grid[1] != tokens:
                raise ValueError(f"a region mask of {width}x{height} does not match a layer of {tokens} image tokens: "
                                 "give the mask the generation's shape")
            self.region_tokens[k, tokens] = region_at(region, grid, torch.float32).flatten(2)[..., None]
        return self.region_tokens[k, tokens]


def block_weights(value, n):
    """An IP-Adapter unit's weight of each SpatialTransformer (encoder, middle, decoder): uniform, or n numbers."""
    from cldm.cldm import parse_block_weights

    if value in ("uniform", None):
        return [1.0] * n
    if value in ("soft", "only_mid"):
        raise ValueError(f"block weights {value!r} are a ControlNet's; an IP-Adapter takes uniform or one number per "
                         f"attention block ({n} here: the encoder's, the middle one, then the decoder's)")
    weights = parse_block_weights(value, None)
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} block weights; this model's UNet has {n} attention blocks for an "
                         "IP-Adapter (the encoder's, the middle one, then the decoder's)")
    return weights

