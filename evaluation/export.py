"""ControlNet++'s test sets (hub datasets) written as folders bench/controllability.py reads.

    pip install datasets
    python -m evaluation.export limingcv/MultiGen-20M_canny_eval --out eval/multigen       # canny, hed, lineart
    python -m evaluation.export limingcv/MultiGen-20M_depth_eval --condition-column control_depth \\
        --out eval/multigen_depth
    python -m evaluation.export limingcv/Captioned_ADE20K --condition-column control_seg --prompt-column prompt \\
        --out eval/ade20k

Without a condition column the pictures are written with their captions (photo.png + photo.txt) and the
condition's annotator makes the maps, as ControlNet++ makes its Canny, HED and line-art conditions; with one,
the dataset's maps are the conditions (the release's layout: source/, target/, prompt.json).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


def export(rows, out, image_column="image", prompt_column="text", condition_column=None, count=None):
    """Write `rows` (dicts of PIL images and text, as a `datasets` split yields them) into `out`; returns how
    many were written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if condition_column:
        (out / "source").mkdir(exist_ok=True)
        (out / "target").mkdir(exist_ok=True)
    lines = []
    written = 0
    for i, row in enumerate(rows):
        if count is not None and i >= count:
            break
        missing = [c for c in (image_column, prompt_column, condition_column) if c and c not in row]
        if missing:
            raise KeyError(f"row {i} has no column {missing[0]!r}; its columns are {sorted(row)}")
        picture = rgb(row[image_column])
        if condition_column:
            picture.save(out / "target" / f"{i}.png")
            rgb(row[condition_column]).save(out / "source" / f"{i}.png")
            lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png",
                                     "prompt": row[prompt_column]}))
        else:
            picture.save(out / f"{i}.png")
            (out / f"{i}.txt").write_text(row[prompt_column])
        written += 1
    if condition_column:
        (out / "prompt.json").write_text("".join(line + "\n" for line in lines))
    return written


def rgb(picture):
    return picture.convert("RGB") if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a hub dataset name or a local dataset folder")
    p.add_argument("--split", default="validation")
    p.add_argument("--out", required=True)
    p.add_argument("--image-column", default="image")
    p.add_argument("--prompt-column", default="text")
    p.add_argument("--condition-column", help="the column of condition maps (none: maps come from the annotator)")
    p.add_argument("--count", type=int, help="rows at most")
    args = p.parse_args(argv)
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise SystemExit("reading hub datasets needs the datasets library: pip install datasets") from error
    rows = load_dataset(args.dataset, split=args.split)
    n = export(rows, args.out, args.image_column, args.prompt_column, args.condition_column, args.count)
    print(f"wrote {n} cases to {args.out}")


if __name__ == "__main__":
    main()
