"""More controls in one app, as the A1111 extension's control units: beside the app's own control, up to two
more units, each with its own picture, preprocessor, control file, strength, start/end, mode, block weights
and region mask. A unit without a picture reads the app's input picture.

Every input of a unit is named `unit<k>_<input>` (k = 2, 3) in the page and the HTTP API.
"""

from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from apps.models import MODELS
from cldm.settings import Settings
from ldm.checkpoint import CheckpointError

EXTRA_UNITS = (2, 3)
OWN_CONTROL = "the app's control"  # a unit that runs the app's own ControlNet on another picture
# a unit's Settings fields -> the cldm.pipeline.Control attribute each becomes
UNIT_SETTINGS = {"strength": "strength", "control_start": "start", "control_end": "end", "control_mode": "mode",
                 "block_weights": "block_weights"}
CONTROL_SUFFIXES = (".pth", ".ckpt", ".safetensors")


@dataclass
class Unit:
    """One extra control unit's inputs, as the page gives them."""

    enabled: bool = False
    image: object = None  # a picture; None: the app's input picture
    preprocessor: str | None = None  # an annotator, "none" (the picture is the map); None: the app's annotator
    control: str = OWN_CONTROL  # OWN_CONTROL, a file in models/, or a path
    strength: float = Settings.strength
    control_start: float = Settings.control_start
    control_end: float = Settings.control_end
    control_mode: str = Settings.control_mode
    block_weights: str = Settings.block_weights
    region_mask: object = None  # a mask picture or a mask editor's value; None: everywhere

    @classmethod
    def pop(cls, k, values):
        """Unit k's inputs taken out of the page's named values (those missing keep their defaults)."""
        prefix = f"unit{k}_"
        return cls(**{f.name: values.pop(prefix + f.name) for f in fields(cls) if prefix + f.name in values})


def unit_inputs(k):
    """The names of unit k's inputs, in the page's order."""
    return [f"unit{k}_{f.name}" for f in fields(Unit)]


def unit_defaults(k, preprocessor):
    return {f"unit{k}_{f.name}": (preprocessor if f.name == "preprocessor" else f.default) for f in fields(Unit)}


def control_choices():
    """The unit's control choices: the app's own, then the control files in models/."""
    files = sorted(p.name for p in MODELS.glob("*") if p.suffix in CONTROL_SUFFIXES and "control" in p.name)
    return [OWN_CONTROL, *files]


def control_path(name):
    """A unit's control choice -> the file to load (a bare name is looked for in models/)."""
    path = Path(name)
    if not path.is_file() and (MODELS / name).is_file():
        path = MODELS / name
    if not path.is_file():
        raise CheckpointError(f"control file {name!r} not found (in models/ or as a path); choose "
                                f"{OWN_CONTROL!r} or put the file in {MODELS}/")
    return path


def region_of(value):
    """A region mask input -> HxW uint8 (255 where the control acts), or None for everywhere.

    A mask editor's value is its picture (light opaque pixels mark) with strokes painted on it (opaque pixels
    mark); with nothing marked there is no mask, so an untouched editor leaves the control everywhere. A plain
    picture is taken as it is (all black: the control acts nowhere)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return lightness(np.asarray(value))
    background = value.get("background")
    marks = [] if background is None else [light_and_opaque(np.asarray(background))]
    marks += [layer_mask(np.asarray(layer)) for layer in value.get("layers") or [] if layer is not None]
    if not marks:
        return None
    height, width = marks[0].shape
    marked = np.max([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in marks], axis=0)
    return marked if marked.any() else None


def light_and_opaque(picture):
    """255 where a picture is light (and not transparent), 0 elsewhere."""
    marked = lightness(picture) > 127
    if picture.ndim == 3 and picture.shape[2] == 4:
        marked &= picture[..., 3] > 0
    return np.where(marked, 255, 0).astype(np.uint8)


def lightness(picture):
    """HW uint8: a grayscale picture as it is, a colour one's brightest channel."""
    return picture if picture.ndim == 2 else picture[..., :3].max(axis=2)


def layer_mask(layer):
    """Where a layer marks: its opaque pixels (brush strokes), or for a layer without alpha (a mask sent
    through the API) its light ones; 255 there, 0 elsewhere."""
    if layer.ndim == 3 and layer.shape[2] == 4:
        marked = layer[..., 3] > 0
    else:
        marked = lightness(layer) > 127
    return np.where(marked, 255, 0).astype(np.uint8)
