"""LoRAs on a base model: the low-rank updates of community files merged into the base's weights for a
generation, and the base restored bit for bit after it (its touched weights are kept aside, not subtracted).

Files and their module names:
- kohya / A1111 (`lora_unet_*`, `lora_te_*`, SDXL's `lora_te1_*` / `lora_te2_*`; `.lora_down.weight`,
  `.lora_up.weight`, `.alpha`): the UNet's modules by diffusers' names (kohya trains SD 1.x/2.x on diffusers'
  UNet) or by sgm's (SDXL), the text encoders' by transformers' CLIP names, dots written as underscores; linear
  and convolution (LoCon) layers;
- diffusers / PEFT (`unet.<module>.lora_A.weight` and `lora_B`, or the older `.lora.down` / `.lora.up`;
  `text_encoder.` and SDXL's `text_encoder_2.`), scaled by the alpha its metadata records, else 1.

Each update is weight * alpha / rank * up @ down added to the module's weight. The UNet's diffusers names come
from diffusers' own conversion of this model's keys; an OpenCLIP text encoder (SD 2.x, SDXL's second) takes
the CLIP names' q/k/v as the rows of its fused in-projection. The ControlNet's weights are never touched.
"""

import json
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ldm.checkpoint import CheckpointError, family, read_state_dict
from ldm.files import MODELS, plain_name

LORA_FOLDER = MODELS / "loras"
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]+))?>")  # A1111's <lora:name:weight> in a prompt


@dataclass(frozen=True)
class Target:
    """Where a LoRA module's update goes: a parameter of the model, and the rows of it (a fused q/k/v)."""

    param: str
    rows: slice | None = None


def text_encoder_targets(prefix, module, kohya, diffusers):
    """{name: Target} of a text encoder at `prefix`: transformers' CLIP (its own names) or OpenCLIP (the CLIP names
    mapped onto its resblocks, q/k/v as rows of the fused in-projection)."""
    targets = {}
    names = dict(module.named_parameters())
    if any(".resblocks." in n for n in names):
        for name in names:
            match = re.match(r"(.*transformer\.resblocks\.(\d+)\.)(attn\.in_proj_weight|attn\.out_proj\.weight|"
                             r"mlp\.c_fc\.weight|mlp\.c_proj\.weight)$", name)
            if not match:
                continue
            base, layer, part = match[1], match[2], match[3]
            clip = f"text_model.encoder.layers.{layer}."
            if part == "attn.in_proj_weight":
                width = names[name].shape[1]
                for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    targets[clip + f"self_attn.{proj}"] = Target(prefix + name, slice(i * width, (i + 1) * width))
            else:
                clip_part = {"attn.out_proj.weight": "self_attn.out_proj", "mlp.c_fc.weight": "mlp.fc1",
                             "mlp.c_proj.weight": "mlp.fc2"}[part]
                targets[clip + clip_part] = Target(prefix + base + part)
    else:
        for name in names:
            if name.endswith(".weight") and ".text_model." in f".{name}":
                path = name[name.index("text_model."):-len(".weight")]
                targets[path] = Target(prefix + name)
    out = {}
    for path, target in targets.items():
        out[f"{kohya}_{path.replace('.', '_')}"] = target
        out[f"{diffusers}.{path}"] = target
    return out


def unet_targets(model):
    """{name: Target} of the UNet's linear and convolution weights under sgm's, diffusers' and kohya's names."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from cldm.diffusers_interop import diffusers_unet_config

    unet = model.model.diffusion_model
    prefix = "model.diffusion_model."
    every = {prefix + n: p for n, p in unet.named_parameters()}  # diffusers' conversion reads every one
    weights = {n: p for n, p in every.items() if n.endswith(".weight") and p.dim() >= 2}
    sdxl = {"id_features": model.conditioner.embedders[2].outdim} if hasattr(model, "conditioner") else {}
    params = asdict(unet.config)
    if len(set(params["num_res_blocks"])) == 1:  # the yaml's form, which diffusers' helper reads
        params["num_res_blocks"] = params["num_res_blocks"][0]
    config = diffusers_unet_config(params, **sdxl)
    by_tensor = {id(p): n for n, p in weights.items()}
    converted = convert_ldm_unet_checkpoint(every, config)
    targets = {}
    for name, param_name in [(n, by_tensor.get(id(t))) for n, t in converted.items()]:
        if param_name is None or not name.endswith(".weight"):
            continue
        path = name[:-len(".weight")]
        targets[f"lora_unet_{path.replace('.', '_')}"] = Target(param_name)
        targets[f"unet.{path}"] = Target(param_name)
    for param_name in weights:
        path = param_name[len(prefix):-len(".weight")]
        targets[f"lora_unet_{path.replace('.', '_')}"] = Target(param_name)  # sgm's names (kohya's SDXL)
    return targets


def lora_targets(model):
    """Every name a LoRA file may give a module of `model` (UNet and text encoders), with its Target."""
    targets = unet_targets(model)
    if hasattr(model, "conditioner"):  # SDXL: CLIP-L, then OpenCLIP bigG
        embedders = model.conditioner.embedders
        targets.update(text_encoder_targets("conditioner.embedders.0.", embedders[0], "lora_te1", "text_encoder"))
        targets.update(text_encoder_targets("conditioner.embedders.1.", embedders[1], "lora_te2", "text_encoder_2"))
    else:
        targets.update(text_encoder_targets("cond_stage_model.", model.cond_stage_model, "lora_te", "text_encoder"))
    return targets


@dataclass
class Update:
    """One module's low-rank update of a file: up (out, r[, 1, 1]) @ down (r, in[, kh, kw]), scaled."""

    name: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def delta(self, shape, dtype):
        down, up = self.down.float().flatten(1), self.up.float().flatten(1)
        return (self.scale * (up @ down)).reshape(shape).to(dtype)


def read_updates(path):
    """The updates a LoRA file holds (kohya's or diffusers'/PEFT's), each scaled by alpha / rank."""
    state = read_state_dict(path)
    metadata = adapter_metadata(path)
    updates = []
    for key in state:
        for down_suffix, up_suffix in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
                                       (".lora.down.weight", ".lora.up.weight")):
            if not key.endswith(down_suffix):
                continue
            name = key[:-len(down_suffix)]
            up = state.get(name + up_suffix)
            if up is None:
                raise CheckpointError(f"{path}: {key} has no {up_suffix[1:]} beside it: the file is incomplete")
            rank = state[key].shape[0]
            alpha = state.get(name + ".alpha")
            alpha = float(alpha) if alpha is not None else peft_alpha(metadata, name, rank)
            name = re.sub(r"\.processor\.(to_[qkv]|to_out)_lora$", lambda m: "." + m[1].replace("to_out", "to_out.0"),
                          name)  # diffusers' older attention-processor names
            updates.append(Update(name, state[key], up, alpha / rank))
    if not updates:
        raise CheckpointError(f"{path} holds no LoRA weights (lora_down/lora_up, lora_A/lora_B)")
    return updates


def adapter_metadata(path):
    """The adapter configs diffusers saves in a .safetensors LoRA's metadata ({"unet.lora_alpha": ...}), or {}."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    return json.loads(raw) if raw else {}


def peft_alpha(metadata, name, rank):
    """A diffusers module's alpha from its component's saved PEFT config (its alpha_pattern, else lora_alpha);
    without one, its rank (a scale of 1, as diffusers assumes)."""
    component, _, module = name.partition(".")
    pattern = metadata.get(f"{component}.alpha_pattern") or {}
    hit = next((float(v) for k, v in pattern.items() if module == k or module.endswith("." + k)), None)
    alpha = metadata.get(f"{component}.lora_alpha")
    return hit if hit is not None else float(alpha) if alpha is not None else float(rank)


def lora_names():
    """The LoRA files of models/loras/, by the names a request gives them (no suffix)."""
    files = LORA_FOLDER.iterdir() if LORA_FOLDER.is_dir() else ()
    return sorted(f.stem for f in files if f.is_file() and f.suffix.lower() in LORA_SUFFIXES)


def find_lora(name, paths=True):
    """A LoRA named in a prompt or a setting: a name in models/loras/ (with or without its suffix), or, with
    `paths` (the command line, not a server's page), a file's path."""
    if plain_name(name):
        for candidate in [LORA_FOLDER / name, *(LORA_FOLDER / f"{name}{s}" for s in LORA_SUFFIXES)]:
            if candidate.is_file():
                return candidate
    if paths and Path(name).is_file():
        return Path(name)
    raise CheckpointError(f"LoRA {str(name)[:100]!r} is not a file in {LORA_FOLDER}/: put it there and name it "
                          "(with or without its suffix)" + (", or give its path" if paths else ""))


def named_loras(settings, paths=True):
    """The LoRA files a request names, with their weights: its `loras` setting's, then its prompts' tags."""
    names = [*parse_loras(settings.loras), *prompt_loras(settings.prompt)[1], *prompt_loras(settings.added_prompt)[1]]
    return [(find_lora(name, paths), weight) for name, weight in names]


def parse_loras(text):
    """'name:weight, other:0.5' (the loras setting) -> [(name, weight)]; a name alone weighs 1."""
    loras = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, _, weight = part.rpartition(":") if re.search(r":-?[\d.]+$", part) else (part, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"LoRA {part!r}: write name:weight, e.g. style:0.8") from None
        loras.append((name.strip(), value))
    return loras


def prompt_loras(prompt):
    """(the prompt without its <lora:name:weight> tags, [(name, weight)] they give)."""
    found = []
    for match in TAG.finditer(prompt):
        try:
            found.append((match[1].strip(), float(match[2]) if match[2] is not None else 1.0))
        except ValueError:
            raise ValueError(f"{match[0]}: its weight is no number; write <lora:name:0.8>") from None
    cleaned = re.sub(r"\s*,\s*,", ",", TAG.sub("", prompt)).strip(" ,")
    return cleaned, found


def targeted(updates):
    """The base family a LoRA's updates are for, as its cross-attention's key projection reads the text."""
    if any(u.name.startswith(("lora_te2_", "text_encoder_2.")) for u in updates):
        return "SDXL (it has a second text encoder)"
    keys = [u for u in updates if re.search(r"attn2[._]to_k$", u.name)]
    return family(keys[0].down.flatten(1).shape[1]) if keys else "another base family"


@contextmanager
@torch.no_grad()
def applied(model, loras):
    """`model` with the LoRAs [(path, weight)] merged into its weights within the block, its own weights back
    bit for bit after it. A LoRA whose modules are not the model's is refused, naming what it targets."""
    if not loras:
        yield model
        return
    targets, params = lora_targets(model), dict(model.named_parameters())
    kept = {}
    try:
        for path, weight in loras:
            updates = read_updates(path)
            unknown = [u.name for u in updates if u.name not in targets]
            if unknown:
                raise CheckpointError(f"{Path(path).name}: {len(unknown)} of its {len(updates)} modules are not this "
                                      f"model's (e.g. {unknown[0]}): it is a LoRA for {targeted(updates)}")
            for update in updates:
                target = targets[update.name]
                param = params[target.param]
                if target.param not in kept:
                    kept[target.param] = param.detach().clone()
                view = param.data if target.rows is None else param.data[target.rows]
                if update.up.shape[0] != view.shape[0] or update.down.flatten(1).shape[1] != view[0].numel():
                    raise CheckpointError(f"{Path(path).name}: {update.name} updates a {tuple(view.shape)} weight "
                                          f"with {tuple(update.up.shape)} @ {tuple(update.down.shape)}: it is a LoRA "
                                          "for another base")
                view += update.delta(view.shape, view.dtype) * weight
        yield model
    finally:
        for name, value in kept.items():
            if not params[name].is_meta:  # released text encoders (a run's last generation) have nothing to restore
                params[name].data.copy_(value)
