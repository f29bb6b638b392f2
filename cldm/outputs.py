"""Generated images saved as PNG with their generation parameters in a text chunk, and read back."""

import json
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from ldm.checkpoint import atomic_path
from ldm.files import plain_name

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


class RecordError(ValueError):
    """A saved image's parameters that cannot be read back as a request."""


def read_params(path):
    """The parameters saved with a generated PNG: a JSON object of finite numbers, with the seed it was made
    with (each setting is checked as the request is built from it)."""
    with Image.open(path) as image:
        text = image.text.get(PARAMS_KEY) if hasattr(image, "text") else None
    if text is None:
        raise RecordError(f"{path} carries no generation parameters (no '{PARAMS_KEY}' PNG text chunk)")
    try:
        params = json.loads(text, parse_constant=not_json)
    except (ValueError, RecursionError) as error:
        raise RecordError(f"{path}'s generation parameters are not readable JSON ({error})") from None
    if not isinstance(params, dict):
        raise RecordError(f"{path}'s generation parameters are a JSON {type(params).__name__}, not an object")
    if "seed" not in params:
        raise RecordError(f"{path}'s generation parameters have no seed: the image cannot be made again")
    return params


def not_json(constant):
    raise ValueError(f"{constant} is not a JSON number")


def beside_record(record, name, what="file"):
    """The file a record names (`name`, from the saved parameters of the PNG `record`): only beside the record,
    so a record cannot point at other files (no folders, no '..', no absolute paths)."""
    if not plain_name(name):
        raise RecordError(f"{record} names {name!r} as its {what}: a record's files are plain file names beside "
                          "it")
    return Path(record).parent / name


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
