"""The image logger of the release's training scripts (`from cldm.logger import ImageLogger`): every
`batch_frequency` batches, the model's `log_images(batch)` saved as grids, one PNG per kind, under
<the run's log folder>/image_log/train/ with the step, epoch and batch in the name, as the release named them.
train.py has its own logger (training.callbacks.ImageLogger); this one keeps those scripts running."""

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image

from cldm.sharding import whole_weights


class ImageLogger(pl.Callback):
    def __init__(self, batch_frequency=2000, max_images=4, clamp=True, increase_log_steps=True, rescale=True,
                 disabled=False, log_on_batch_idx=False, log_first_step=False, log_images_kwargs=None):
        super().__init__()
        # increase_log_steps, log_on_batch_idx and log_first_step are accepted as the release's were, which
        # logged on batch indices divisible by batch_frequency whatever they said
        self.batch_frequency, self.max_images, self.clamp, self.rescale = batch_frequency, max_images, clamp, rescale
        self.disabled = disabled
        self.log_images_kwargs = log_images_kwargs or {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.disabled or self.max_images <= 0 or batch_idx % self.batch_frequency:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), whole_weights(trainer):  # every process samples: FSDP's weights are shards
            images = pl_module.log_images(batch, split="train", **self.log_images_kwargs)
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.logger.save_dir if trainer.logger else trainer.default_root_dir) / "image_log/train"
        folder.mkdir(parents=True, exist_ok=True)
        for kind, pictures in images.items():
            pictures = pictures[: self.max_images].detach().float().cpu()
            if self.clamp:
                pictures = pictures.clamp(-1.0, 1.0)
            grid = torchvision.utils.make_grid(pictures, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0
            grid = (grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
            name = f"{kind}_gs-{trainer.global_step:06}_e-{trainer.current_epoch:06}_b-{batch_idx:06}.png"
            Image.fromarray(grid).save(folder / name)
