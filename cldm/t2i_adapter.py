"""T2I-Adapter (Mou et al. 2023): a small net that turns a condition map into one feature map per UNet level. The
features depend on the map alone, so they are computed once a generation; at each step they are added to the
locked UNet's encoder (ldm.unet.Residuals.inner), weighed like a ControlNet's residuals.

Three layouts, all starting by unshuffling pixels into channels:
- "full" (SD 1.x, 77M weights): unshuffled by 8, a 3x3 conv in, then a level per feature: halved (average pooled)
  from the second on, a 1x1 conv to the level's width where it changes, `num_res_blocks` residual blocks (3x3
  conv, ReLU, 1x1 conv).
- "light" (SD 1.x, the color adapter): unshuffled by 8, each level (halved from the second on) a 1x1 conv down to a
  quarter of its width, residual blocks of two 3x3 convs, a 1x1 conv back out.
- "full_xl" (SDXL, 79M): unshuffled by 16, four levels of the full kind, the third alone halved (features at 1/2
  and 1/4 of the latent's size, SDXL's second and third levels).

Where the features go follows diffusers' UNet: at a level with attention, after its last block (before it is
downsampled); at a level without, after the whole level, its downsampling included; a feature left over after
the levels is added to the middle block's output (SDXL's fourth).

Files: TencentARC's (`conv_in`, flat `body.K.*` with K counting residual blocks, or the light `body.L.body.J.*`;
.pth read with weights_only, or .safetensors) and diffusers' (`adapter.*`, a folder with its config.json or one
file). The module's own keys are diffusers' without the `adapter.` prefix.
"""

import json
import re
from pathlib import Path

import torch
from torch import nn

from ldm.checkpoint import CheckpointError, read_lazily, shape_of
from ldm.precision import weights_dtype

KINDS = ("full", "light", "full_xl")
UNSHUFFLE = {"full": 8, "light": 8, "full_xl": 16}
DIFFUSERS_PREFIX = "adapter."
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class AdapterResBlock(nn.Module):
    def __init__(self, channels, kernel):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x):
        return x + self.block2(self.act(self.block1(x)))


class AdapterLevel(nn.Module):
    """One level: halved (or not), brought to its width, refined by residual blocks (the light kind works at a
    quarter of its width, between a 1x1 conv in and one out)."""

    def __init__(self, c_in, c_out, blocks, down, light=False, kernel=1):
        super().__init__()
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True) if down else None
        width = c_out // 4 if light else c_out
        self.in_conv = nn.Conv2d(c_in, width, 1) if light or c_in != c_out else None
        self.resnets = nn.Sequential(*(AdapterResBlock(width, 3 if light else kernel) for _ in range(blocks)))
        self.out_conv = nn.Conv2d(width, c_out, 1) if light else None

    def forward(self, x):
        for layer in (self.downsample, self.in_conv, self.resnets, self.out_conv):
            x = x if layer is None else layer(x)
        return x


class T2IAdapter(nn.Module):
    """Condition map (B, in_channels, H, W) in [0, 1] -> one feature map per level; as a control, those features
    weighed and placed where the UNet takes them (`place`)."""

    adds_inside = True  # its outputs are Residuals.inner: added inside the UNet's encoder

    def __init__(self, kind="full", in_channels=3, channels=(320, 640, 1280, 1280), num_res_blocks=2, kernel=1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"T2I-Adapter kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "full_xl" and len(channels) != 4:
            raise ValueError(f"an SDXL T2I-Adapter has 4 levels, not {len(channels)}")
        self.kind, self.in_channels, self.channels = kind, in_channels, list(channels)
        factor = UNSHUFFLE[kind]
        self.unshuffle = nn.PixelUnshuffle(factor)
        width = in_channels * factor**2
        self.conv_in = None if kind == "light" else nn.Conv2d(width, channels[0], 3, padding=1)
        width = width if kind == "light" else channels[0]
        downs = [False, False, True, False] if kind == "full_xl" else [False] + [True] * (len(channels) - 1)
        levels, scale, self.scales = [], factor // 8, []  # scales: each feature's size as a part of the latent's
        for c_out, down in zip(channels, downs):
            levels.append(AdapterLevel(width, c_out, num_res_blocks, down, kind == "light", kernel))
            width, scale = c_out, scale * 2 if down else scale
            self.scales.append(scale)
        self.body = nn.ModuleList(levels)
        self.num_outputs = len(levels)
        self.positions = None  # where each feature goes in the UNet it controls: set by `for_unet`

    @property
    def dtype(self):
        return weights_dtype(self.body)

    def for_unet(self, unet):
        """Ready to control `unet` (ldm.unet.UNetModel): each feature's place there (unet_places), which must
        have its width and size; a CheckpointError says when they do not fit."""
        places = unet_places(unet.config)[:self.num_outputs]
        ours = [(c, s) for c, s in zip(self.channels, self.scales)]
        if ours != [(c, s) for _, c, s in places]:
            describe = lambda pairs: ", ".join(f"{c} at 1/{s}" for c, s in pairs)  # noqa: E731
            raise CheckpointError(f"this T2I-Adapter's features ({describe(ours)} of the latent's size) do not fit "
                                  f"the model's UNet, which takes {describe([(c, s) for _, c, s in places])}: use "
                                  "an adapter made for this base (SD 1.x or SDXL)")
        self.positions, self.inputs = [i for i, _, _ in places], len(unet.input_blocks) + 1
        return self

    def encode_hint(self, hint):
        """The condition map's features, one per level (a one-channel adapter reads a grey map's channel, or the mean
        of a colour map's)."""
        hint = hint.to(self.dtype)
        if self.in_channels == 1 and hint.shape[1] != 1:  # a grey map's one channel as it is, else their mean
            same = (hint == hint[:, :1]).all()
            hint = hint[:, :1] if same else hint.mean(dim=1, keepdim=True)
        if hint.shape[1] != self.in_channels:
            raise ValueError(f"this T2I-Adapter reads maps of {self.in_channels} channels, not {hint.shape[1]}")
        factor = 8 * self.scales[-1]
        if hint.shape[2] % factor or hint.shape[3] % factor:
            raise ValueError(f"a T2I-Adapter's map needs sides that are multiples of {factor}, not "
                             f"{hint.shape[3]}x{hint.shape[2]}")
        x = self.unshuffle(hint)
        x = x if self.conv_in is None else self.conv_in(x)
        features = []
        for level in self.body:
            x = level(x)
            features.append(x)
        return features

    def forward(self, x, hint, timesteps, context, hint_features=None, weights=None, region=None):
        """The weighed features where the UNet's encoder takes them (Residuals.inner): one entry per input block,
        then the middle block's, None elsewhere. The arguments are a ControlNet's: `x`, `timesteps` and
        `context` are not read (the features depend on the map alone)."""
        if self.positions is None:
            raise RuntimeError("this T2I-Adapter has not been placed on a UNet: call for_unet(unet) first")
        features = self.encode_hint(hint) if hint_features is None else hint_features
        if weights is not None:
            if len(weights) != self.num_outputs:
                raise ValueError(f"got {len(weights)} control scales; this T2I-Adapter has {self.num_outputs} "
                                 "features")
            features = [f * w for f, w in zip(features, weights)]
        if region is not None:
            from cldm.cldm import region_at  # the ControlNet's way of limiting a control to a region

            features = [f * region_at(region, f.shape[2:], f.dtype) for f in features]
        inner = [None] * self.inputs
        for position, feature in zip(self.positions, features):
            inner[position] = feature
        return inner


def unet_places(cfg):
    """[(index in Residuals.inner, channels, the latent's downsampling there)] where a UNet of config `cfg`
    (ldm.unet.UNetConfig) takes T2I-Adapter features: per level, after its last block if it has attention, else
    after the whole level (its downsampling included); then after the middle block."""
    index, ds, places = 0, 1, []  # index: of the input block last passed (0: the input convolution)
    for level, mult in enumerate(cfg.channel_mult):
        width, blocks = mult * cfg.model_channels, cfg.num_res_blocks[level]
        index += blocks
        last = level == len(cfg.channel_mult) - 1
        attention = any(cfg.has_attention(ds, level, nr) for nr in range(blocks))
        places.append((index, width, ds) if attention or last else (index + 1, width, ds * 2))
        if not last:
            index, ds = index + 1, ds * 2
    return [*places, (index + 1, width, ds)]


# -- files ---------------------------------------------------------------------------------------------------

def is_t2i_adapter(state):
    """Whether a state dict's keys (any of the layouts above) are a T2I-Adapter's."""
    keys = [k[len(DIFFUSERS_PREFIX):] if k.startswith(DIFFUSERS_PREFIX) else k for k in state]
    return bool(keys) and all(k.startswith(("conv_in.", "body.")) for k in keys) and any(
        re.match(r"body\.\d+\.(resnets\.\d+\.|body\.\d+\.)?block1\.weight$", k) for k in keys)


def module_keys(state):
    """The adapter's own key of each key of a file in any layout: {own key: file key}."""
    keys = {k[len(DIFFUSERS_PREFIX):] if k.startswith(DIFFUSERS_PREFIX) else k: k for k in state}
    if any(re.match(r"body\.\d+\.resnets\.", k) for k in keys):  # diffusers' names: ours
        return keys
    if any(re.match(r"body\.\d+\.body\.", k) for k in keys):  # TencentARC's light adapter: body.L.body.J
        return {re.sub(r"^body\.(\d+)\.body\.", r"body.\1.resnets.", k): v for k, v in keys.items()}
    if any(".skep." in k or ".down_opt." in k for k in keys):
        raise CheckpointError("this T2I-Adapter has skip convolutions or strided-conv downsampling (TencentARC's "
                              "sk=False or use_conv=True): only the released adapters' layout is supported")
    blocks = sorted({int(m[1]) for k in keys if (m := re.match(r"body\.(\d+)\.", k))})
    per_level = flat_blocks_per_level(keys, blocks)
    renamed = {}
    for key, source in keys.items():
        match = re.match(r"body\.(\d+)\.(in_conv|block1|block2)\.(.*)", key)
        if not match:
            renamed[key] = source
            continue
        block, part, rest = int(match[1]), match[2], match[3]
        level, j = divmod(block, per_level)
        renamed[f"body.{level}.{part if part == 'in_conv' else f'resnets.{j}.{part}'}.{rest}"] = source
    return renamed


def flat_blocks_per_level(keys, blocks):
    """Residual blocks a level in TencentARC's flat full layout: the first that changes the width (has an in_conv)
    begins the second level; with none, the released adapters' 2."""
    return next((b for b in blocks if f"body.{b}.in_conv.weight" in keys), 2)


def adapter_params(state, where="the T2I-Adapter"):
    """T2IAdapter's arguments, read from the shapes of a state dict in its own keys."""
    levels = sorted({int(m[1]) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
    blocks = len({k.split(".")[3] for k in state if k.startswith("body.0.resnets.")})
    if "conv_in.weight" not in state:  # the light kind
        unshuffled = shape_of(state, "body.0.in_conv.weight")[1]
        return dict(kind="light", in_channels=unshuffled // 64, num_res_blocks=blocks,
                    channels=[shape_of(state, f"body.{i}.out_conv.weight")[0] for i in levels])
    unshuffled = shape_of(state, "conv_in.weight")[1]
    kind = "full_xl" if unshuffled in (256, 768) else "full"  # 1 or 3 channels unshuffled by 16, as ComfyUI tells
    if unshuffled % UNSHUFFLE[kind] ** 2:
        raise CheckpointError(f"{where}: its input convolution reads {unshuffled} channels, which is no map "
                              "unshuffled by 8 or 16")
    return dict(kind=kind, in_channels=unshuffled // UNSHUFFLE[kind] ** 2, num_res_blocks=blocks,
                channels=[shape_of(state, f"body.{i}.resnets.0.block1.weight")[0] for i in levels],
                kernel=shape_of(state, "body.0.resnets.0.block2.weight")[2])


def diffusers_adapter_folder(path):
    """Whether `path` is a diffusers T2I-Adapter's folder (its config names the class)."""
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "T2IAdapter"


def read_t2i_adapter(source, state=None):
    """A T2I-Adapter (not yet placed on a UNet) from a file, a diffusers folder, or `state`, the file's tensors
    already read."""
    path, config = Path(source), None
    if state is None and path.is_dir():
        weights = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if not diffusers_adapter_folder(path) or weights is None:
            raise CheckpointError(f"{path} is no diffusers T2I-Adapter folder (config.json naming T2IAdapter, and "
                                  f"{' or '.join(DIFFUSERS_WEIGHTS)})")
        config = json.loads((path / "config.json").read_text())
        path = weights
    state = read_lazily(path) if state is None else state
    if not is_t2i_adapter(state):
        raise CheckpointError(f"{source} holds no T2I-Adapter weights")
    state = {own: state[key] for own, key in module_keys(state).items()}
    params = adapter_params(state, str(source)) if config is None else config_params(config, source)
    adapter = T2IAdapter(**params)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit a T2I-Adapter of its kind ({params['kind']}): missing "
                              f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")
    return adapter.eval()


def config_params(config, where):
    """T2IAdapter's arguments from a diffusers folder's config.json (whose light kind lists one width fewer: its
    last level repeats the last width)."""
    kind = {"full_adapter": "full", "full_adapter_xl": "full_xl", "light_adapter": "light"}.get(
        config.get("adapter_type", "full_adapter"))
    if kind is None:
        raise CheckpointError(f"{where}: adapter_type {config.get('adapter_type')!r} is not one of full_adapter, "
                              "full_adapter_xl, light_adapter")
    channels = list(config.get("channels", [320, 640, 1280, 1280]))
    return dict(kind=kind, in_channels=config.get("in_channels", 3), num_res_blocks=config.get("num_res_blocks", 2),
                channels=channels + [channels[-1]] if kind == "light" else channels)


@torch.no_grad()
def load_t2i_adapter(unet, source, state=None, dtype=None):
    """A T2I-Adapter from a file, a diffusers folder or `state` (read_t2i_adapter), ready to control `unet`, in
    `dtype` (default: the UNet's)."""
    return read_t2i_adapter(source, state).for_unet(unet).to(dtype or weights_dtype(unet))
