"""Seconds per ControlNet training step and peak memory at SD 1.5 size (random weights, 256x256, batch 1).

Ours: ControlLDM.p_losses with sd_locked, AdamW on the control. Peer: a diffusers-style step (frozen
UNet2DConditionModel, trainable ControlNetModel, the same optimizer) on identical weights. Each runs with
and without latent caching (the VAE encoding of the target per step, or a stored latent) and with and
without gradient checkpointing. Each configuration runs in its own process, so the memory it reports
is its own.

    python bench/training.py [--steps 3]
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

CONFIG = ROOT / "models/cldm_v15.yaml"
SIZE = 256


def build_ours(checkpointing):
    from bench.sampling import randomize
    from cldm.model import create_model
    from ldm.unet import set_gradient_checkpointing

    torch.manual_seed(0)
    model = create_model(CONFIG)
    randomize(model)
    model.sd_locked = True
    set_gradient_checkpointing(model, checkpointing)
    return model


def ours_step(model, optimizer, batch, cached):
    gen = torch.Generator().manual_seed(0)
    if cached:
        x0 = batch["latent"]
    else:
        with torch.no_grad():
            x0 = model.get_first_stage_encoding(model.encode_first_stage(batch["image"]), generator=gen)
    cond = {"c_concat": [batch["hint"]], "c_crossattn": [batch["context"]]}
    t = torch.randint(0, 1000, (1,), generator=gen)
    loss, _ = model.p_losses(x0, cond, t, noise=torch.randn(x0.shape, generator=gen))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def peer_step(parts, optimizer, batch, cached):
    unet, controlnet, vae, scale, alphas = parts
    gen = torch.Generator().manual_seed(0)
    if cached:
        x0 = batch["latent"]
    else:
        with torch.no_grad():
            x0 = vae.encode(batch["image"]).latent_dist.sample(generator=gen) * scale
    t = torch.randint(0, 1000, (1,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas[t].reshape(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    down, mid = controlnet(noisy, t, encoder_hidden_states=batch["context"], controlnet_cond=batch["hint"],
                           return_dict=False)
    pred = unet(noisy, t, encoder_hidden_states=batch["context"], down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def build_peer(model, checkpointing):
    import warnings

    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    from bench.sampling import diffusers_models
    from ldm.config import load_yaml

    unet, controlnet = diffusers_models(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae_config = create_vae_diffusers_config_from_ldm(load_yaml(CONFIG), {}, image_size=SIZE)
    vae = AutoencoderKL(**vae_config).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(model.state_dict(), vae_config))
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    controlnet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    return unet, controlnet, vae, model.scale_factor, model.alphas_cumprod.clone()


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


def run_one(impl, cached, checkpointing, steps):
    """One configuration, in this process: (median s/step, resident GiB before training, peak GiB in training)."""
    torch.manual_seed(0)
    model = build_ours(checkpointing)
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1,
             "hint": torch.rand(1, 3, SIZE, SIZE, generator=gen),
             "context": torch.randn(1, 77, 768, generator=gen)}
    with torch.no_grad():
        batch["latent"] = model.get_first_stage_encoding(model.encode_first_stage(batch["image"]))
    if impl == "ours":
        model.train()
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
        step = lambda: ours_step(model, optimizer, batch, cached)  # noqa: E731
    else:
        parts = build_peer(model, checkpointing)
        del model
        optimizer = torch.optim.AdamW(parts[1].parameters(), lr=1e-5)
        step = lambda: peer_step(parts, optimizer, batch, cached)  # noqa: E731
    gc.collect()
    loaded = PeakMemory.resident()
    times = []
    with PeakMemory() as memory:
        step()  # warm-up (and the optimizer's state allocation)
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(times), loaded / 2**30, memory.peak / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # impl,cached,checkpointing: run one configuration
    args = parser.parse_args()
    if args.one:
        impl, cached, checkpointing = args.one.split(",")
        seconds, loaded, peak = run_one(impl, cached == "1", checkpointing == "1", args.steps)
        print(json.dumps({"seconds": seconds, "loaded_gib": loaded, "peak_gib": peak}))
        return
    print(f"command: python bench/training.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, fp32 CPU, "
          f"SD 1.5 size, {SIZE}x{SIZE}, batch 1, sd_locked, AdamW")
    print("memory: resident GiB with the models loaded, and the peak while training (optimizer state and "
          "activations on top)\n")
    print("| latents | grad. checkpointing | ours s/step | diffusers-style s/step | ours/diffusers "
          "| ours loaded / peak GiB | diffusers-style loaded / peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for cached in ("0", "1"):
        for checkpointing in ("0", "1"):
            figures = {}
            for impl in ("ours", "peer"):
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one",
                                      f"{impl},{cached},{checkpointing}"], capture_output=True, text=True, check=True)
                figures[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            o, p = figures["ours"], figures["peer"]
            print(f"| {'cached' if cached == '1' else 'VAE each step'} | {'on' if checkpointing == '1' else 'off'} "
                  f"| {o['seconds']:.2f} | {p['seconds']:.2f} | {o['seconds'] / p['seconds']:.2f} "
                  f"| {o['loaded_gib']:.1f} / {o['peak_gib']:.1f} | {p['loaded_gib']:.1f} / {p['peak_gib']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
