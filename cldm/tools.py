"""Checkpoint surgery: add a control to an SD checkpoint, move a control to another base, extract one, convert
one between the release's (sgm's) layout and diffusers'.

All functions work on state dicts in the release layout; the `tool_*.py` scripts wrap them with file I/O.
"""

import inspect
from pathlib import Path

import torch
from torch import nn

from cldm.cldm import CONTROL_PREFIX
from cldm.control_files import control_params, layout_depths, params_on_base
from cldm.model import TARGETS, normalize_keys
from ldm.checkpoint import CheckpointError, cross_attention_width, family, save_safetensors
from ldm.config import ConfigError, instantiate, load_yaml
from ldm.diffusion import LatentDiffusion
from ldm.files import MODELS
from ldm.sdxl import ID_FEATURES, SDXL_SCHEDULE, DiffusionEngine

UNET_PREFIX = "model.diffusion_model."


def check_same_family(named_widths):
    """Fail unless every (name, width) pair has the same width; names each input's family."""
    widths = {w for _, w in named_widths if w is not None}
    if len(widths) > 1:
        found = ", ".join(f"{name} is {family(w)}" for name, w in named_widths if w is not None)
        raise CheckpointError(f"the inputs belong to different model families: {found}")


def _model_params(config_path):
    return load_yaml(config_path)["model"].get("params") or {}


def fresh_control_state(config_path, seed=0, layout="full", union_types=None):
    """A freshly initialised control (hint encoder random from `seed`, zero convs zero), built from the yaml alone:
    its control_stage_config, or for a base's yaml (SDXL's) a control of the base's widths, with the transformer
    depth of `layout` (full: the base's; SDXL's reduced mid and small); with `union_types` (6, or ProMax's 8) a
    ControlNet-Union of that many control types."""
    params = _model_params(config_path)
    node = params.get("control_stage_config")
    base = (params.get("network_config") or params.get("unet_config") or {}).get("params")
    if node is None and base is not None:
        node = {"target": "cldm.cldm.ControlNet", "params": params_on_base(base, 3, layout_depths(base, layout))}
        if union_types:
            node = {"target": "cldm.union.UnionControlNet",
                    "params": {**node["params"], "num_control_types": union_types,
                               "type_features": id_features_width(params)}}
    elif layout != "full" or union_types:
        asked = "a ControlNet-Union" if union_types else f"the {layout} layout"
        raise ConfigError(f"{config_path} describes its ControlNet: {asked} is for a base's yaml "
                          "(models/sd_xl_base.yaml)")
    if node is None:
        raise ConfigError(f"{config_path} describes no ControlNet and no base UNet: give models/cldm_v15.yaml (SD "
                          "1.x), models/cldm_v21.yaml (SD 2.x) or models/sd_xl_base.yaml (SDXL)")
    with torch.random.fork_rng(devices=[]):  # the same initial weights every time, the caller's generator untouched
        torch.manual_seed(seed)
        control = instantiate(node, TARGETS, "model.params.control_stage_config")
    return {CONTROL_PREFIX + k: v for k, v in control.state_dict().items()}


def id_features_width(model_params):
    """The Fourier features a size id gets in an sgm yaml's conditioner (SDXL: 256): a Union's types get as many."""
    models = ((model_params.get("conditioner_config") or {}).get("params") or {}).get("emb_models") or []
    widths = [(m.get("params") or {}).get("outdim") for m in models if m.get("target", "").endswith("EmbedderND")]
    return next((w for w in widths if w), ID_FEATURES)


def schedule_state(config_path):
    """The noise schedule buffers (betas, alphas_cumprod, ..., logvar) of the config's model, computed as the
    model computes them: stand-ins take the networks' places, so nothing large is built."""
    accepted = inspect.signature(LatentDiffusion).parameters
    params = {k: v for k, v in _model_params(config_path).items() if k in accepted}
    if TARGETS.get(load_yaml(config_path)["model"]["target"]) is DiffusionEngine:
        params = {**params, **SDXL_SCHEDULE}  # sgm's yaml names its schedule in its denoiser config
    return LatentDiffusion(nn.Identity(), nn.Identity(), nn.Identity(), **params).state_dict()


def add_control(sd_state, config_path, seed=0, layout="full", union_types=None):
    """ControlLDM initial weights: the SD checkpoint, plus a control whose encoder copies the UNet's.

    Returns (state, added_keys): the keys that did not come from the SD checkpoint (hint encoder, zero convs).
    The state is complete, as the release's tool wrote it: where the SD checkpoint has no noise schedule, the
    config's is added, so the file loads strictly in any code, the release's included.
    """
    sd_state = normalize_keys(sd_state)
    if any(k.startswith(CONTROL_PREFIX) for k in sd_state):
        raise CheckpointError("the input already has control weights (control_model.*); give a plain SD checkpoint")
    control = fresh_control_state(config_path, seed, layout, union_types)
    check_same_family([("the SD checkpoint", cross_attention_width(sd_state, UNET_PREFIX)),
                       (f"the config {Path(config_path).name}", cross_attention_width(control, CONTROL_PREFIX))])
    state, added = {**schedule_state(config_path), **sd_state}, []
    for key, fresh in control.items():
        source = UNET_PREFIX + key[len(CONTROL_PREFIX):]
        if source in sd_state:
            if sd_state[source].shape != fresh.shape:
                raise CheckpointError(f"{source} has shape {tuple(sd_state[source].shape)} but the config's control "
                                      f"needs {tuple(fresh.shape)}: the checkpoint does not match {config_path}")
            state[key] = sd_state[source].clone()
        else:
            state[key] = fresh
            added.append(key)
    return state, added


def transfer_control(control_state, base_state, community_state):
    """Move a control trained on `base` to `community`: control + community - base on the copied encoder.

    Returns a full ControlLDM state dict: the community model plus the transferred control.
    """
    control_state, base_state, community_state = map(normalize_keys, (control_state, base_state, community_state))
    control = {k: v for k, v in control_state.items() if k.startswith(CONTROL_PREFIX)}
    if not control:
        raise CheckpointError("the control input has no control_model.* weights")
    check_same_family([("the control", cross_attention_width(control, CONTROL_PREFIX)),
                       ("the base", cross_attention_width(base_state, UNET_PREFIX)),
                       ("the community model", cross_attention_width(community_state, UNET_PREFIX))])
    out = {k: v for k, v in community_state.items() if not k.startswith(CONTROL_PREFIX)}
    for key, value in control.items():
        unet_key = UNET_PREFIX + key[len(CONTROL_PREFIX):]
        if unet_key in base_state and unet_key in community_state:
            offset = community_state[unet_key].float() - base_state[unet_key].float()
            out[key] = (value.float() + offset).to(value.dtype)
        else:
            out[key] = value
    return out


def extract_control(state):
    """Only the control weights (`control_model.*`) of a full ControlLDM state dict."""
    control = {k: v for k, v in normalize_keys(state).items() if k.startswith(CONTROL_PREFIX)}
    if not control:
        raise CheckpointError("no control_model.* weights found: is this a full ControlLDM checkpoint?")
    return control


def write_output(state, path, force=False):
    """Write safetensors, refusing to overwrite an existing file unless asked."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: outputs are written as .safetensors")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force to replace it")
    save_safetensors(state, path)
    return path



FAMILY_YAMLS = {768: "cldm_v15.yaml", 1024: "cldm_v21.yaml", 2048: "sd_xl_base.yaml"}


def control_config(control, config_path=None):
    """A config holding `control`'s ControlNet params (read from its keys) on its base: the base of `config_path`,
    or the shipped yaml of the family its cross-attention width shows."""
    if config_path is None:
        width = cross_attention_width(control, "")
        if width not in FAMILY_YAMLS:
            raise CheckpointError(f"the control's family is not known from its keys ({family(width)}): give --config")
        config_path = MODELS / FAMILY_YAMLS[width]
    params = _model_params(config_path)
    base = (params.get("network_config") or params.get("unet_config") or {}).get("params")
    if base is None:
        raise ConfigError(f"{config_path} describes no base UNet: give a base's yaml (models/sd_xl_base.yaml)")
    return {"model": {"params": {"control_stage_config": {"params": control_params(base, control)}}}}


def write_diffusers_control(control, output, config_path=None, force=False):
    """A control (release layout, no prefix) written in diffusers' layout: a ControlNetModel (or
    ControlNetUnionModel) folder with its config, or one .safetensors file of its weights."""
    from cldm.diffusers_interop import (
        control_to_diffusers_keys,
        diffusers_controlnet_config,
        export_diffusers_controlnet,
    )

    output, config = Path(output), control_config(control, config_path)
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; choose another name or pass --force to replace it")
    if output.suffix == ".safetensors":
        save_safetensors(control_to_diffusers_keys(control, diffusers_controlnet_config(config)), output)
    else:
        export_diffusers_controlnet(control, config, output)
    return output
