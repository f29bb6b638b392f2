"""Generated images saved as PNG with their generation parameters in a text chunk, and read back."""

import json
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from ldm.checkpoint import atomic_path

PARAMS_KEY = "controlnet"  # JSON of every generation parameter
SUMMARY_KEY = "parameters"  # the one-line summary the web UIs show (prompt, then "Steps: ..., Seed: ...")


def summary(params):
    head = params.get("prompt", "")
    if params.get("negative_prompt"):
        head += f"\nNegative prompt: {params['negative_prompt']}"
    rest = ", ".join(f"{k}: {v}" for k, v in params.items() if k not in ("prompt", "negative_prompt"))
    return f"{head}\n{rest}"


def save_png(image, path, params):
    """Write `image` (HWC uint8) to `path` atomically, with `params` (JSON-able) in its text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMS_KEY, json.dumps(params))
    info.add_text(SUMMARY_KEY, summary(params))
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


# the pictures a generation reads besides its settings, saved next to its images: record key -> file suffix
BESIDE = {"hint": "map", "init_image": "init", "mask": "mask", "region_mask": "region"}


def save_beside(pictures, path_for, params=None):
    """Save each picture given (a BESIDE key -> HWC / HW uint8, or None) at `path_for(its suffix)`, with
    `params[key]` as its parameters; returns {key: file name} for the images' record."""
    return {key: save_png(picture, path_for(BESIDE[key]), (params or {}).get(key, {})).name
            for key, picture in pictures.items() if picture is not None}


def save_units(units, path_for):
    """The control units after the first (ControlUnits whose image is their condition map at the generation's
    size), saved beside the images as unit<k>-map and unit<k>-region (k = 2, 3, ...: the unit's place in the
    generation); their records, the images' "controls"."""
    return [{**unit.record(), **save_beside({"hint": unit.image, "region_mask": unit.region_mask},
                                            lambda suffix, k=k: path_for(f"unit{k}-{suffix}"))}
            for k, unit in enumerate(units, start=2)]


def read_params(path):
    """The parameters saved with a generated PNG."""
    with Image.open(path) as image:
        text = image.text.get(PARAMS_KEY) if hasattr(image, "text") else None
    if text is None:
        raise ValueError(f"{path} carries no generation parameters (no '{PARAMS_KEY}' PNG text chunk)")
    return json.loads(text)


def next_path(folder, stem):
    """A new outputs/<stem>-NNNNN.png, reserved on disk so concurrent requests never write the same file; its
    number is above those of every <stem>-...-NNNNN file there, so the files saved beside it can share it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [re.fullmatch(rf"{re.escape(stem)}-(?:[\w-]+-)?(\d+)(?:_\d+)?", p.stem)
               for p in folder.glob(f"{stem}-*.png")]
    n = max((int(m[1]) for m in numbers if m), default=0) + 1
    while True:
        path = folder / f"{stem}-{n:05d}.png"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            n += 1
