"""The release's own tutorial_train.py, tutorial_train_sd21.py and tutorial_dataset.py (kept in tests/release/,
changed only on the marked lines: the Trainer line and paths) run here, on initial weights that
tool_add_control.py made: the shipped toy base with models/toy_cldm.yaml, and a tiny SD 2.1-layout model."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import tool_add_control
from ldm.checkpoint import read_state_dict, save_safetensors
from ldm.diffusion import SCHEDULE_BUFFERS
from tests.helpers import ROOT, TINY_V21, tiny_model
from toy.shapes import write_dataset

RELEASE = ROOT / "tests/release"
# The release's files by git blob id (`git rev-parse HEAD:<file>` in lllyasviel/ControlNet).
RELEASE_BLOBS = {
    "tutorial_dataset.py": "fb327f981d10cf94e6a7f55f5b2b4497d3e7a9cb",
    "tutorial_train.py": "393d7addb164c32eff9c3d675e4f32fb555868f0",
    "tutorial_train_sd21.py": "8bbc148f9b1e90561f5a186cc0be94c911dd67cf",
}
MARK = "# release: "


def release_text(fixture):
    """The release's file back from a fixture: the header dropped, each changed line replaced by the release
    text its `# release:` line gives."""
    lines = fixture.split("\n\n", 1)[1].splitlines(keepends=True)
    out, changed = [], 0
    while lines:
        line = lines.pop(0)
        if line.startswith(MARK):
            lines.pop(0)
            line, changed = line[len(MARK):], changed + 1
        out.append(line)
    return "".join(out), changed


@pytest.mark.parametrize("name,changed", [("tutorial_dataset.py", 0), ("tutorial_train.py", 3),
                                          ("tutorial_train_sd21.py", 2)])
def test_the_fixtures_are_the_release_files_but_for_the_marked_lines(name, changed):
    text, found = release_text((RELEASE / name).read_text())
    data = text.encode()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == RELEASE_BLOBS[name]
    assert found == changed


def sd_v21_base(path):
    """A tiny SD 2.1-layout base, as a plain SD file: no control, no noise schedule."""
    state = tiny_model(TINY_V21).state_dict()
    save_safetensors({k: v for k, v in state.items() if k.startswith(("model.", "first_stage_model.",
                                                                       "cond_stage_model."))}, path)


# script, the config and its name in the script, the SD base (None: a tiny random one), the weights' name there
CASES = {
    "toy": ("tutorial_train.py", ROOT / "models/toy_cldm.yaml", "toy_cldm.yaml", ROOT / "models/toy_sd.safetensors",
            "control_toy_ini.safetensors"),
    "sd21": ("tutorial_train_sd21.py", TINY_V21, "cldm_v21.yaml", None, "control_sd21_ini.safetensors"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_release_tutorial_trains_on_a_control_from_tool_add_control(case, tmp_path):
    script, config, yaml, base, initial = CASES[case]
    models = tmp_path / "models"
    models.mkdir()
    (models / yaml).write_text(config.read_text())
    if base is None:
        base = tmp_path / "sd21_base.safetensors"
        sd_v21_base(base)
    tool_add_control.main([str(base), str(models / initial), "--config", str(models / yaml)])
    # One sample, so each of the two steps is an epoch: the logger samples every epoch's first batch, each image
    # with 50 DDIM steps, and a full batch of the script's 4 would take four times as long.
    write_dataset(tmp_path / "training/fill50k", 1, seed=0, size=64)

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           # The suite shares a few cores between its workers; more threads per process only wait on each other.
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(RELEASE / script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    before = read_state_dict(models / initial)
    after = read_state_dict(tmp_path / "lightning_logs/version_0/checkpoints/epoch=1-step=2.ckpt")
    assert after.keys() == before.keys()  # the tool's file is complete, noise schedule included

    def changed(prefixes):
        return [k for k in before if k.startswith(prefixes) and not torch.equal(after[k], before[k].float())]

    assert changed(("control_model.",))  # the control learned
    # sd_locked: the VAE, the text encoder and the whole UNet did not; nor did the noise schedule
    assert changed(("first_stage_model.", "cond_stage_model.", "model.diffusion_model.", *SCHEDULE_BUFFERS,
                    "logvar")) == []
    logged = sorted(p.name.split("_gs-")[0] for p in tmp_path.glob("image_log/train/*_e-000000_b-000000.png"))
    assert logged == ["control", "reconstruction", "samples_cfg_scale_9.00"]  # the first batch, as the release did
