"""The training loss of a latent diffusion model, with a ControlNet or without: it lives with the model, so the
release's `trainer.fit(model)` (ControlLDM.training_step) and train.py's Trainee take the same step.

Every random number (the VAE sample, prompt dropout, timesteps, noise) comes from the generator `gen`, drawn in a
fixed order, so a run seeded the same way draws the same numbers (training.module seeds one per micro-batch).
"""

import torch

from ldm.autoencoder import DiagonalGaussianDistribution
from ldm.conditioning import Conditioning
from ldm.sdxl import DiffusionEngine


def image_batch(array):
    """(B, H, W, C) as the release's datasets give it -> (B, C, H, W) contiguous float."""
    return array.permute(0, 3, 1, 2).contiguous().float()


def step_generator(seed, micro_steps, rank, device):
    """The generator of every random number of one micro-batch: a function of the run's seed, the micro-batches
    done and the process, so a resumed run draws what the uninterrupted one would have."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + micro_steps) * 1009 + rank)


def training_inputs(model, batch, gen, control, prompt_dropout=0.0):
    """(x0, cond) of one batch of the release's dict(jpg, txt, hint) (or cached moments and contexts): the latents,
    the prompts' context (each dropped to the empty prompt's with probability `prompt_dropout`) and, for a
    ControlNet (`control`), the hint."""
    x0 = latents(model, batch, gen)
    cond = {"c_crossattn": [text_context(model, batch, gen, prompt_dropout)], "c_concat": None}
    if control and "control_types" in batch:  # a ControlNet-Union: (B, K) maps, each sample a random subset
        cond["c_concat"] = [batch["hint"].permute(0, 1, 4, 2, 3).contiguous().float()]
        cond["control_types"] = condition_subsets(batch["control_types"], gen)
    elif control:
        cond["c_concat"] = [image_batch(batch["hint"])]
    return x0, cond


def condition_subsets(types, gen):
    """(B, K) control types -> the same with those a sample leaves out set to -1: each sample keeps a random
    non-empty subset of its conditions (each kept with probability 1/2, one drawn if none was), as ControlNet-Union
    was trained on one or several conditions at once."""
    keep = torch.rand(types.shape, generator=gen, device=gen.device) < 0.5
    one = torch.randint(0, types.shape[1], (types.shape[0],), generator=gen, device=gen.device)
    keep[torch.arange(types.shape[0]), one] |= ~keep.any(dim=1)
    return torch.where(keep.to(types.device), types, torch.full_like(types, -1))


def denoising_loss(model, x0, cond, gen, timesteps="uniform", noise_offset=0.0):
    """(loss, logs) of the model's noise prediction: a timestep per image, drawn as `timesteps` says, and noise."""
    t = sample_timesteps(timesteps, x0.shape[0], model.num_timesteps, gen)
    return model.p_losses(x0, cond, t, noise=training_noise(x0.shape, gen, noise_offset, x0.device))


def sample_timesteps(how, count, num_timesteps, gen):
    """`count` training timesteps in [0, num_timesteps): "uniform" as SD was trained, or "cubic", t = (1 - u^3) T
    for a uniform u (T2I-Adapter's), which draws 79% of them from the noisier half. A control decides an
    image's layout, and the layout is settled in the first, noisiest steps of sampling: the later ones refine
    textures the base already knows how to draw."""
    if how == "uniform":
        return torch.randint(0, num_timesteps, (count,), generator=gen, device=gen.device)
    u = torch.rand(count, generator=gen, device=gen.device)
    return ((1 - u**3) * num_timesteps).long().clamp_(max=num_timesteps - 1)


def latents(model, batch, gen):
    if "moments" in batch:  # cached VAE encodings
        posterior = DiagonalGaussianDistribution(batch["moments"].float())
        return model.get_first_stage_encoding(posterior, generator=gen)
    with torch.no_grad():
        posterior = model.encode_first_stage(image_batch(batch["jpg"]))
    return model.get_first_stage_encoding(posterior, generator=gen)


def text_context(model, batch, gen, prompt_dropout):
    """The batch's Conditioning, each prompt dropped with probability `prompt_dropout`: to the empty prompt's
    encoding on SD 1.x/2.x (as the release trained), to zero text features on SDXL (as sgm trained it and as
    its pipelines read an empty prompt), SDXL's size ids always those each picture went through."""
    prompts = list(batch["txt"])
    drop = torch.rand(len(prompts), generator=gen, device=gen.device) < prompt_dropout
    if "conditioning" in batch:  # cached text encodings, with a dropped prompt's beside them
        cached, empty = (Conditioning.from_tensors(batch[key]) for key in ("conditioning", "empty_conditioning"))
        text = cached.where(drop, empty).map(torch.Tensor.float)
        return model.with_size_ids(text, batch["size_ids"]) if isinstance(model, DiffusionEngine) else text
    encoder = model.cond_stage_model
    if isinstance(model, DiffusionEngine):  # SDXL's conditioner
        if "size_ids" not in batch:
            raise ValueError("SDXL trains on each picture's size and crop ids: the batch has no size_ids")
        return encoder.condition(prompts, batch["size_ids"], dropped=drop.to(batch["size_ids"].device))
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
    if any(p.requires_grad for p in encoder.parameters()):
        return Conditioning.of(encoder.encode(prompts))
    return model.condition(prompts)


def training_noise(shape, gen, noise_offset, device):
    """Gaussian noise, plus `noise_offset` times a per-image, per-channel constant ("offset noise").

    SD's schedule leaves sqrt(alpha_bar_T) ~ 0.07 of the image in x_T, enough for a model to learn to read
    an image's overall colour from the mean of the noise instead of from the prompt; at sampling time that
    mean is random, and so are the colours of flat backgrounds. The offset hides that leak.
    """
    noise = torch.randn(shape, generator=gen, device=device)
    if noise_offset:
        offset = torch.randn(shape[:2], generator=gen, device=device)[..., None, None]
        noise = noise + noise_offset * offset
    return noise
