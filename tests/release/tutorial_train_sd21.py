# The release's tutorial_train_sd21.py (lllyasviel/ControlNet, Apache-2.0; git blob
# 8bbc148f9b1e90561f5a186cc0be94c911dd67cf), kept to test that the release's own scripts run here
# (tests/test_tutorial.py). Changed below this header, each line under a `# release:` line that gives the
# release's text: the initial weights' path (tool_add_control.py writes .safetensors) and the Trainer line
# (today's Lightning has no `gpus`; two steps on the CPU).

from share import *

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from tutorial_dataset import MyDataset
from cldm.logger import ImageLogger
from cldm.model import create_model, load_state_dict


# Configs
# release: resume_path = './models/control_sd21_ini.ckpt'
resume_path = './models/control_sd21_ini.safetensors'
batch_size = 4
logger_freq = 300
learning_rate = 1e-5
sd_locked = True
only_mid_control = False


# First use cpu to load models. Pytorch Lightning will automatically move it to GPUs.
model = create_model('./models/cldm_v21.yaml').cpu()
model.load_state_dict(load_state_dict(resume_path, location='cpu'))
model.learning_rate = learning_rate
model.sd_locked = sd_locked
model.only_mid_control = only_mid_control


# Misc
dataset = MyDataset()
dataloader = DataLoader(dataset, num_workers=0, batch_size=batch_size, shuffle=True)
logger = ImageLogger(batch_frequency=logger_freq)
# release: trainer = pl.Trainer(gpus=1, precision=32, callbacks=[logger])
trainer = pl.Trainer(accelerator='cpu', devices=1, precision=32, callbacks=[logger], max_steps=2)


# Train!
trainer.fit(model, dataloader)
