"""What a person watching a run sees: one bar of optimizer steps out of --max-steps (a resumed run starts where
it stopped), the loss, steps per second and the time left. Lightning's own bar counts epochs and batches,
which reads "Epoch 0/-2 ... 24/7" when a run is bounded by steps."""

from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm


class StepProgress(ProgressBar):
    def __init__(self):
        super().__init__()
        self.bar, self.enabled = None, True

    def disable(self):
        self.enabled = False

    def enable(self):
        self.enabled = True

    def on_train_start(self, trainer, pl_module):
        if self.enabled and trainer.is_global_zero:
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="training", unit="step",
                            dynamic_ncols=True, smoothing=0.1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.bar is None:
            return
        loss = trainer.callback_metrics.get("loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def print(self, *args, **kwargs):
        (self.bar.write if self.bar is not None else print)(" ".join(map(str, args)), **kwargs)
