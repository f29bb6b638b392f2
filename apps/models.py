"""Which model an app runs: real SD checkpoints when present (or named), else the shipped toy model."""

from pathlib import Path
from typing import NamedTuple

import torch

from cldm.defaults import load_default_model
from cldm.model import load_model, normalize_keys, read_any
from ldm.checkpoint import missing_file_message

MODELS = Path(__file__).resolve().parents[1] / "models"
DEFAULT_BASE = MODELS / "v1-5-pruned.ckpt"


class Resolved(NamedTuple):
    model: object  # a ControlLDM, or None when a named file is missing
    note: str  # what runs, or which file to get and where
    toy: bool = False  # the shipped default model (its own prompt and resolution defaults suit it)


def resolve_model(control_file, control=None, base=None, config=None, device=None, dtype=None):
    """The model (or None) and a note for the user, for an app whose usual control file is `control_file`.

    `control` (a path) is what the user asked for; without it, models/<control_file> is used when present,
    else the shipped toy model. A missing file gives no model and a note naming it and where to get it.
    The model's networks are in `dtype` (None: fp32).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    wanted = Path(control) if control else MODELS / control_file
    if not wanted.is_file():
        if control:
            return Resolved(None, missing_file_message(wanted) + ". The annotator works meanwhile.")
        note = ("Running the shipped toy model (shapes on plain backgrounds, 128x128). "
                f"For real images get {control_file}: {missing_file_message(wanted)}")
        return Resolved(load_default_model(device, dtype), note, toy=True)
    state = normalize_keys(read_any(wanted))
    sources = [state]
    if not any(k.startswith("model.diffusion_model.") for k in state):  # control-only (1.1, extracted)
        base = Path(base) if base else DEFAULT_BASE
        if not base.is_file():
            return Resolved(None, f"{wanted.name} holds only the control; it needs an SD base: "
                                  f"{missing_file_message(base)}")
        sources = [base, state]
    model = load_model(config or MODELS / "cldm_v15.yaml", *sources, dtype=dtype, device=device)
    names = [wanted.name] if len(sources) == 1 else [base.name, wanted.name]
    return Resolved(model, f"Running {' + '.join(names)}.")
