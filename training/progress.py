"""What a person watching a run sees: one bar of optimizer steps out of --max-steps (a resumed run starts where
it stopped), the loss, steps per second and the time left. Lightning's own bar counts epochs and batches,
which reads "Epoch 0/-2 ... 24/7" when a run is bounded by steps.

Checkpoints, image logs and evaluations pause training for seconds to minutes: while one runs the bar says so
in place of "training" and its clock stops (its elapsed time, rate and time left are training's alone), and what
it wrote is reported on a line of its own."""

import time
from contextlib import contextmanager, nullcontext

from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm

TRAINING = "training"


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
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc=TRAINING, unit="step",
                            dynamic_ncols=True, smoothing=0.1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.bar is None:
            return
        loss = trainer.callback_metrics.get("loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    # closed at the end of fit, not of training: the last checkpoint is saved in on_train_end, under the bar
    def on_fit_end(self, trainer, pl_module):
        self.close()

    def on_exception(self, trainer, pl_module, exception):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @contextmanager
    def paused(self, doing):
        """The bar reads `doing` while the block runs, and its clock stops meanwhile."""
        if self.bar is None:
            yield
            return
        began = time.time()  # tqdm's clock
        self.bar.set_description_str(doing)  # refreshed at once, so a log file gets the line too
        try:
            yield
        finally:
            self.bar.set_description_str(TRAINING, refresh=False)
            # as tqdm's unpause(): its rates are of steps over the time since its start (the final one) or since
            # its last print (the moving average); moving both past the pause counts none of it
            paused = time.time() - began
            self.bar.start_t += paused
            self.bar.last_print_t += paused

    def print(self, *args, **kwargs):
        (self.bar.write if self.bar is not None else print)(" ".join(map(str, args)), **kwargs)


def _progress(trainer):
    bar = trainer.progress_bar_callback
    return bar if isinstance(bar, StepProgress) else None


def pausing(trainer, doing):
    """A context in which training pauses to do something (shown as `doing`; its time not counted in the rate)."""
    progress = _progress(trainer)
    return progress.paused(doing) if progress is not None else nullcontext()


def report(trainer, line):
    """A line of the first process's output, above the bar."""
    if trainer.is_global_zero:
        progress = _progress(trainer)
        (progress.print if progress is not None else print)(line)
