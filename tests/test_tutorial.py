"""Scripts written against the release's training API run here: `from share import *`, `create_model` and
`load_state_dict` from cldm.model, the model's learning_rate / sd_locked / only_mid_control attributes, a
Dataset of dict(jpg, txt, hint), `cldm.logger.ImageLogger` and `trainer.fit(model, dataloader)`, with only the
Trainer line in today's Lightning. Two steps on generated shapes with a tiny config, SD 1.5 and 2.1 layouts."""

import os
import subprocess
import sys

import pytest
import torch

from ldm.checkpoint import save_safetensors
from tests.helpers import ROOT, TINY_V15, TINY_V21, tiny_model
from training.shapes import write_dataset

DATASET = '''
import json

import cv2
import numpy as np
from torch.utils.data import Dataset


class MyDataset(Dataset):
    """The tutorial's dataset shape: prompt.json lines, BGR files turned RGB, hint in [0, 1], image in [-1, 1]."""

    def __init__(self):
        with open("./training/fill50k/prompt.json") as f:
            self.data = [json.loads(line) for line in f]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        source = cv2.cvtColor(cv2.imread("./training/fill50k/" + item["source"]), cv2.COLOR_BGR2RGB)
        target = cv2.cvtColor(cv2.imread("./training/fill50k/" + item["target"]), cv2.COLOR_BGR2RGB)
        return dict(jpg=target.astype(np.float32) / 127.5 - 1.0, txt=item["prompt"],
                    hint=source.astype(np.float32) / 255.0)
'''

TRAIN = '''
from share import *

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from tutorial_dataset import MyDataset
from cldm.logger import ImageLogger
from cldm.model import create_model, load_state_dict

model = create_model("./models/{yaml}").cpu()
model.load_state_dict(load_state_dict("./models/{init}", location="cpu"))
model.learning_rate = 1e-3
model.sd_locked = {sd_locked}
model.only_mid_control = False

dataloader = DataLoader(MyDataset(), num_workers=0, batch_size=2, shuffle=True)
logger = ImageLogger(batch_frequency=300, log_images_kwargs=dict(ddim_steps=2))
trainer = pl.Trainer(accelerator="cpu", devices=1, precision=32, callbacks=[logger], max_steps=2)
trainer.fit(model, dataloader)
torch.save(model.state_dict(), "trained.pt")
'''


@pytest.mark.parametrize("config,yaml,sd_locked", [(TINY_V15, "cldm_v15.yaml", True),
                                                   (TINY_V21, "cldm_v21.yaml", False)])
def test_the_release_tutorial_trains_two_steps(config, yaml, sd_locked, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / yaml).write_text(config.read_text())
    initial = tiny_model(config, skip=("control_model.",)).state_dict()
    save_safetensors(initial, tmp_path / "models/control_ini.safetensors")
    write_dataset(tmp_path / "training/fill50k", 4, seed=0, size=64)
    (tmp_path / "tutorial_dataset.py").write_text(DATASET)
    (tmp_path / "tutorial_train.py").write_text(TRAIN.format(yaml=yaml, init="control_ini.safetensors",
                                                             sd_locked=sd_locked))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "tutorial_train.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = torch.load(tmp_path / "trained.pt", weights_only=True)
    control = [k for k in initial if k.startswith("control_model.")]
    decoder = [k for k in initial if k.startswith("model.diffusion_model.output_blocks.")]
    frozen = [k for k in initial if k.startswith(("first_stage_model.", "model.diffusion_model.input_blocks."))]
    assert any(not torch.equal(trained[k], initial[k]) for k in control)  # the control learned
    assert all(torch.equal(trained[k], initial[k]) for k in frozen)  # the VAE and the locked encoder did not
    assert any(not torch.equal(trained[k], initial[k]) for k in decoder) == (not sd_locked)
    logged = sorted(p.name.split("_gs-")[0] for p in tmp_path.rglob("image_log/train/*_b-000000.png"))
    assert logged == ["control", "reconstruction", "samples_cfg_scale_9.00"]  # the first batch, as the release
