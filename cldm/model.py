"""Build a model from a release yaml and load checkpoints into it.

`create_model(config_path)` and `load_state_dict(ckpt_path, location)` keep the release's meaning, so
`model.load_state_dict(load_state_dict(path), strict=False)` works as it always did. `load_checkpoint`
is the careful way: it accepts every layout users have (full SD, full ControlLDM, control-only, diffusers
ControlNet folders), ignores EMA copies, and explains a mismatch instead of loading half a model.
`load_model` is the one way the apps, the CLI and training get a model: config, checkpoints, precision.
"""

import copy
import json
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from cldm.cldm import CONTROL_PREFIX, ControlDiffusionEngine, ControlLDM, ControlledUnetModel
from cldm.control_files import CONTROL_TARGETS, control_net_class, control_params, control_state, control_target
from cldm.control_lora import MARK as CONTROL_LORA_MARK
from cldm.control_lora import is_control_lora, layout_view, merged_control
from cldm.ip_adapter import is_ip_adapter, load_ip_adapter
from cldm.settings import SettingError, check_fields, setting, short
from cldm.t2i_adapter import diffusers_adapter_folder, is_t2i_adapter, load_t2i_adapter
from ldm.checkpoint import (
    CheckpointError,
    check_finite_weights,
    cross_attention_width,
    family,
    read_lazily,
    read_state_dict,
    renamed,
    shape_of,
    summarize_keys,
)
from ldm.config import LDM_TARGETS, ConfigError, instantiate, load_yaml, weights_left_uninitialised
from ldm.diffusion import SCHEDULE_BUFFERS
from ldm.files import MODELS, is_diffusers_base
from ldm.precision import weights_dtype
from ldm.text_encoders import FrozenCLIPEmbedder

TARGETS = {
    **LDM_TARGETS,
    "cldm.cldm.ControlLDM": ControlLDM,
    "cldm.cldm.ControlDiffusionEngine": ControlDiffusionEngine,
    **CONTROL_TARGETS,
    "cldm.cldm.ControlledUnetModel": ControlledUnetModel,
}
# Key layouts renamed to the release's: older SD 1.x files name the CLIP text encoder without its `text_model.`
# level.
LEGACY_PREFIXES = {
    **{f"cond_stage_model.transformer.{part}.": f"cond_stage_model.transformer.text_model.{part}."
       for part in ("embeddings", "encoder", "final_layer_norm")},
    # an LCM-distilled UNet in one file: diffusers' converter keeps its guidance projection under diffusers' name
    "model.diffusion_model.time_embedding.cond_proj.": "model.diffusion_model.time_embed.cond_proj.",
}
GUIDANCE_PROJECTION_KEY = "model.diffusion_model.time_embed.cond_proj.weight"
# Keys a file may lack without harm: the schedule is recomputed from the yaml, position_ids are 0..76.
OPTIONAL_KEYS = set(SCHEDULE_BUFFERS) | {"logvar"}


@dataclass(frozen=True)
class ModelOptions:
    """How a model is built beyond its yaml, where a control was trained that way. They become the yaml's fields
    (never attributes set on a built model) and are saved with every image, so `--reproduce` builds the same.

    text_windows: prompt windows of 75 tokens the CLIP text encoder reads (the 1.1 anime line-art control: 3)
    clip_skip: the CLIP layer the prompt is read from, counted from the last (the same control: 2)
    pooled: the ControlNet's residuals pooled to one value per channel (1.1 shuffle), whatever the yaml says
    """

    text_windows: int = setting(1, "Text windows", range=(1, 8, 1))
    clip_skip: int = setting(1, "CLIP skip", range=(1, 12, 1))
    pooled: bool = setting(False, "Pooled")

    def __post_init__(self):
        check_fields(self, fields(self))

    def record(self):
        return asdict(self)

    @classmethod
    def from_record(cls, record):
        """Options from saved parameters (images saved before options were saved: the defaults)."""
        if record is not None and not isinstance(record, dict):
            raise SettingError(f"model_options must be a JSON object, not {short(record)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (record or {}).items() if k in names})

    def configure(self, config, where="the config"):
        """The yaml `config` (as read) with these options among its fields."""
        params = config["model"].setdefault("params", {})
        if (self.text_windows, self.clip_skip) != (1, 1):
            text = params.get("cond_stage_config") or {}
            if LDM_TARGETS.get(text.get("target")) is not FrozenCLIPEmbedder:
                raise ConfigError(f"text windows and clip skip need an SD 1.x model (CLIP text encoder); {where}'s "
                                  f"text encoder is {text.get('target')}")
            text.setdefault("params", {}).update(windows=self.text_windows, clip_skip=self.clip_skip)
        if self.pooled:
            params["global_average_pooling"] = True
        return config


# a base model's target -> the same model holding a ControlNet
CONTROLLED = {"ldm.models.diffusion.ddpm.LatentDiffusion": "cldm.cldm.ControlLDM",
              **{f"{package}.models.diffusion.DiffusionEngine": "cldm.cldm.ControlDiffusionEngine"
                 for package in ("sgm", "ldm")}}


def controlled(config, control_params):
    """A base model's config (a yaml's, as read) made to hold a ControlNet of `control_params` (the release's
    control_stage_config params) under `control_model.*`: how an SDXL base yaml takes a control."""
    config = copy.deepcopy(config)
    model = config["model"]
    if model["target"] not in CONTROLLED:
        raise ConfigError(f"a {model['target']} cannot hold a ControlNet; bases that can: {sorted(CONTROLLED)}")
    model["target"] = CONTROLLED[model["target"]]
    model["params"]["control_stage_config"] = {"target": control_target(control_params), "params": control_params}
    return config


def create_model(config_path, device=None, dtype=None):
    """The model a release yaml describes, as the release's training scripts use it: a ControlLDM that is also a
    LightningModule (cldm.lightning), for `trainer.fit(model)`. See build_model."""
    from cldm.lightning import ReleaseControlLDM  # Lightning is slow to import; only the release's scripts need it

    return build_model(config_path, device, dtype, {**TARGETS, "cldm.cldm.ControlLDM": ReleaseControlLDM})


def build_model(config_path, device=None, dtype=None, targets=TARGETS, options=ModelOptions(), initialise=True):
    """The model a release yaml describes, built with `options`, with freshly initialised weights (on `device`,
    e.g. "meta"), its networks in `dtype` (None: as the yaml says, fp32 unless `use_fp16: True`); see
    ldm.precision. `initialise=False` leaves the weights as allocated, for a checkpoint to fill them all."""
    given = isinstance(config_path, dict)  # a config as read (e.g. controlled()'s)
    config = copy.deepcopy(config_path) if given else load_yaml(config_path)
    config = options.configure(config, "the config" if given else config_path)
    with nullcontext() if initialise else weights_left_uninitialised():
        if device is None:
            model = instantiate(config["model"], targets).cpu()
        else:
            with torch.device(device):
                model = instantiate(config["model"], targets)
    return model if dtype is None else model.to(dtype)


def family_config(state):
    """The shipped yaml of the family a base checkpoint's keys show: SDXL (sgm's conditioner), SD 2.x (OpenCLIP's
    text encoder), else SD 1.x."""
    if any(k.startswith("conditioner.embedders.") for k in state):
        return MODELS / "sd_xl_base.yaml"
    if any(k.startswith("cond_stage_model.model.") for k in state):
        return MODELS / "cldm_v21.yaml"
    return MODELS / "cldm_v15.yaml"


def load_model(config, *checkpoints, dtype=None, device="cpu", strict=True, for_training=False,
               options=ModelOptions()):
    """The model of `config` (None: the family's shipped yaml, from the first checkpoint's keys) with
    `checkpoints` loaded in order (e.g. an SD base, then a control), in `dtype` on `device`: the one loader of
    the apps, the CLI and training. The model is built in `dtype` without drawing weights the checkpoints will
    replace, and their tensors are copied in one at a time (a .safetensors file's read as they are), so loading
    holds the model and one tensor: SDXL with a ControlNet loads in fp32 within its own size.
    In eval mode, unless `for_training` (the modes it was built with: frozen parts in eval, the rest in train).
    `options`: ModelOptions."""
    bases = [c for c in checkpoints if not isinstance(c, Mapping) and is_diffusers_base(c)]  # read once built
    sources = [("state dict", c) if isinstance(c, Mapping) else (str(c), read_any(c)) for c in checkpoints
               if c not in bases]
    if bases:  # diffusers is slow to import: only folders need it
        from cldm.diffusers_bases import base_config, base_state
    if config is None:
        config = base_config(bases[0]) if bases else family_config(sources[0][1] if sources else {})
    controls = [(where, control_state(normalize_keys(state))) for where, state in sources]
    controls = [(where, layout_view(control) if is_control_lora(control) else control)
                for where, control in controls if control]
    read = load_yaml(config) if not isinstance(config, dict) else config
    guided = with_guidance_embedding(read, [normalize_keys(state) for _, state in sources])
    if guided is not read:
        read = config = guided
    params = read["model"]["params"]
    if controls and "control_stage_config" not in params:  # a base's yaml: the control's layout from its file
        base = (params.get("unet_config") or params.get("network_config") or {}).get("params", {})
        config = controlled(read, control_params(base, controls[-1][1], controls[-1][0]))
    model = build_model(config, options=options, initialise=not (checkpoints and strict))
    if dtype is not None:
        model.to(dtype=dtype)  # before loading: the weights go straight into their final dtype
    if bases:
        sources = [(str(folder), base_state(folder, model, read)) for folder in bases] + sources
    sources = with_control_loras(sources)
    if checkpoints:
        load_checkpoint(model, *sources, strict=strict)
    if not for_training:
        model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


UNET_PREFIX = "model.diffusion_model."


def with_guidance_embedding(config, states):
    """`config` with its UNet taking an LCM-distilled UNet's guidance embedding when a checkpoint carries one
    (its projection's width; a diffusers folder's config says it, a single file only by this key)."""
    widths = [shape_of(state, GUIDANCE_PROJECTION_KEY)[1] for state in states if GUIDANCE_PROJECTION_KEY in state]
    params = config["model"]["params"]
    unet = (params.get("unet_config") or params.get("network_config") or {}).get("params")
    if not widths or unet is None or unet.get("time_cond_proj_dim") == widths[0]:
        return config
    config = copy.deepcopy(config)
    params = config["model"]["params"]
    (params.get("unet_config") or params.get("network_config"))["params"]["time_cond_proj_dim"] = int(widths[0])
    return config


def with_control_loras(sources):
    """(where, state) sources with each Control-LoRA made into the ControlNet weights it makes on the base UNet
    of the sources before it."""
    out = []
    for i, (where, state) in enumerate(sources):
        control = control_state(normalize_keys(read_any(state)))
        if is_control_lora(control):
            before = [normalize_keys(read_any(s)) for _, s in sources[:i]]
            unet = {k[len(UNET_PREFIX):]: s[k] for s in before for k in s if k.startswith(UNET_PREFIX)}
            if not unet:
                raise CheckpointError(f"{where} is a Control-LoRA, the difference from its base's UNet: give the "
                                      "base model before it")
            state = {CONTROL_PREFIX + k: v for k, v in merged_control(control, unet, where).items()}
        out.append((where, state))
    return out


def load_state_dict(ckpt_path, location="cpu"):
    """The tensors of a checkpoint file, as the release's helper returned them."""
    return read_state_dict(ckpt_path, location=location)


def read_any(source):
    """A state dict in the release layout from a file (a diffusers ControlNet's single file too), a diffusers
    ControlNet folder, or a dict."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if path.is_dir():
        from cldm.diffusers_interop import read_diffusers_controlnet  # slow to import; only folders need it

        state = read_diffusers_controlnet(path)
        return renamed(state, {CONTROL_PREFIX + k: k for k in state})
    state = read_lazily(path)  # a large file is read one tensor at a time, as it is loaded
    if any(k.startswith("controlnet_cond_embedding.") for k in state):  # a diffusers ControlNet's single file
        from cldm.diffusers_interop import config_from_keys, control_from_diffusers

        state = control_from_diffusers(state, config_from_keys(state), path)
        return renamed(state, {CONTROL_PREFIX + k: k for k in state})
    if ("time_embed.0.weight" in state and "input_hint_block.0.weight" in state) or CONTROL_LORA_MARK in state:
        state = renamed(state, {CONTROL_PREFIX + k: k for k in state})  # a control saved without its prefix
    return state


def normalize_keys(state):
    """Drop EMA copies and rename legacy key layouts to the release's (the tensors are not read)."""
    names = {}
    for key in state:
        if key.startswith(("model_ema.", "denoiser.")):  # EMA copies; sgm's denoiser holds only the schedule
            continue
        name = key
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                name = new + key[len(old):]
        names[name] = key
    return renamed(state, names)


def _check_shapes(model_state, state, where):
    wrong = [k for k in state if k in model_state and tuple(model_state[k].shape) != shape_of(state, k)]
    if not wrong:
        return
    for prefix, part in ((CONTROL_PREFIX, "control"), ("model.diffusion_model.", "base model")):
        found, expected = cross_attention_width(state, prefix), cross_attention_width(model_state, prefix)
        if found and expected and found != expected:
            raise CheckpointError(
                f"{where}: this {part} is for {family(found)} but the model's config is {family(expected)}; "
                "use the matching yaml (models/cldm_v15.yaml for SD 1.x, models/cldm_v21.yaml for SD 2.x) "
                "or the matching checkpoint")
    k = wrong[0]
    raise CheckpointError(f"{where}: {len(wrong)} tensors have other shapes than the model's "
                          f"(e.g. {k}: file {shape_of(state, k)}, model {tuple(model_state[k].shape)}) "
                          f"in {summarize_keys(wrong)}; the checkpoint does not match this config")


def load_checkpoint(model, *sources, strict=True):
    """Load one or more checkpoints (e.g. an SD base, then a control) into `model`, checking every key. A source
    is a file, a diffusers folder, a state dict, or (its name, a state dict already read).

    Returns the keys of the model that no source provided. With strict=True a missing or unexpected
    weight is an error naming the key groups; EMA copies (`model_ema.*`) are always ignored.
    """
    model_state = model.state_dict()
    merged = {}  # key -> (where, the state that gives it): the last source that has it
    for source in sources:
        where, source = source if isinstance(source, tuple) else (
            str(source) if not isinstance(source, Mapping) else "state dict", source)
        state = normalize_keys(read_any(source))
        _check_shapes(model_state, state, where)
        merged.update(dict.fromkeys(state, (where, state)))
    unexpected = sorted(k for k in merged if k not in model_state)
    missing = sorted(k for k in model_state if k not in merged and k not in OPTIONAL_KEYS
                     and not k.endswith("position_ids"))
    if strict and unexpected:
        raise CheckpointError(f"{len(unexpected)} weights in the checkpoint have no place in the model: "
                              f"{summarize_keys(unexpected)}; is it for another architecture?")
    if strict and missing:
        hint = ""
        if all(k.startswith(CONTROL_PREFIX) for k in missing):
            hint = " (the control weights: load a control checkpoint too, e.g. models/control_sd15_canny.pth)"
        raise CheckpointError(f"{len(missing)} model weights are not in the checkpoint{hint}: {summarize_keys(missing)}")
    copy_weights(model_state, merged)
    return missing


@torch.no_grad()
def copy_weights(model_state, merged):
    """Each tensor of the sources into the model's, in place, one at a time (a file's are read as they are
    copied, so loading holds the model and one tensor); position_ids stay the model's own (0..T-1: files hold
    them as floats, or not at all)."""
    for key, (where, state) in merged.items():
        if key in model_state and not key.endswith("position_ids"):
            model_state[key].copy_(check_finite_weights({key: state[key]}, where)[key])


def load_control_net(model, source, global_average_pooling=None):
    """A second ControlNet for `model`, in its dtype, with the control weights of `source` (any layout above),
    laid out as the file says on the model's base (a full, mid or small net, a Union net). Pooling is the net's
    own: `global_average_pooling` (ControlNet 1.1 shuffle), or None for what a diffusers folder's config says
    (off for other files), never the host model's setting. A T2I-Adapter's file or folder gives the adapter
    (cldm.t2i_adapter), which the generation runs as it runs a ControlNet; an IP-Adapter's file gives the adapter
    with its vision encoder (cldm.ip_adapter)."""
    unet = model.model.diffusion_model
    if not isinstance(source, Mapping) and diffusers_adapter_folder(source):
        return load_t2i_adapter(unet, source)
    state = read_any(source)
    if is_t2i_adapter(state):
        return load_t2i_adapter(unet, str(source), state)
    if is_ip_adapter(state):
        return load_ip_adapter(unet, source, state)
    state = control_state(normalize_keys(state))
    if not state:
        raise CheckpointError(f"{source} holds no ControlNet weights (no {CONTROL_PREFIX}* keys)")
    if is_control_lora(state):
        state = merged_control(state, unet.state_dict(), str(source))
    params = control_params(asdict(unet.config), state, str(source))
    net = control_net_class(params)(**params)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes differ
        raise CheckpointError(f"{source} does not fit this model's ControlNet: {error}") from error
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this model's ControlNet: missing {summarize_keys(missing)}, "
                              f"unexpected {summarize_keys(unexpected)}; is it for another SD family?")
    if global_average_pooling is None:
        global_average_pooling = diffusers_pooling(source)
    net.global_average_pooling, net.only_mid_control = bool(global_average_pooling), False
    return net.to(weights_dtype(model.model)).eval()


def diffusers_pooling(source):
    """A diffusers ControlNet folder's `global_pool_conditions` (False for anything else)."""
    config = Path(source) / "config.json" if not isinstance(source, Mapping) else None
    if config is None or not config.is_file():
        return False
    return bool(json.loads(config.read_text()).get("global_pool_conditions", False))
