"""Build models from the LDM release's yaml files, read as data.

A config node is `{target: "dotted.name", params: {...}}`. Targets resolve through an explicit table,
never by importing strings; params are checked against the class before anything is built, so a typo
fails at once with the yaml path of the bad key.
"""

import inspect
from contextlib import contextmanager
from dataclasses import MISSING, fields

import torch
from omegaconf import OmegaConf

from ldm.autoencoder import AutoencoderKL
from ldm.diffusion import LatentDiffusion
from ldm.files import check_config_file
from ldm.sdxl import Conditioner, DiffusionEngine, SizeEmbedder
from ldm.text_encoders import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedder2
from ldm.unet import UNetModel

LDM_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": LatentDiffusion,
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": UNetModel,
    "ldm.models.autoencoder.AutoencoderKL": AutoencoderKL,
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": FrozenCLIPEmbedder,
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": FrozenOpenCLIPEmbedder,
}
# SDXL: sgm's names, which its yamls write with the package's name (sgm.) or as in its source tree (ldm.)
SGM_TARGETS = {
    "models.diffusion.DiffusionEngine": DiffusionEngine,
    "modules.diffusionmodules.openaimodel.UNetModel": UNetModel,
    "models.autoencoder.AutoencoderKLInferenceWrapper": AutoencoderKL,
    "models.autoencoder.AutoencoderKL": AutoencoderKL,
    "modules.GeneralConditioner": Conditioner,
    "modules.encoders.modules.FrozenCLIPEmbedder": FrozenCLIPEmbedder,
    "modules.encoders.modules.FrozenOpenCLIPEmbedder2": FrozenOpenCLIPEmbedder2,
    "modules.encoders.modules.ConcatTimestepEmbedderND": SizeEmbedder,
}
LDM_TARGETS.update({f"{package}.{name}": cls for name, cls in SGM_TARGETS.items() for package in ("sgm", "ldm")})

# Sub-model configs inside a diffusion model's params, and the constructor argument each becomes.
SUBMODELS = {
    "unet_config": "unet",
    "network_config": "unet",  # sgm's names
    "conditioner_config": "conditioner",
    "first_stage_config": "first_stage_model",
    "cond_stage_config": "cond_stage_model",
    "control_stage_config": "control_model",
}


class ConfigError(ValueError):
    pass


def load_yaml(path):
    path = check_config_file(path)
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"{path} has no top-level `model:` section; is it a Stable Diffusion / ControlNet config?")
    return config


def _named_params(cls):
    """(accepted, required) constructor parameters, following **kwargs along the class's MRO to the next
    constructor (a ControlNet model's to its diffusion model's), or to a `config_class`'s fields."""
    accepted, required = set(), set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in [k for k in cls.__mro__ if "__init__" in vars(k)]:
        sig = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in sig if p.kind in kinds} - {"self"}
        required |= {p.name for p in sig if p.kind in kinds and p.default is p.empty} - {"self"}
        if "config_class" in vars(klass):
            accepted |= {f.name for f in fields(klass.config_class)}
            required |= {f.name for f in fields(klass.config_class)
                         if f.default is MISSING and f.default_factory is MISSING}
            break
        if not any(p.kind is p.VAR_KEYWORD for p in sig):
            break
    return accepted, required


def check_params(cls, params, path):
    accepted, required = _named_params(cls)
    given = {SUBMODELS.get(k, k) for k in params}
    unknown = sorted(k for k in params if SUBMODELS.get(k, k) not in accepted)
    if unknown:
        raise ConfigError(f"{path}.params: {cls.__name__} has no parameter(s) {unknown}; it accepts {sorted(accepted)}")
    missing = sorted(required - given)
    if missing:
        raise ConfigError(f"{path}.params: {cls.__name__} needs {missing}")


def instantiate(node, targets, path="model"):
    """Build the module a config node describes, sub-models first."""
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(f"{path} must have a `target:`")
    target = node["target"]
    if target not in targets:
        raise ConfigError(f"{path}.target {target!r} is not a known model; known targets: {sorted(targets)}")
    cls = targets[target]
    params = dict(node.get("params") or {})
    check_params(cls, params, path)
    for key, arg in SUBMODELS.items():
        if key in params:
            params[arg] = instantiate(params.pop(key), targets, f"{path}.params.{key}")
    if "emb_models" in params:  # sgm's conditioner: (input key, embedder) each; is_trainable and ucg_rate are
        params["emb_models"] = [  # training's (the embedders stay frozen, prompt dropout is train.py's)
            (item.get("input_key"), instantiate(item, targets, f"{path}.params.emb_models.{i}"))
            for i, item in enumerate(params["emb_models"])]
    return cls(**params)


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def weights_left_uninitialised():
    """Build modules without initialising their weights (torch.nn.init does nothing inside): for a model whose
    every weight a checkpoint is about to replace. It saves the time of drawing billions of random numbers, and
    memory: untouched pages of a new tensor are not resident until the checkpoint's values are written."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
