"""The project's shipped default ("toy") models: a small SD-shaped base and a shape-outline ControlNet.

They are trained on the generated shapes data (models/TOY_MODEL.md says how) so that every demo, the CLI
and the tests run offline; with real SD weights the same code runs on those instead.
"""

from pathlib import Path

from cldm.model import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"
TOY_CONFIG = MODELS / "toy_cldm.yaml"
TOY_BASE = MODELS / "toy_sd.safetensors"
TOY_CONTROL = MODELS / "toy_control.safetensors"


def load_default_model(device="cpu", dtype=None):
    """The toy ControlLDM with its trained weights, in eval mode, in `dtype` (None: fp32) on `device`."""
    missing = [p for p in (TOY_BASE, TOY_CONTROL) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the default model files {[str(p) for p in missing]} are missing; they ship with "
                                "the repository (git checkout models/), or rebuild them as models/TOY_MODEL.md says")
    return load_model(TOY_CONFIG, TOY_BASE, TOY_CONTROL, dtype=dtype, device=device)
