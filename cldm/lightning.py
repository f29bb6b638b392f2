"""The release's training API on the model itself: its scripts build a model with `create_model(yaml)`, set
`learning_rate`, `sd_locked` and `only_mid_control`, and hand it to `trainer.fit(model, dataloader)` with
`cldm.logger.ImageLogger` calling its `log_images`. `create_model` builds this subclass for them; `load_model`
(the apps, the CLI, train.py) builds the plain ControlLDM, so generating never imports Lightning.
"""

import numpy as np
import pytorch_lightning as pl
import torch

from cldm.cldm import ControlLDM
from cldm.loss import denoising_loss, step_generator, training_inputs


class ReleaseControlLDM(ControlLDM, pl.LightningModule):
    """ControlLDM trained as the release trained it: batches of dict(jpg, txt, hint), AdamW on the control (and
    the UNet decoder unless sd_locked) at `learning_rate`, the same step as train.py (cldm.loss)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate = 1e-5
        self.micro_steps = 0  # batches trained by trainer.fit(model): seeds the next one's random numbers

    def training_step(self, batch, batch_idx):
        gen = step_generator(0, self.micro_steps, self.global_rank, self.device)
        self.micro_steps += 1
        loss, logs = denoising_loss(self, *training_inputs(self, batch, gen, control=True), gen)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.trainable_parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch, N=4, ddim_steps=50, unconditional_guidance_scale=9.0, **ignored):
        """What the release's image logger shows of a batch, (N, 3, H, W) in [-1, 1]: the targets through the
        VAE ("reconstruction"), the hints ("control") and samples from the hints and prompts with DDIM and
        classifier-free guidance ("samples_cfg_scale_<scale>")."""
        from cldm.pipeline import generate

        n = min(N, len(batch["txt"]))
        targets = batch["jpg"][:n].permute(0, 3, 1, 2).float()
        reconstruction = self.decode_first_stage(self.get_first_stage_encoding(self.encode_first_stage(targets)))
        hints = batch["hint"][:n].float()
        samples = [generate(self, (hint * 255).round().byte().cpu().numpy(), prompt, steps=ddim_steps,
                            guidance_scale=unconditional_guidance_scale, seed=0, verbose=False)[0][0]
                   for hint, prompt in zip(hints, list(batch["txt"])[:n])]
        samples = torch.from_numpy(np.stack(samples)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {"reconstruction": reconstruction.float().cpu(), "control": hints.permute(0, 3, 1, 2).cpu() * 2 - 1,
                f"samples_cfg_scale_{unconditional_guidance_scale:.2f}": samples}
