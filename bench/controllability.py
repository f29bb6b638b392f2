"""How well the shipped default models follow a shape outline, with the control on and off (strength 0).

For each held-out hint (a seed disjoint from training, or a dataset folder you give), generate an image and
measure, as the ControlNet++ paper does by re-detecting the condition on the output:
- IoU between the generated shape region (pixels nearer the prompt's shape colour than its background
  colour) and the inside of the hint outline (the outline with its holes filled);
- colour accuracy: the mean colour inside (outside) the outline within COLOR_TOLERANCE of the prompt's
  shape (background) colour;
- edge F1 between Canny edges of the output and the outline, each matched within EDGE_TOLERANCE pixels.

With `--precision bf16` (or fp16) the model computes in that precision and the same cases also run in fp32,
so the IoU difference the precision costs is measured on identical seeds (target: within 0.01).

    python bench/controllability.py [--count 200] [--seed 1000] [--data DIR] [--steps 20] [--precision auto]
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cldm.defaults import load_default_model  # noqa: E402
from cldm.pipeline import generate  # noqa: E402
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision  # noqa: E402
from training.data import PairDataset  # noqa: E402
from training.metrics import score  # noqa: E402
from training.shapes import make_sample, prompt_colors  # noqa: E402


def held_out_cases(args):
    if args.data:
        dataset = PairDataset(args.data)
        for i in range(min(args.count, len(dataset))):
            item = dataset[i]
            yield (item["hint"] * 255).round().astype(np.uint8), item["txt"]
    else:
        for i in range(args.count):
            hint, _, prompt, _ = make_sample(args.seed, i, args.size)
            yield hint, prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1000, help="held-out dataset seed (training used 0 and 1)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--data", help="a dataset folder (release layout) of outlines to use instead")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=9.0)
    add_precision_argument(parser)
    args = parser.parse_args()
    precision = resolve_precision(args.precision)
    print(f"command: python bench/controllability.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, computing in {precision}")
    model = load_default_model(dtype=PRECISIONS[precision])
    fp32_model = load_default_model() if precision != "fp32" else None
    results = {"control": [], "strength 0": [], "control in fp32": []}
    start = time.perf_counter()
    for i, (hint, prompt) in enumerate(tqdm(held_out_cases(args), total=args.count, desc="outlines")):
        try:
            color, background = prompt_colors(prompt)
        except ValueError as error:
            raise SystemExit(str(error)) from error
        runs = [("control", model, 1.0), ("strength 0", model, 0.0)]
        if fp32_model is not None:
            runs.append(("control in fp32", fp32_model, 1.0))
        for name, runner, strength in runs:
            images, _ = generate(runner, hint, prompt, steps=args.steps, guidance_scale=args.guidance,
                                 strength=strength, seed=i, verbose=False)
            results[name].append(score(images[0], hint, color, background))
    elapsed = time.perf_counter() - start
    n = len(results["control"])
    print(f"{n} held-out outlines, {args.steps} DDIM steps, guidance {args.guidance}, {elapsed:.0f} s in all\n")
    print("| metric | with control | strength 0 (baseline) | difference |")
    print("|---|---|---|---|")
    for metric in ("iou", "color_ok", "background_ok", "edge_f1"):
        on = np.mean([r[metric] for r in results["control"]])
        off = np.mean([r[metric] for r in results["strength 0"]])
        print(f"| {metric} | {on:.3f} | {off:.3f} | {on - off:+.3f} |")
    mean_iou = np.mean([r["iou"] for r in results["control"]])
    gain = mean_iou - np.mean([r["iou"] for r in results["strength 0"]])
    verdict = "meets" if mean_iou >= 0.85 and gain >= 0.4 else "misses"
    print(f"\nbar (mean IoU >= 0.85 and >= 0.40 above the baseline): {verdict} (IoU {mean_iou:.3f}, gain {gain:+.3f})")
    if fp32_model is not None:
        fp32_iou = np.mean([r["iou"] for r in results["control in fp32"]])
        verdict = "meets" if abs(mean_iou - fp32_iou) <= 0.01 else "misses"
        print(f"{precision} against fp32 on the same seeds: IoU {mean_iou:.3f} vs {fp32_iou:.3f}, difference "
              f"{mean_iou - fp32_iou:+.3f} (target within 0.01: {verdict})")


if __name__ == "__main__":
    main()
