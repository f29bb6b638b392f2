"""The noise schedule follows from the config: files without it (the shipped toy models, training.export's
outputs) load with a plain strict `model.load_state_dict`, as the release's files did; files with it keep theirs."""

import torch

from cldm.model import create_model, load_state_dict
from ldm.diffusion import SCHEDULE_BUFFERS
from tests.helpers import ROOT, TINY_V15, tiny_model

SCHEDULE = (*SCHEDULE_BUFFERS, "logvar")


def test_a_file_without_the_schedule_loads_strictly_with_the_configs():
    full = tiny_model(TINY_V15).state_dict()
    bare = {k: v for k, v in full.items() if k not in SCHEDULE}
    model = create_model(TINY_V15)
    model.load_state_dict(bare)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in full.items())
    assert bare.keys() == full.keys() - set(SCHEDULE)  # the caller's dict is left as it was


def test_a_file_with_a_schedule_keeps_its_own():
    state = tiny_model(TINY_V15).state_dict()
    state["betas"], state["logvar"] = state["betas"] * 2, torch.ones_like(state["logvar"])
    model = create_model(TINY_V15)
    model.load_state_dict(state)
    assert torch.equal(model.betas, state["betas"]) and torch.equal(model.logvar, state["logvar"])


def test_the_shipped_toy_files_load_as_the_release_loaded_its_own():
    model = create_model(ROOT / "models/toy_cldm.yaml")
    files = [load_state_dict(ROOT / f"models/{name}.safetensors", location="cpu") for name in ("toy_sd", "toy_control")]
    assert not any(k in f for f in files for k in SCHEDULE)
    model.load_state_dict({**files[0], **files[1]})
