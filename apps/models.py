"""Which model an app runs: real SD checkpoints when present (or named), else the shipped toy model."""

from pathlib import Path
from typing import NamedTuple

import torch

from cldm.model import ModelOptions, load_model, normalize_keys, read_any
from ldm.files import MODELS, missing_file_message
from toy.model import load_default_model

DEFAULT_BASE = MODELS / "v1-5-pruned.ckpt"


class Resolved(NamedTuple):
    model: object  # a ControlLDM, or None when a named file is missing
    note: str  # what runs, or which file to get and where
    toy: bool = False  # the shipped default model (its own prompt and resolution defaults suit it)


def resolve_model(control_files, control=None, base=None, config=None, device=None, dtype=None,
                  options=ModelOptions()):
    """The model (or None) and a note for the user, for an app whose usual control files are `control_files`
    (a name, or names in order of preference: the 1.0 file, then the 1.1 one).

    `control` (a path) is what the user asked for; without it, the first of models/<control_files> present is
    used, else the shipped toy model. A control-only file (1.1, extracted) is loaded onto `base` (default
    models/v1-5-pruned.ckpt), with `config`, else the yaml beside the control file (the 1.1 release ships one
    per control), else models/cldm_v15.yaml. A missing file gives no model and a note naming it and where to
    get it. The model's networks are in `dtype` (None: fp32); a real model is built with `options` (how its
    control was trained; the toy model takes none).
    """
    control_files = (control_files,) if isinstance(control_files, (str, Path)) else tuple(control_files)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    present = [MODELS / name for name in control_files if (MODELS / name).is_file()]
    wanted = Path(control) if control else (present or [MODELS / control_files[0]])[0]
    if not wanted.is_file():
        if control:
            return Resolved(None, missing_file_message(wanted) + ". The annotator works meanwhile.")
        others = "".join(f" (or {name})" for name in control_files[1:])
        note = ("Running the shipped toy model (shapes on plain backgrounds, 128x128). "
                f"For real images get {control_files[0]}{others}: {missing_file_message(wanted)}")
        if control_files[0].startswith("control_v11"):  # the 1.1 files hold only the control
            base_name = Path(base).name if base else DEFAULT_BASE.name
            note += (f", with its yaml ({Path(control_files[0]).stem}.yaml) beside it; it runs on the SD base "
                     f"{base_name} in the same folder")
        return Resolved(load_default_model(device, dtype), note, toy=True)
    state = normalize_keys(read_any(wanted))
    sources = [state]
    if not any(k.startswith("model.diffusion_model.") for k in state):  # control-only (1.1, extracted)
        base = Path(base) if base else DEFAULT_BASE
        if not base.is_file():
            return Resolved(None, f"{wanted.name} holds only the control; it needs an SD base: "
                                  f"{missing_file_message(base)} (or name another with --base)")
        sources = [base, state]
    own_yaml = wanted.with_suffix(".yaml")
    config = config or (own_yaml if own_yaml.is_file() else None)  # None: the base's family (cldm.model)
    model = load_model(config, *sources, dtype=dtype, device=device, options=options)
    names = [wanted.name] if len(sources) == 1 else [base.name, wanted.name]
    yaml = Path(config).name if config else "the yaml of its family"
    return Resolved(model, f"Running {' + '.join(names)} ({yaml}).")
