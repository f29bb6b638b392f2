"""The shipped yamls build models whose state dicts have exactly the release's keys, shapes and dtypes."""

import pytest
import torch

from cldm.model import create_model
from tests.helpers import ROOT

KEYS_DIR = ROOT / "tests" / "data"  # every key of the release's full checkpoints (key, shape, dtype)
DTYPES = {"F32": torch.float32, "I64": torch.int64}


def release_layout(name):
    layout = {}
    for line in (KEYS_DIR / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        layout[key] = (dims, DTYPES[dtype])
    return layout


@pytest.mark.parametrize("config, listing", [("cldm_v15.yaml", "controlldm_sd15.tsv"),
                                             ("cldm_v21.yaml", "controlldm_sd21.tsv")])
def test_state_dict_equals_release_layout(config, listing):
    expected = release_layout(listing)
    model = create_model(ROOT / "models" / config, device="meta")
    ours = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}

