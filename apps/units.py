"""More controls in one app, as the A1111 extension's control units: beside the app's own control, up to two
more units, each with its own picture, preprocessor, control file, strength, start/end, mode, block weights
and region mask. A unit without a picture reads the app's input picture.

Every input of a unit is named `unit<k>_<input>` (k = 2, 3) in the page and the HTTP API.
"""

from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from annotators.util import ImageError
from cldm.settings import ControlUnit, SettingError, checked_value
from ldm.files import MODELS

EXTRA_UNITS = (2, 3)
OWN_CONTROL = "the app's control"  # the control choice's label for the model's own ControlNet (a label only)
CONTROL_SUFFIXES = (".pth", ".ckpt", ".safetensors", ".bin")  # .bin: IP-Adapters' releases
CONTROL_WORDS = ("control", "adapter")  # how models/ tells a control file (ControlNet, T2I- or IP-Adapter) from a base


def unit_inputs(k):
    """The names of unit k's inputs, in the page's order: `enabled`, then each ControlUnit field."""
    return [f"unit{k}_enabled", *(f"unit{k}_{f.name}" for f in fields(ControlUnit))]


def unit_defaults(k, preprocessor):
    """Unit k's inputs as the page starts: off, detecting with `preprocessor`, running the app's own control."""
    defaults = {f"unit{k}_{f.name}": f.default for f in fields(ControlUnit)}
    return {**defaults, f"unit{k}_enabled": False, f"unit{k}_preprocessor": preprocessor,
            f"unit{k}_control": OWN_CONTROL}


def pop_unit(k, values):
    """Unit k's inputs taken out of the page's named values (those missing keep their defaults): its ControlUnit,
    or None when it is not enabled. Its region mask is read as a mask (region_of); the control choice's label,
    or none, is the model's own ControlNet (None)."""
    prefix = f"unit{k}_"
    given = {name[len(prefix):]: values.pop(name) for name in list(values) if name.startswith(prefix)}
    try:
        if not checked_value("enabled", given.pop("enabled", False), bool):
            return None
        if given.get("control") in ("", OWN_CONTROL):
            given["control"] = None
        if str(given.get("block_weights", "")).strip() == "":
            given.pop("block_weights", None)
        given["region_mask"] = region_of(given.get("region_mask"))
        return ControlUnit().with_values(**given)
    except SettingError as error:
        raise SettingError(f"control unit {k}: {error}") from None


def control_choices(folders=(MODELS,)):
    """The unit's control choices: the app's own, then by name the control files of `folders`: in models/, those
    named as controls or adapters (it holds the bases too), every checkpoint in a folder the server adds."""
    files = {p.name for folder in folders for p in Path(folder).glob("*") if p.suffix in CONTROL_SUFFIXES
             and (any(w in p.name.lower() for w in CONTROL_WORDS) or Path(folder).resolve() != MODELS)}
    return [OWN_CONTROL, *sorted(files)]


def region_of(value):
    """A region mask input -> HxW uint8 (255 where the control acts), or None for everywhere.

    A mask editor's value is its picture with strokes painted on it, each marking where it is white
    (`marked`); with nothing marked there is no mask, so an untouched editor leaves the control everywhere. A
    plain picture is taken as it is, grey levels included (all black: the control acts nowhere). Anything else
    is refused: a mask is never ignored."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return lightness(mask_picture(value))
    background = value.get("background")
    marks = [] if background is None else [marked(mask_picture(background))]
    marks += [marked(mask_picture(layer)) for layer in value.get("layers") or [] if layer is not None]
    if not marks and value.get("composite") is not None:  # the editor's flattened picture alone
        marks = [marked(mask_picture(value["composite"]))]
    if not marks:
        return None
    height, width = marks[0].shape
    union = np.max([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in marks], axis=0)
    return union if union.any() else None


def mask_picture(value):
    """A mask's picture as an array: HW or HWC (1, 3 or 4 channels) of uint8 (bool: white where true)."""
    picture = np.asarray(value.convert("RGBA") if isinstance(value, Image.Image) else value)
    if picture.dtype == np.bool_:
        picture = picture.astype(np.uint8) * 255
    shaped = picture.ndim == 2 or (picture.ndim == 3 and picture.shape[2] in (1, 3, 4))
    if picture.dtype != np.uint8 or not shaped or 0 in picture.shape:
        raise ImageError(f"a region mask must be a picture (8-bit grey, RGB or RGBA), not {type(value).__name__} "
                         f"{getattr(picture, 'shape', '')}: give a picture, white where the control acts")
    return picture[..., 0] if picture.ndim == 3 and picture.shape[2] == 1 else picture


def lightness(picture):
    """HW uint8: a grey picture as it is, a colour one's brightest channel; where the picture has an alpha
    channel it is laid over black first, so transparent pixels are dark."""
    if picture.ndim == 2:
        return picture
    light = picture[..., :3].max(axis=2)
    if picture.shape[2] == 4:
        light = (light.astype(np.uint16) * picture[..., 3] + 127) // 255
    return light.astype(np.uint8)


def marked(picture):
    """Where a mask marks, as a person means it: 255 where it is white (light), 0 elsewhere, whatever the
    file's mode: grey, RGB, JPEG, RGBA opaque, or RGBA strokes on a transparent background (a brush's layer).
    Gradio hands every layer over as RGBA, so opacity alone cannot mean painted."""
    return np.where(lightness(picture) > 127, 255, 0).astype(np.uint8)
