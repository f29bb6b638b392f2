"""Lightning training of the models in `ldm`/`cldm`: the VAE, the text-conditioned base, or a ControlNet.

The maths lives in the models (`p_losses`); this module chooses what is trained and draws every random
number (timesteps, noise, VAE samples, prompt dropout) from a generator seeded by the run's seed and the
number of micro-batches done, so a resumed run continues exactly as the uninterrupted one would.
"""

import math
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cldm.loss import denoising_loss, image_batch, step_generator, text_context, training_inputs
from training.reward import REWARDS, consistency_loss

STAGES = ("control", "base", "vae", "decoder")
TIMESTEP_SAMPLINGS = ("uniform", "cubic")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
# what mixed precision computes in: the weights nothing trains are held in it (no fp32 copy to cast from)
COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def diffusion_loss(model, batch, gen, control, options=None):
    """(loss, logs) of one batch (cldm.loss), with ControlNet++'s consistency reward added when `options` name
    one."""
    options = options or TrainingOptions()
    x0, cond = training_inputs(model, batch, gen, control, options.prompt_dropout)
    loss, logs = denoising_loss(model, x0, cond, gen, options.timesteps, options.noise_offset)
    if control and options.reward:
        if options.prompt_dropout:  # scored against the prompts' colours: none may be dropped
            cond = {**cond, "c_crossattn": [text_context(model, batch, gen, prompt_dropout=0.0)]}
        reward = consistency_loss(model, x0, cond, batch, gen, options.reward, options.reward_timesteps)
        loss = loss + options.reward_weight * reward
        logs = {**logs, "reward": reward.detach(), "loss": loss.detach()}
    return loss, logs


def drop_what_a_cache_replaces(model, sampling, decoding=False):
    """Free the parts of a ControlLDM that cached latents and text encodings replace: the VAE encoder, and unless
    images are sampled (logs, evaluations), the text encoder and, unless also decoded otherwise (a reward), the
    VAE decoder."""
    vae = model.first_stage_model
    vae.encoder = vae.quant_conv = None
    if not sampling:
        model.cond_stage_model = None
    if not (sampling or decoding):
        vae.decoder = vae.post_quant_conv = None


def quantize_frozen_linears(module):
    """Hold the frozen linear layers of `module` in int8, a scale per output channel (torchao's weight-only int8):
    half the bytes of bf16 for the 87% of SDXL's UNet that is linear; gradients still flow through them to what
    trains (a control's residuals), computed with the dequantized weights."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise RuntimeError("--quantize-frozen int8 needs torchao: pip install torchao") from error

    def frozen_linear(layer, name):
        return isinstance(layer, torch.nn.Linear) and not layer.weight.requires_grad

    quantize_(module, Int8WeightOnlyConfig(), filter_fn=frozen_linear)


def update_in_backward(params, optimizer):
    """Make backward apply `optimizer` to each of `params` as soon as its gradient is complete, then free that
    gradient; returns the hooks' handles. The optimizer skips weights without a gradient, so each call moves
    one weight, by exactly the update a step after backward would have given it."""

    def update(param):
        optimizer.step()
        param.grad = None

    return [param.register_post_accumulate_grad_hook(update) for param in params]


@dataclass
class TrainingOptions:
    """How a Trainee trains (train.py makes it from its flags; see there for each one's meaning)."""

    stage: str = "control"
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # or "cosine": down to 0 at max_steps
    warmup_steps: int = 0  # the learning rate rises linearly from 0 over these first steps
    max_steps: int = 0  # the run's length, which a cosine schedule needs
    prompt_dropout: float = 0.0
    noise_offset: float = 0.0
    timesteps: str = "uniform"  # how training timesteps are drawn (sample_timesteps)
    # ControlNet++'s consistency reward (training.reward): the condition whose detector scores one-step images
    # at timesteps below reward_timesteps, added to the loss times reward_weight (None: no reward)
    reward: str | None = None
    reward_weight: float = 0.5
    reward_timesteps: int = 200
    seed: int = 0
    kl_weight: float = 1e-6  # the VAE stage's KL term
    optimizer: str = "adamw"
    precision: str = "32"  # Lightning's name; mixed precision also holds the frozen weights in its dtype
    # each weight updated as soon as its gradient is complete, and the gradient freed: no whole set of
    # gradients is ever held (4 bytes a trained weight); the step is then taken in backward, not by Lightning
    step_in_backward: bool = False
    # "int8": the frozen UNet's linear layers held in int8 with a scale per output channel (torchao's weight-only
    # int8), half of bf16's bytes; None: in the precision's dtype
    quantize_frozen: str | None = None
    # the files the frozen weights were read from: a checkpoint names them instead of holding a copy
    frozen_sources: list = field(default_factory=list)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"learning-rate schedule {self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        if self.lr_schedule == "cosine" and self.max_steps <= self.warmup_steps:
            raise ValueError("a cosine schedule needs --max-steps beyond the warm-up steps")
        if self.timesteps not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep sampling {self.timesteps!r} is not one of {TIMESTEP_SAMPLINGS}")
        if self.reward is not None and self.reward not in REWARDS:
            raise ValueError(f"no differentiable detector of {self.reward!r} to reward with: one of {sorted(REWARDS)}")
        if self.reward is not None and self.reward_timesteps < 1:
            raise ValueError(f"reward timesteps {self.reward_timesteps}: they are drawn below this, so it must be >= 1")
        if self.reward is not None and self.stage != "control":
            raise ValueError("a consistency reward scores how images follow a control: use it with --stage control")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.step_in_backward and self.precision == "16-mixed":
            raise ValueError("updating in backward cannot unscale fp16 gradients: use bf16-mixed or 32")
        if self.quantize_frozen not in (None, "int8"):
            raise ValueError(f"--quantize-frozen {self.quantize_frozen}: int8 is the one offered")
        if self.quantize_frozen and self.stage != "control":
            raise ValueError("--quantize-frozen holds a locked UNet in int8 while a control trains: use it with "
                             "--stage control")
        self.frozen_sources = [str(source) for source in self.frozen_sources]


class Trainee(pl.LightningModule):
    """Trains one part of a latent diffusion model.

    stage="control": the ControlNet of a ControlLDM (plus the UNet decoder if not sd_locked);
    stage="base": the UNet and, if it is not frozen, the text encoder of a LatentDiffusion;
    stage="vae": the autoencoder, by reconstruction plus a small KL term;
    stage="decoder": the VAE decoder alone, by reconstruction. The encoder, and so the latent space every
    model trained on it lives in, stays fixed; this is how SD's improved VAE decoders (ft-MSE) were made.
    """

    strict_loading = False  # checkpoints leave out the frozen weights (see on_save_checkpoint)

    def __init__(self, model, options=None):
        super().__init__()
        self.model, self.options = model, options or TrainingOptions()
        self.automatic_optimization = not self.options.step_in_backward
        self.update_hooks = []
        self.micro_steps = 0  # micro-batches done; saved in checkpoints, seeds the randomness of the next one
        # batches all processes have trained on: the data stream's position, whatever the number of processes
        # a run is resumed with (None: a checkpoint from before it was saved)
        self.batches_seen = 0
        if self.stage == "vae":
            model.first_stage_model.train().requires_grad_(True)
        if self.stage == "decoder":
            for part in self.decoder_parts():
                part.train().requires_grad_(True)
        if self.options.precision in COMPUTE_DTYPES:
            for param in model.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(COMPUTE_DTYPES[self.options.precision])
        if self.options.quantize_frozen:
            quantize_frozen_linears(model.model)

    @property
    def stage(self):
        return self.options.stage

    def decoder_parts(self):
        vae = self.model.first_stage_model
        return [vae.post_quant_conv, vae.decoder]

    def trainable_parameters(self):
        if self.stage == "control":
            return self.model.trainable_parameters()
        if self.stage == "vae":
            return list(self.model.first_stage_model.parameters())
        if self.stage == "decoder":
            return [p for part in self.decoder_parts() for p in part.parameters()]
        params = list(self.model.model.parameters())
        return params + [p for p in self.model.cond_stage_model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optimizer = self.make_optimizer()
        if self.options.lr_schedule == "constant" and not self.options.warmup_steps:
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_factor(self, step):
        """The learning rate of optimizer step `step`, as a fraction of --learning-rate."""
        warmup, total = self.options.warmup_steps, self.options.max_steps
        if step < warmup:
            return (step + 1) / warmup
        if self.options.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
        return 1.0

    def make_optimizer(self):
        if self.options.optimizer == "adamw8bit":  # moments stored in 8 bits: a quarter of AdamW's 8 bytes a weight
            try:
                import bitsandbytes
            except ImportError as error:
                raise RuntimeError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from error
            return bitsandbytes.optim.AdamW8bit(self.trainable_parameters(), lr=self.options.learning_rate)
        return torch.optim.AdamW(self.trainable_parameters(), lr=self.options.learning_rate)

    def frozen_names(self):
        return {name for name, param in self.named_parameters() if not param.requires_grad}

    def generator(self):
        rank = self.global_rank if self._trainer is not None else 0
        return step_generator(self.options.seed, self.micro_steps, rank, self.device)

    def training_step(self, batch, batch_idx):
        gen = self.generator()
        self.micro_steps += 1
        self.batches_seen += self.trainer.world_size if self._trainer is not None else 1
        if self.stage in ("vae", "decoder"):
            loss, logs = self.vae_loss(image_batch(batch["jpg"]), gen)
        else:
            loss, logs = diffusion_loss(self.model, batch, gen, self.stage == "control", self.options)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, sync_dist=False)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True)
        if self.options.step_in_backward:
            self.manual_backward(loss)  # the hooks of on_fit_start update each weight as its gradient completes
            self.optimizers().step()  # no gradient is left to apply: this counts the step
            if self.lr_schedulers() is not None:  # Lightning steps schedules only under automatic optimization
                self.lr_schedulers().step()
        return loss

    def on_fit_start(self):
        if not self.options.step_in_backward:
            return
        if self.trainer.world_size > 1:  # DDP averages gradients after backward: too late for the update
            raise ValueError("updating in backward needs one process: each gradient must be final when its "
                             "backward is done, and DDP averages them afterwards")
        self.update_hooks = update_in_backward(self.trainable_parameters(), self.optimizers().optimizer)

    def on_fit_end(self):
        for hook in self.update_hooks:
            hook.remove()
        self.update_hooks = []

    def vae_loss(self, x, gen):
        with torch.set_grad_enabled(self.stage == "vae"):
            posterior = self.model.first_stage_model.encode(x)
            z = posterior.sample(generator=gen)
        reconstruction = self.model.first_stage_model.decode(z)
        rec = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        if self.stage == "decoder":
            return rec, {"rec": rec.detach()}
        kl = 0.5 * (posterior.mean**2 + posterior.std**2 - 1.0 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
        loss = rec + self.options.kl_weight * kl
        return loss, {"rec": rec.detach(), "kl": kl.detach()}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["micro_steps"], checkpoint["batches_seen"] = self.micro_steps, self.batches_seen
        if self.options.frozen_sources:  # the frozen weights are those files': a resume reads them again from there
            frozen = self.frozen_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["frozen_sources"] = self.options.frozen_sources

    def on_load_checkpoint(self, checkpoint):
        self.micro_steps, self.batches_seen = checkpoint["micro_steps"], checkpoint.get("batches_seen")
        missing = set(self.state_dict()) - set(checkpoint["state_dict"]) - self.frozen_names()
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} weights this run trains, e.g. {sorted(missing)[0]}")
