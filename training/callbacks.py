"""Checkpoints written atomically every N steps, and sample grids every N steps.

Under FSDP and DeepSpeed ZeRO-3 each process holds a shard of the weights: exporting them and sampling with
them are collective, so every process takes part (gathering the weights as its strategy requires) and the
first one writes. Under DDP the others would wait for it at the next step anyway.

Each pauses training: meanwhile the progress bar says what it is doing and its clock stops (training.progress),
and then a line says what was written.
"""

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from cldm.pipeline import generate
from cldm.sharding import whole_weights
from ldm.checkpoint import atomic_path, save_safetensors
from training.progress import pausing, report


def trained_state(trainer, pl_module):
    """The state of what is being trained, whole, on the first process (every process must call this)."""
    strategy = trainer.strategy
    if isinstance(strategy, pl.strategies.DeepSpeedStrategy) and strategy.zero_stage_3:
        with whole_weights(trainer):
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
    else:
        state = strategy.lightning_module_state_dict()  # FSDP gathers it to the first process
    prefix = "model.control_model." if pl_module.stage == "control" else "model."
    kept = "control_model." if pl_module.stage == "control" else ""
    return {kept + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class AtomicCheckpoint(pl.Callback):
    """Every N optimizer steps: `step-NNNNNN.ckpt` (full Lightning state, for --resume) and the weights being
    trained in the release layout as safetensors (`control-NNNNNN.safetensors` for a ControlNet)."""

    def __init__(self, dirpath, every_n_steps):
        self.dirpath, self.every_n_steps = Path(dirpath), every_n_steps
        self.last_saved = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self.last_saved and step > 0:
            self.save(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self.last_saved:
            self.save(trainer, pl_module, trainer.global_step)

    def save(self, trainer, pl_module, step):
        self.last_saved = step
        final = self.dirpath / f"step-{step:06d}.ckpt"
        weights = self.dirpath / f"{pl_module.stage}-{step:06d}.safetensors"
        with pausing(trainer, f"saving checkpoint {final.name}"):
            with atomic_path(final, commit=trainer.is_global_zero) as tmp:
                trainer.save_checkpoint(tmp, weights_only=False)  # collective under DDP; only rank 0 writes
            state = trained_state(trainer, pl_module)
            if trainer.is_global_zero:
                save_safetensors(state, weights)
        report(trainer, f"step {step}: checkpoint {final} (to --resume), {pl_module.stage} weights {weights}")


def due(trainer, batch_idx, every_n_steps):
    """At the first micro-batch of every optimizer step that is a multiple of every_n_steps."""
    return trainer.global_step % every_n_steps == 0 and batch_idx % trainer.accumulate_grad_batches == 0


class ImageLogger(pl.Callback):
    """Every N steps, a grid of (hint | sample) rows for fixed dataset items, written to `dirpath`."""

    def __init__(self, dirpath, every_n_steps, items, steps=20, seed=0):
        self.dirpath, self.every_n_steps, self.items = Path(dirpath), every_n_steps, items
        self.steps, self.seed = steps, seed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if due(trainer, batch_idx, self.every_n_steps):
            path = self.dirpath / f"step-{step:06d}.png"
            with pausing(trainer, f"logging images {path.name}"):
                with whole_weights(trainer):
                    grid = self.grid(pl_module)
                if trainer.is_global_zero:
                    self.dirpath.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(grid).save(path)
            report(trainer, f"step {step}: images {path}")

    @torch.no_grad()
    def grid(self, pl_module):
        model = pl_module.model
        was_training = model.training
        model.eval()
        rows = []
        for item in self.items:
            hint = (item["hint"] * 255).round().astype(np.uint8)
            control = hint if pl_module.stage == "control" else None
            images, _ = generate(model, control, item["txt"], steps=self.steps, seed=self.seed, verbose=False,
                                 size=hint.shape[:2])
            rows.append(np.concatenate([hint, images[0]], axis=1))
        model.train(was_training)
        return np.concatenate(rows, axis=0)


class ControllabilityEval(pl.Callback):
    """Every N steps, bench/controllability.py's measures of the ControlNet being trained on fixed held-out cases
    (evaluation.harness: the shapes' outlines, or any condition's maps), logged as eval/<metric>."""

    def __init__(self, every_n_steps, condition, cases, settings, weights=None):
        self.every_n_steps, self.condition, self.cases = every_n_steps, condition, cases
        self.settings, self.weights = settings, weights
        self.started, self.evaluating = None, 0.0  # so the log can tell minutes of training from its own

    def on_train_start(self, trainer, pl_module):
        self.started, self.evaluating = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if due(trainer, batch_idx, self.every_n_steps):
            began = time.perf_counter()
            with pausing(trainer, f"evaluating {self.condition.name}"), whole_weights(trainer):
                means = self.evaluate(pl_module.model)
            # wall-clock minutes of this run spent training, not evaluating (the learning curve's x axis)
            means["train_minutes"] = (began - self.started - self.evaluating) / 60
            self.evaluating += time.perf_counter() - began
            if trainer.is_global_zero:
                trainer.logger.log_metrics({f"eval/{k}": v for k, v in means.items()}, step=step)
                report(trainer, f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))

    @torch.no_grad()
    def evaluate(self, model):
        from evaluation.harness import Run, evaluate

        was_training = model.training
        model.eval()
        results, _ = evaluate(self.condition, self.cases, [Run("control", model)], self.settings, self.weights,
                              progress=False)
        model.train(was_training)
        return results["control"]["summary"]
