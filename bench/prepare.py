"""Pictures per second of `python -m training.prepare`: Ray Data (local, --workers) against the plain loop, on the
same pictures in one run, for a cheap annotator (canny) and a network detector (mediapipe's pose, whose weights
ship in its wheel), with the loop's time per stage.

    python bench/prepare.py [--count 200] [--resolution 512] [--workers 2] [--annotators canny openpose_mediapipe]

The pictures are scikit-image's photos, each saved several times (JPEG); Ray's start (a few seconds) and a
warm-up pass of each engine (weights loaded, Ray's workers importing the annotators) are not in the rates.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import print_command, print_machine  # noqa: E402
from training.prepare import Options, annotate, list_items, load, prepare, sample_files, start_ray  # noqa: E402


def make_pictures(folder, count):
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(count):
        Image.fromarray(photos[i % len(photos)]).save(folder / f"photo{i:05d}.jpg", quality=92)
        (folder / f"photo{i:05d}.txt").write_text(f"photo {i}")


def stage_times(items, options, name):
    """Seconds per picture of each stage in the loop: reading, the annotator, encoding the sample."""
    from annotators import ANNOTATORS

    spent = {"read": 0.0, name: 0.0, "encode": 0.0}
    for item in items:
        start = time.perf_counter()
        row = load(item, options)
        spent["read"] += time.perf_counter() - start
        start = time.perf_counter()
        row = annotate(row, name, options, ANNOTATORS[name])
        spent[name] += time.perf_counter() - start
        start = time.perf_counter()
        sample_files(row, (name,))
        spent["encode"] += time.perf_counter() - start
    return {stage: seconds / len(items) for stage, seconds in spent.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--annotators", nargs="+", default=["canny", "openpose_mediapipe"])
    args = p.parse_args()
    import ray

    print_command()
    print_machine(f"ray {ray.__version__}")
    work = Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    try:
        (work / "in").mkdir()
        make_pictures(work / "in", args.count)
        items = list_items(work / "in")
        start = time.perf_counter()
        start_ray(workers=args.workers)
        ray_start = time.perf_counter() - start
        print(f"Ray's start: {ray_start:.1f} s (not in the rates below)")
        print()
        print("| annotator | loop pictures/s | cores the loop keeps busy | Ray Data pictures/s | Ray/loop | loop "
              "s/picture: read, annotate, encode |")
        print("|---|---|---|---|---|---|")
        for name in args.annotators:
            options = Options((name,), args.resolution)
            # warm-up: the loop's detector loads its weights, Ray's worker processes import the annotators
            prepare(items[:4], work / f"warm-{name}", options, per_shard=1000, engine="local", progress=False)
            prepare(items[:8 * args.workers], work / f"warm-ray-{name}", options, per_shard=1000, engine="ray",
                    workers=args.workers, progress=False)
            before = os.times()
            loop = prepare(items, work / f"loop-{name}", options, per_shard=50, engine="local", progress=False)
            after = os.times()
            busy = (after.user - before.user + after.system - before.system) / loop.seconds  # the loop's cores
            fast = prepare(items, work / f"ray-{name}", options, per_shard=50, engine="ray", workers=args.workers,
                           progress=False)
            same = all((work / f"loop-{name}" / f.name).read_bytes() == f.read_bytes()
                       for f in (work / f"ray-{name}").glob("*.tar"))
            stages = stage_times(items[:20], options, name)
            loop_rate, ray_rate = loop.read / loop.seconds, fast.read / fast.seconds
            print(f"| {name} | {loop_rate:.2f} | {busy:.2f} | {ray_rate:.2f} | {ray_rate / loop_rate:.2f} | "
                  f"{', '.join(f'{s:.3f}' for s in stages.values())} |{'' if same else ' (shards differ!)'}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
