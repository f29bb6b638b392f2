"""Controllability as ControlNet++ measures it: generate from held-out condition maps, re-detect the condition
on every image with the same annotator, and score the agreement, with the control on and at strength 0.

Conditions and their figures: canny (edge F1 of kornia's Canny at 0.1/0.2, ControlNet++'s), canny_cv2 (the
same with the release's OpenCV Canny at 100/200), hed (MS-SSIM of ControlNetHED soft edges),
lineart (MS-SSIM), depth (RMSE in 0-255 levels, lower is better), seg (mIoU over ADE20K's 150 classes), pose
(OpenPose keypoint F1 within 5% of the image), shapes (the toy's outlines: IoU of the shape, colours, edge F1).
Real conditions sample as ControlNet++ does (UniPC, 20 steps, guidance 7.5, 4 images, negative prompt "worst
quality, low quality"); shapes as the toy does (toy.model.TOY_SAMPLING: UniPC, 4 steps, guidance 2; 1 image).

    python bench/controllability.py                        # the shipped toy on 200 held-out outlines
    python bench/controllability.py --shapes star ellipse blob     # ... of shapes it never trained on
    python bench/controllability.py --condition canny --control models/control_v11p_sd15_canny.pth \\
        --data eval/multigen --out outputs/controllability/canny

--data is a folder in the release's layout (prompt.json; the sources are the maps) or of photos with
captions beside them (photo.jpg + photo.txt; the annotator makes the maps). With --clip FOLDER (a
transformers CLIP model; models/clip-vit-base-patch16 when present) the CLIP score of images and prompts is
added. With --precision bf16 (or fp16) the same cases also run in fp32, so what the precision costs is measured
on identical seeds.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from apps.models import resolve_model  # noqa: E402
from evaluation.conditions import CONDITIONS  # noqa: E402
from evaluation.harness import Run, clip_scorer, default_settings, evaluate, write  # noqa: E402
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision  # noqa: E402
from ldm.threads import add_threads_argument, use_threads  # noqa: E402
from toy.model import load_default_model  # noqa: E402
from toy.shapes import NOVEL_SHAPES, SHAPES  # noqa: E402
from training.cases import cases_from  # noqa: E402

SHAPES_BAR = (0.85, 0.40)  # the toy's bar: mean IoU, and its gain over strength 0
DEFAULT_CLIP = ROOT / "models/clip-vit-base-patch16"  # openai/clip-vit-base-patch16, ControlNet++'s CLIP


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--condition", choices=sorted(CONDITIONS), default="shapes")
    add_threads_argument(p)
    p.add_argument("--control", help="the ControlNet checkpoint (default: the shipped toy model)")
    p.add_argument("--base", help="SD checkpoint for a control-only file (default: models/v1-5-pruned.ckpt)")
    p.add_argument("--config", help="model yaml (default: the yaml beside the control file, else cldm_v15.yaml)")
    p.add_argument("--data", help="held-out cases: a release-layout folder or photos with captions")
    p.add_argument("--count", type=int, default=200, help="cases at most (0: all of --data)")
    p.add_argument("--size", type=int, default=None, help="shorter side of the maps (default: 512; shapes 128)")
    p.add_argument("--seed", type=int, default=1000, help="held-out outline seed for shapes (training used 0, 1)")
    p.add_argument("--shapes", nargs="+", choices=SHAPES + NOVEL_SHAPES,
                   help="outlines of these shapes (default: the three trained on; star ellipse blob: never seen)")
    p.add_argument("--sample-seed", type=int, default=0, help="case i is generated with seed sample-seed + i")
    p.add_argument("--steps", type=int, help="sampling steps (default: the condition's evaluation setting)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the condition's evaluation setting)")
    p.add_argument("--images", type=int, help="images per case (default: 4; shapes 1)")
    p.add_argument("--sampler", help="sampler (default: UniPC; shapes DDIM)")
    p.add_argument("--clip", default=str(DEFAULT_CLIP) if DEFAULT_CLIP.is_dir() else None,
                   help="folder of a transformers CLIP model for the CLIP score (default: models/"
                        f"{DEFAULT_CLIP.name} when it is there)")
    p.add_argument("--annotator-ckpts", help="folder of annotator weights")
    p.add_argument("--out", help="folder for results.json, results.csv and grid.png "
                                 "(default: outputs/controllability/<condition>)")
    p.add_argument("--no-progress", action="store_true")
    add_precision_argument(p)
    return p.parse_args(argv)


def load(args, dtype):
    if not args.control:
        return load_default_model(dtype=dtype)
    model, note, _ = resolve_model((Path(args.control).name,), args.control, args.base, args.config, dtype=dtype)
    if model is None:
        raise SystemExit(note)
    return model


def main(argv=None):
    args = parse_args(argv)
    use_threads(args.threads)
    condition = CONDITIONS[args.condition]
    precision = resolve_precision(args.precision)
    changes = {k: v for k, v in dict(steps=args.steps, guidance_scale=args.guidance, num_samples=args.images,
                                     sampler=args.sampler, seed=args.sample_seed).items() if v is not None}
    settings = default_settings(condition, **changes)
    print(f"command: python bench/controllability.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, computing in "
          f"{precision} on {torch.get_num_threads()} threads")
    if args.shapes and (args.data or condition.annotator is not None):
        raise SystemExit("--shapes chooses the generated outlines of the shapes condition: not with --data or "
                         f"--condition {condition.name}")
    model = load(args, PRECISIONS[precision])
    size = args.size or (128 if condition.annotator is None else 512)
    try:
        cases = cases_from(condition, args.data, args.count, size, args.seed, args.annotator_ckpts, args.shapes)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    if not cases:
        raise SystemExit(f"no cases in {args.data}")
    runs = [Run("control", model), Run("strength 0", model, 0.0)]
    if precision != "fp32":
        runs.append(Run("control in fp32", load(args, None)))
    clip = clip_scorer(args.clip) if args.clip else None
    start = time.perf_counter()
    results, shown = evaluate(condition, cases, runs, settings, args.annotator_ckpts, not args.no_progress, clip)
    elapsed = time.perf_counter() - start
    out = write(args.out or ROOT / "outputs/controllability" / condition.name, condition, cases, results, shown,
                settings, {"control": args.control or "the shipped toy model", "precision": precision,
                           "seconds": elapsed})
    report(condition, results, settings, len(cases), elapsed, precision)
    print(f"\nwrote {out}/results.json, results.csv and grid.png")
    return results


def report(condition, results, settings, count, elapsed, precision):
    print(f"{count} cases of {condition.name}, {settings.num_samples} image(s) each, {settings.sampler} "
          f"{settings.steps} steps, guidance {settings.guidance_scale}, {elapsed:.0f} s in all\n")
    names = list(results)
    print("| metric | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for metric in results[names[0]]["summary"]:
        print(f"| {metric} | " + " | ".join(f"{results[n]['summary'][metric]:.4f}" for n in names) + " |")
    on, off = results["control"]["summary"], results["strength 0"]["summary"]
    better = "higher" if condition.higher_is_better else "lower"
    print(f"\n{condition.headline} ({better} is better): {on[condition.headline]:.4f} with the control, "
          f"{off[condition.headline]:.4f} at strength 0")
    if condition.name == "shapes":
        gain = on["iou"] - off["iou"]
        verdict = "meets" if on["iou"] >= SHAPES_BAR[0] and gain >= SHAPES_BAR[1] else "misses"
        print(f"bar (mean IoU >= {SHAPES_BAR[0]} and >= {SHAPES_BAR[1]:.2f} above the baseline): {verdict} "
              f"(IoU {on['iou']:.3f}, gain {gain:+.3f})")
    if "control in fp32" in results:
        low, full = on[condition.headline], results["control in fp32"]["summary"][condition.headline]
        print(f"{precision} against fp32 on the same seeds: {condition.headline} {low:.4f} vs {full:.4f}, "
              f"difference {low - full:+.4f}")


if __name__ == "__main__":
    main()
