"""Seconds per ControlNet training step and peak memory at SD 1.5 size (random weights, batch 1, fp32 CPU).

Rows, each in a process of its own so that the memory it reports is its own:
- ours, defaults: train.py's step (training.module.diffusion_loss) encoding the image with the VAE and the
  prompt with the text encoder each step, the yaml's gradient checkpointing (on), AdamW;
- ours, cached: cached latents and text (the VAE and text encoder not held), gradient checkpointing, AdamW
  applied in backward (each weight updated as its gradient completes; no set of gradients held);
- ours, leanest: the same with 8-bit AdamW (bitsandbytes);
- diffusers-style with diffusers' memory options: its train_controlnet.py step (VAE and text encoder each step,
  both held) with gradient checkpointing, 8-bit AdamW and gradients set to None, on identical weights.
Sizes alternate row by row, so that drift of a shared machine falls on every row alike.

    python bench/training.py [--sizes 256 512] [--steps 2] [--rows ours cached lean]

`--family sdxl` measures SDXL's step at real size instead (UNet 2.6 billion weights; a full ControlNet, then a
small one), both sides as their memory options have them, on identical random weights:
- diffusers-style: train_controlnet_sdxl.py's step (prompt embeddings computed before training and the text
  encoders freed, the VAE encoding each step) with mixed precision (the frozen UNet and VAE in bf16), gradient
  checkpointing, 8-bit AdamW and gradients set to None;
- ours: train.py's step from the latent cache (the VAE and text encoders not held), the frozen weights in bf16,
  gradient checkpointing, 8-bit AdamW applied in backward;
- ours with --quantize-frozen int8: the same, the locked UNet's linear layers held in int8 (torchao).

    python bench/training.py --family sdxl --sizes 512 --steps 2 [--layouts full small]
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import print_command, print_machine  # noqa: E402
from ldm.threads import add_threads_argument, use_threads  # noqa: E402

CONFIG = ROOT / "models/cldm_v15.yaml"
PROMPT = "a photograph of a red house by a lake"
ROWS = {"peer": "diffusers-style, its memory options", "ours": "ours, defaults", "cached": "ours, cached",
        "lean": "ours, leanest"}


def eight_bit_adamw(params):
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(params, lr=1e-5)


def build_ours(row, size):
    from bench.sampling import randomize
    from cldm.model import create_model
    from training.cache import ModelEncoders
    from training.module import diffusion_loss, drop_what_a_cache_replaces, update_in_backward

    torch.manual_seed(0)
    model = create_model(CONFIG)  # the yaml's use_checkpoint: gradient checkpointing on
    randomize(model)
    model.sd_locked = True
    gen = torch.Generator().manual_seed(1)
    image, hint = torch.rand(1, size, size, 3, generator=gen) * 2 - 1, torch.rand(1, size, size, 3, generator=gen)
    batch = {"jpg": image, "txt": [PROMPT], "hint": hint}
    if row in ("cached", "lean"):
        with torch.no_grad():
            encoders = ModelEncoders(model)
            batch = {"moments": encoders.images(image), "context": encoders.prompts([PROMPT]),
                     "empty_context": encoders.prompts([""]), "txt": [PROMPT], "hint": hint}
        drop_what_a_cache_replaces(model, sampling=False)
        params = model.trainable_parameters()
        optimizer = eight_bit_adamw(params) if row == "lean" else torch.optim.AdamW(params, lr=1e-5)
        update_in_backward(params, optimizer)
    else:
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    model.train()

    def step():
        loss, _ = diffusion_loss(model, batch, torch.Generator().manual_seed(0), control=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_peer(size):
    import warnings

    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    from bench.sampling import diffusers_models, randomize
    from cldm.model import create_model
    from ldm.config import load_yaml

    torch.manual_seed(0)
    model = create_model(CONFIG)
    randomize(model)
    unet, controlnet = diffusers_models(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae_config = create_vae_diffusers_config_from_ldm(load_yaml(CONFIG), {}, image_size=size)
    vae = AutoencoderKL(**vae_config).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(model.state_dict(), vae_config))
    text_encoder = model.cond_stage_model.transformer.text_model  # a transformers CLIPTextModel's body
    tokens = model.cond_stage_model.tokenize([PROMPT])
    scale, alphas = model.scale_factor, model.alphas_cumprod.clone()
    del model
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    controlnet.train()
    unet.enable_gradient_checkpointing()
    controlnet.enable_gradient_checkpointing()
    optimizer = eight_bit_adamw(controlnet.parameters())
    gen = torch.Generator().manual_seed(1)
    image, hint = torch.rand(1, 3, size, size, generator=gen) * 2 - 1, torch.rand(1, 3, size, size, generator=gen)

    def step():
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x0 = vae.encode(image).latent_dist.sample(generator=gen) * scale
        context = text_encoder(input_ids=tokens)[0]
        t = torch.randint(0, 1000, (1,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        down, mid = controlnet(noisy, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


XL_YAML = ROOT / "models/sd_xl_base.yaml"
XL_ROWS = {"peer": "diffusers-style, its memory options", "ours": "ours, cached, bf16 frozen, 8-bit AdamW in backward",
           "int8": "ours, the same, the locked UNet's linear layers int8 (--quantize-frozen int8)"}


def build_xl(layout, seed=0):
    """Our SDXL with a ControlNet of `layout`, every weight random (the same in every process)."""
    from bench.sampling import randomize
    from cldm.control_files import layout_depths, params_on_base
    from cldm.model import build_model, controlled
    from ldm.config import load_yaml

    config = load_yaml(XL_YAML)
    base = config["model"]["params"]["network_config"]["params"]
    config = controlled(config, params_on_base(base, 3, layout_depths(base, layout)))
    torch.manual_seed(seed)
    model = build_model(config, initialise=False)
    randomize(model, seed)
    return model, config


def xl_inputs(size):
    gen = torch.Generator().manual_seed(1)
    image, hint = torch.rand(1, size, size, 3, generator=gen) * 2 - 1, torch.rand(1, size, size, 3, generator=gen)
    return image, hint


def build_ours_xl(layout, size, quantize=False):
    from ldm.unet import set_gradient_checkpointing
    from training.cache import ModelEncoders
    from training.module import diffusion_loss, drop_what_a_cache_replaces, quantize_frozen_linears, update_in_backward

    model, _ = build_xl(layout)
    model.sd_locked = True
    set_gradient_checkpointing(model, True)  # --gradient-checkpointing (SDXL's yaml leaves it off)
    image, hint = xl_inputs(size)
    with torch.no_grad():
        encoders = ModelEncoders(model)
        batch = {"moments": encoders.images(image), "conditioning": encoders.prompts([PROMPT]).tensors(),
                 "empty_conditioning": encoders.dropped().tensors(), "txt": [PROMPT], "hint": hint,
                 "size_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)}
    drop_what_a_cache_replaces(model, sampling=False)
    for param in model.parameters():  # bf16-mixed: what nothing trains is held in bf16
        if not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    if quantize:
        quantize_frozen_linears(model.model)
    params = model.trainable_parameters()
    update_in_backward(params, eight_bit_adamw(params))
    model.train()

    def step():  # autocast as Lightning's bf16-mixed sets it (train.py's): no cache of the bf16 weight copies
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            loss, _ = diffusion_loss(model, batch, torch.Generator().manual_seed(0), control=True)
        loss.backward()

    return step


def build_peer_xl(layout, size):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    from cldm.diffusers_interop import control_to_diffusers_keys, diffusers_controlnet_config, diffusers_unet_config
    from ldm.sdxl import SizeIds

    model, config = build_xl(layout)
    image, hint = xl_inputs(size)
    with torch.no_grad():  # the script computes the prompt's embeddings before training, then frees the encoders
        cond = model.condition([PROMPT], SizeIds.of(size, size))
    prompt_embeds, text_embeds = cond.crossattn, cond.vector[:, :1280]
    time_ids = SizeIds.of(size, size).tensor()
    state = model.state_dict()
    unet_params = config["model"]["params"]["network_config"]["params"]
    unet_config, cn_config = diffusers_unet_config(unet_params), diffusers_controlnet_config(config)
    vae_config = create_vae_diffusers_config_from_ldm(config, state)
    with torch.device("meta"):
        unet, controlnet = UNet2DConditionModel(**unet_config), ControlNetModel(**cn_config)
        vae = AutoencoderKL(**vae_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet_config), assign=True)
    controlnet.load_state_dict(control_to_diffusers_keys(model.control_model.state_dict(), cn_config), assign=True)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae_config), assign=True)
    scale, alphas = model.scale_factor, model.alphas_cumprod.clone()
    del model, state, cond
    for frozen in (unet, vae):
        frozen.requires_grad_(False).to(torch.bfloat16)
    controlnet.train()
    unet.enable_gradient_checkpointing()
    controlnet.enable_gradient_checkpointing()
    optimizer = eight_bit_adamw(controlnet.parameters())
    pixels, control_image = image.permute(0, 3, 1, 2), hint.permute(0, 3, 1, 2)
    added = {"text_embeds": text_embeds, "time_ids": time_ids}

    def step():
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x0 = vae.encode(pixels.to(torch.bfloat16)).latent_dist.sample(generator=gen).float() * scale
        t = torch.randint(0, 1000, (1,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16):
            down, mid = controlnet(noisy, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added,
                                   controlnet_cond=control_image, return_dict=False)
            pred = unet(noisy, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        torch.nn.functional.mse_loss(pred.float(), noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class PeakMemory:
    """Samples this process's resident memory every few milliseconds while active; keeps the peak."""

    def __init__(self, interval=0.005):
        self.interval, self.peak, self.running = interval, 0, False

    @staticmethod
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.running, self.peak = True, self.resident()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, self.resident())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def release_freed_memory():
    """Hand freed heap back to the system: building a row frees a whole model's worth of temporaries, which the
    allocator would otherwise keep and count in the row's resident memory."""
    gc.collect()
    if platform.system() == "Linux":
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_one(row, size, steps):
    """One row, in this process: (median s/step, resident GiB before training, peak GiB while training). An SDXL
    row is "peer-xl:<layout>", "ours-xl:<layout>" or "int8-xl:<layout>"."""
    if row.endswith(("full", "mid", "small")):
        kind, layout = row.split(":")
        step = build_peer_xl(layout, size) if kind == "peer-xl" else build_ours_xl(layout, size, kind == "int8-xl")
    else:
        step = build_peer(size) if row == "peer" else build_ours(row, size)
    release_freed_memory()
    loaded = PeakMemory.resident()
    times = []
    with PeakMemory() as memory:
        step()  # warm-up (and the optimizer's state allocation)
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(times), loaded / 2**30, memory.peak / 2**30


def measure(row, size, steps):
    out = subprocess.run([sys.executable, __file__, "--steps", str(steps), "--one", f"{row},{size}",
                          "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row, after one warm-up step")
    parser.add_argument("--rows", nargs="+", default=["ours", "cached", "lean"], choices=["ours", "cached", "lean"],
                        help="our rows, each measured against the diffusers-style row of the same run")
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--layouts", nargs="+", default=["full", "small"], choices=["full", "mid", "small"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # row,size: run one row in this process
    add_threads_argument(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.one:
        row, size = args.one.split(",")
        seconds, loaded, peak = run_one(row, int(size), args.steps)
        print(json.dumps({"seconds": seconds, "loaded_gib": loaded, "peak_gib": peak}))
        return
    print_command()
    if args.family == "sdxl":
        return main_xl(args)
    print_machine(f"torch {torch.__version__}", "fp32 CPU", "SD 1.5 size", "batch 1", "sd_locked")
    print("memory: resident GiB with the models loaded, and the peak while training\n")
    print("| size | row | s/step | loaded GiB | peak GiB | time / diffusers-style | peak / diffusers-style |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        figures = {"peer": measure("peer", size, args.steps)}
        figures.update({row: measure(row, size, args.steps) for row in args.rows})
        peer = figures["peer"]
        for row in figures:
            f = figures[row]
            print(f"| {size} | {ROWS[row]} | {f['seconds']:.2f} | {f['loaded_gib']:.2f} | {f['peak_gib']:.2f} "
                  f"| {f['seconds'] / peer['seconds']:.2f} | {f['peak_gib'] / peer['peak_gib']:.2f} |", flush=True)


def main_xl(args):
    print_machine(f"torch {torch.__version__}", "CPU", "SDXL real size", "batch 1", "bf16 mixed precision",
                  "sd_locked")
    print("memory: resident GiB with the models loaded, and the peak while training\n")
    print("| size | ControlNet | row | s/step | loaded GiB | peak GiB | time / diffusers-style | peak / "
          "diffusers-style |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for layout in args.layouts:
            figures = {kind: measure(f"{kind}-xl:{layout}", size, args.steps) for kind in XL_ROWS}
            for kind, f in figures.items():
                peer = figures["peer"]
                print(f"| {size} | {layout} | {XL_ROWS[kind]} | {f['seconds']:.2f} | {f['loaded_gib']:.2f} | "
                      f"{f['peak_gib']:.2f} | {f['seconds'] / peer['seconds']:.2f} | "
                      f"{f['peak_gib'] / peer['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
