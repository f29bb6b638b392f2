"""Seconds per classifier-free-guidance sampling step at SD 1.5 size (random weights, batch 1).

Ours (ControlLDM.apply_model through the DDIM guidance helper) against diffusers' UNet2DConditionModel +
ControlNetModel on identical weights (converted with diffusers' own single-file helpers), run the way
diffusers' pipeline runs them (cond and uncond batched), and against the limit: the step's FLOPs divided
by this machine's measured fp32 matmul rate.

    python bench/sampling.py [--sizes 256 512] [--repeats 5]
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cldm.diffusers_interop import diffusers_models as to_diffusers  # noqa: E402
from cldm.model import create_model  # noqa: E402
from ldm.config import load_yaml  # noqa: E402
from ldm.ddim import guided_model_output  # noqa: E402

CONFIG = ROOT / "models/cldm_v15.yaml"
GUIDANCE = 9.0


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(0.05 * noise if p.dim() <= 1 else noise / p[0].numel() ** 0.5)


def diffusers_models(model):
    return to_diffusers(model.state_dict(), load_yaml(CONFIG))


def diffusers_step(unet, controlnet, x, t, context, uncontext, hint):
    x2, t2, ctx2, hint2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncontext, context]), torch.cat([hint, hint])
    down, mid = controlnet(x2, t2, encoder_hidden_states=ctx2, controlnet_cond=hint2, return_dict=False)
    eps = unet(x2, t2, encoder_hidden_states=ctx2, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    uncond, cond = eps.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(fn_a, fn_b, repeats):
    """Median seconds of each, interleaved (a, b, a, b, ...) so drifts of the machine hit both alike."""
    fn_a(), fn_b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def matmul_rate(n=2048, repeats=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"command: python bench/sampling.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32 CPU")
    torch.manual_seed(0)
    model = create_model(CONFIG).eval()
    randomize(model)
    unet, controlnet = diffusers_models(model)
    rate = matmul_rate()
    print(f"fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s")
    rows = []
    for size in args.sizes:
        gen = torch.Generator().manual_seed(size)
        x = torch.randn(1, 4, size // 8, size // 8, generator=gen)
        t = torch.tensor([500])
        context, uncontext = torch.randn(1, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen)
        hint = torch.rand(1, 3, size, size, generator=gen)
        cond = {"c_concat": [hint], "c_crossattn": [context]}
        uncond = {"c_concat": [hint], "c_crossattn": [uncontext]}
        with torch.no_grad():
            ours_fn = lambda: guided_model_output(model, x, t, cond, uncond, GUIDANCE)  # noqa: E731
            theirs_fn = lambda: diffusers_step(unet, controlnet, x, t, context, uncontext, hint)  # noqa: E731
            diff = (ours_fn() - theirs_fn()).abs().max().item()
            with FlopCounterMode(display=False) as counter:
                ours_fn()
            flops = counter.get_total_flops()
            ours, theirs = timed_pair(ours_fn, theirs_fn, args.repeats)
        rows.append((size, ours, theirs, flops / rate, flops, diff))
    print()
    print("| size | ours s/step | diffusers s/step | ours/diffusers | limit s/step | ours/limit | step GFLOP | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for size, ours, theirs, limit, flops, diff in rows:
        print(f"| {size}x{size} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} | {limit:.2f} | {ours / limit:.2f} "
              f"| {flops / 1e9:.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
