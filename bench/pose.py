"""How well the offline pose detectors find people, on public pictures whose people were counted by hand.

    python bench/pose.py [--split fresh|held-out|tune|all] [--verbose] [--tune]

The pictures and their labels are in bench/pose_photos (its README says where each comes from and how it was
counted): `people`, those whose upper body shows at a tenth of the picture's height or more, and `others`,
further people a detector may rightly find (small, blurred, cut off by the frame, a face alone). The tune set
(157 pictures) is where the thresholds were chosen. The held-out set (51) and the fresh set (60, counted later,
from other projects) were counted before anything ran on them; the held-out set measured the first rules, the
fresh set the rules with the COCO person detector (annotators.person_detector). The figures that count are
theirs, for all their pictures and for their photos alone (they also hold paintings, drawings and renders).

Per detector and set: pictures with no one in them given a skeleton; people found / people present (a
picture's skeletons up to its `people`); people drawn that are not there (skeletons beyond `people` +
`others`); seconds per picture. The peer is the offline detector this project had before: mediapipe's Pose
solution, one person, drawn when 6 of the 18 points are visible. OpenPose (controlnet-aux) is measured too where
its weights are on disk.

`--tune` searches the presence thresholds (annotators.people.Thresholds) on the tune set only: the settings
that draw no skeleton on its pictures without people, then find the most people, then draw the fewest extra.
"""

import argparse
import csv
import itertools
import platform
import sys
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotators import people, read_image  # noqa: E402
from annotators.util import prepare, stderr_silenced  # noqa: E402
from bench.report import print_command, print_machine  # noqa: E402

PHOTOS = Path(__file__).with_name("pose_photos")
RESOLUTION = 512  # the pose app's default detect resolution


def labeled(split):
    with open(PHOTOS / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split == "all" or r["split"] == split]


def picture(row):
    return prepare(read_image(str(PHOTOS / row["file"])), RESOLUTION)


def people_now(image):
    return len(people.detect_people(image, hands=True, face=True))


@lru_cache(maxsize=1)
def pose_solution():
    import mediapipe as mp

    with stderr_silenced():
        return mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1)


def one_person_before(image):
    """The previous offline detector: mediapipe's Pose solution (one person), 6 of the 18 points visible."""
    with stderr_silenced():
        result = pose_solution().process(image)
    if result.pose_landmarks is None:
        return 0
    return int(sum(p is not None for p in people.body_points(result.pose_landmarks, 0.5)) >= 6)


def openpose_people(image):
    from annotators.pose import detect_openpose

    return len(detect_openpose(image)[0])


def scores(rows, counts):
    """(no-person pictures with a skeleton, of how many; people found, present; people drawn not there)."""
    empty = [(r, n) for r, n in zip(rows, counts) if int(r["people"]) + int(r["others"]) == 0]
    found = sum(min(n, int(r["people"])) for r, n in zip(rows, counts))
    present_ = sum(int(r["people"]) for r in rows)
    extra = sum(max(0, n - int(r["people"]) - int(r["others"])) for r, n in zip(rows, counts))
    return sum(n > 0 for _, n in empty), len(empty), found, present_, extra


def report(name, rows, counts, seconds, split):
    with_skeleton, empty, found, present_, extra = scores(rows, counts)
    print(f"{name:<44} {split:<9} no-person pictures with a skeleton {with_skeleton}/{empty}   people found "
          f"{found}/{present_} ({found / max(present_, 1):.0%})   drawn not there {extra}   "
          f"{seconds / len(rows):.2f} s per picture")
    return found / max(present_, 1)


def run(name, detector, rows, split, verbose=False):
    counts, seconds = [], 0.0
    for row in rows:
        image = picture(row)
        start = time.perf_counter()
        counts.append(detector(image))
        seconds += time.perf_counter() - start
        if verbose:
            print(f"    {row['file']:<60} found {counts[-1]:>2}   people {row['people']:>2} (+{row['others']})")
    recall = report(name, rows, counts, seconds, split)
    photos = [(r, n) for r, n in zip(rows, counts) if r["kind"] == "photo"]  # not paintings, drawings, renders
    report("  of which photos", [r for r, _ in photos], [n for _, n in photos], seconds * len(photos) / len(rows),
           split)
    return recall


def tune(rows, tiles):
    """Grid search of the presence thresholds on `rows` (the tune set), from each picture's candidates."""
    g = people.graphs()
    found = []
    with stderr_silenced():
        for row in rows:
            image = np.ascontiguousarray(picture(row))
            found.append([people.with_hands_and_face(c, image, g) for c in people.candidates(image, g, tiles)])
    grid = {"detection": [0.6, 0.65, 0.7, 0.75, 0.8, 1.0], "sure": [0.8, 0.85, 0.9, 0.95],
            "face": [0.7, 0.75, 0.8, 0.85, 0.9], "pedestrian": [1.5, 1.7, 1.9, 2.1, 2.3, 9.0],
            "objects": [0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 9.0]}
    results = []
    for values in itertools.product(*grid.values()):
        thresholds = replace(people.Thresholds(), **dict(zip(grid, values)))
        counts = [sum(people.present(c, thresholds) for c in cs) for cs in found]
        with_skeleton, _, people_found, _, extra = scores(rows, counts)
        results.append(((with_skeleton, -people_found, extra), dict(zip(grid, values))))
    results.sort(key=lambda r: r[0])
    for allowed in sorted({key[0] for key, _ in results})[:4]:  # the trade-off: pictures without people drawn on
        key, values = min(((key, values) for key, values in results if key[0] == allowed), key=lambda r: r[0])
        print(f"  at most {allowed} no-person pictures with a skeleton: {key}  {values}")
    print("best (no-person pictures with a skeleton, -people found, drawn not there):")
    for key, values in results[:5]:
        print(f"  {key}  {values}")
    for name, options in grid.items():  # how each threshold alone moves the best
        best = {v: min(key for key, values in results if values[name] == v) for v in options}
        print(f"  {name}: " + "   ".join(f"{v}: {key}" for v, key in best.items()))
    seeds = [c.seed for cs in found for c in cs]
    print(f"candidates: {len(seeds)}, of which found from a face {seeds.count(people.FACE)}, by OpenCV's people "
          f"detector {seeds.count(people.PEDESTRIAN)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["fresh", "held-out", "tune", "all"], default=None,
                        help="which set to report (default: the fresh, held-out, then tune set)")
    parser.add_argument("--tune", action="store_true", help="search the presence thresholds on the tune set")
    parser.add_argument("--verbose", action="store_true", help="each picture's count")
    parser.add_argument("--tiles", type=int, nargs="+", default=list(people.Thresholds.tiles),
                        help="with --tune: the tile levels the candidates are found with")
    args = parser.parse_args()
    print_command()
    print_machine(platform.platform())
    if args.tune:
        tune(labeled(args.split or "tune"), tuple(args.tiles))
        return
    detectors = [("mediapipe, everyone (now)", people_now),
                 ("mediapipe Pose solution, one person (before)", one_person_before)]
    from annotators.pose import OPENPOSE_FILES
    from annotators.weights import weights_on_disk

    if weights_on_disk(OPENPOSE_FILES, None):
        detectors.append(("OpenPose (controlnet-aux)", openpose_people))
    else:
        print("OpenPose: its weights are not on disk here; not measured")
    for split in ([args.split] if args.split else ["fresh", "held-out", "tune"]):
        rows = labeled(split)
        recall = {name: run(name, detector, rows, split, args.verbose) for name, detector in detectors}
        now, before = recall[detectors[0][0]], recall[detectors[1][0]]
        print(f"{'':<44} {split:<9} people found, now / before: {now / max(before, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
