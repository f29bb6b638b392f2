"""Every generation setting once, with its default, range and help: the apps' controls, the command line's
flags, the parameters saved in a PNG, `--reproduce` and the `generate()` call are all made from `Settings`.

A field's metadata says how it is shown: `label`, `help`, `range` (minimum, maximum, step) for numbers,
`choices` for a fixed set. Four fields say how the pictures are prepared (image and detect resolution,
pixel perfect, resize mode): the apps and the command line use them, `generate()` takes its pictures ready.
"""

import argparse
from dataclasses import dataclass, field, fields, replace

from annotators.util import RESIZE_MODES
from cldm.cldm import BLOCK_WEIGHT_PRESETS
from cldm.samplers import SAMPLERS

# The control modes of the A1111 ControlNet extension: "prompt" weighs the control's blocks softly (deeper
# blocks more, the release's guess-mode scales); "control" gives the control to the conditional branch only,
# so classifier-free guidance amplifies it.
CONTROL_MODES = ("balanced", "prompt", "control")


def setting(default, label, help="", range=None, choices=None, aliases=()):  # noqa: A002 (the names users read)
    return field(default=default, metadata={"label": label, "help": help, "range": range, "choices": choices,
                                            "aliases": aliases})


def picture(label, help=""):  # noqa: A002
    """A picture field (HWC / HW uint8, or None): shown as an upload, saved beside the images, never compared."""
    return field(default=None, compare=False, metadata={"label": label, "help": help, "range": None, "choices": None,
                                                         "aliases": (), "picture": True})


@dataclass(frozen=True)
class ControlUnit:
    """One control of a generation with every per-control setting: a new one is a field here, and the page
    (unit<k>_<name>), the command line, the pipeline and the saved record all take it from here.

    The model's own control is the first unit, `Settings.units[0]`: its settings keep their flags and names
    (--strength, `strength`, ...); its picture, preprocessor and region mask are the page's own inputs.
    """

    image: object = picture("Picture", "none: the input picture")
    preprocessor: str | None = setting(None, "Preprocessor", "an annotator, or none (the picture is the map); "
                                       "empty: the app's")
    control: str | None = setting(None, "Control file", "a file in models/ or a path; empty: the model's own "
                                  "ControlNet")
    strength: float = setting(1.0, "Control Strength", range=(0.0, 2.0, 0.01))
    control_start: float = setting(0.0, "Control Start", "fraction of the steps done when the control starts",
                                   (0.0, 1.0, 0.01))
    control_end: float = setting(1.0, "Control End", "... and when it stops", (0.0, 1.0, 0.01))
    control_mode: str = setting("balanced", "Control Mode", "prompt: the release's soft block weights; control: "
                                "the control on the conditional branch only", choices=CONTROL_MODES)
    block_weights: str = setting("uniform", "Block weights",
                                 f"{', '.join(BLOCK_WEIGHT_PRESETS)}, or 13 numbers (shallowest block first, the "
                                 "middle block last)")
    region_mask: object = picture("Region mask", "white where the control acts; none: everywhere")

    def with_values(self, **values):
        """A copy with `values` changed, each converted to its field's type (UI numbers arrive as floats)."""
        types = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise TypeError(f"unknown control unit settings {unknown}; they are {sorted(types)}")
        return replace(self, **{k: convert(types[k], v) for k, v in values.items()})

    def settings(self):
        """Its settings (those the first unit has as Settings' flags), by name."""
        return {name: getattr(self, name) for name in UNIT_SETTINGS}

    def record(self):
        """What a saved image records of it (its pictures are saved as files beside, named by the caller)."""
        return {"control": self.control, "preprocessor": self.preprocessor, **self.settings()}

    @classmethod
    def from_record(cls, record):
        """A unit from its record; the page's label for the model's own control, which older records saved in
        place of null, reads as None."""
        names = {f.name for f in fields(cls) if not f.metadata.get("picture")}
        unit = cls(**{k: v for k, v in record.items() if k in names})
        return replace(unit, control=None) if unit.control in ("", LEGACY_OWN_CONTROL) else unit


LEGACY_OWN_CONTROL = "the app's control"
UNIT_SETTINGS = ("strength", "control_start", "control_end", "control_mode", "block_weights")


@dataclass(frozen=True)
class Settings:
    prompt: str = setting("", "Prompt")
    added_prompt: str = setting("", "Added Prompt", "joined to the prompt with a comma")
    negative_prompt: str = setting("", "Negative Prompt")
    num_samples: int = setting(1, "Images", "images generated together", (1, 12, 1), aliases=("--samples",))
    image_resolution: int = setting(512, "Image Resolution", "the shorter side, rounded to a multiple of 64",
                                    (64, 2048, 64), aliases=("--resolution",))
    detect_resolution: int = setting(512, "Detect Resolution", "the shorter side the annotator sees",
                                     (64, 2048, 64))
    pixel_perfect: bool = setting(False, "Pixel perfect", "the annotator sees the image resolution")
    resize_mode: str = setting("just_resize", "Resize mode", "how a picture of another shape is fitted",
                               choices=RESIZE_MODES)
    steps: int = setting(20, "Steps", range=(1, 100, 1))
    guidance_scale: float = setting(9.0, "Guidance Scale", "classifier-free guidance", (0.1, 30.0, 0.1),
                                    aliases=("--guidance",))
    seed: int = setting(-1, "Seed", "-1: a random one", (-1, 2**31 - 1, 1))
    eta: float = setting(0.0, "eta (DDIM)", "DDIM's noise; 0 is deterministic", (0.0, 1.0, 0.01))
    sampler: str = setting("DDIM", "Sampler", choices=SAMPLERS)
    guess_mode: bool = setting(False, "Guess Mode", "the controls alone, without the prompt's help")
    denoise: float = setting(1.0, "Denoise", "image-to-image: 0 keeps the picture, 1 redraws it all",
                             (0.0, 1.0, 0.01))
    mask_blur: float = setting(5.0, "Mask Blur", "inpainting: the mask's edge softened by this many pixels",
                               (0.0, 16.0, 0.1))

    units: tuple = field(default=(ControlUnit(),), metadata={"label": "Control units", "unit": True})

    def __getattr__(self, name):  # only for names that are not fields: the first unit's settings
        if name in UNIT_SETTINGS:
            return getattr(self.units[0], name)
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def record(self):
        """The settings as saved in a PNG's parameters (JSON): the first unit's as the flags name them; the
        other units are recorded by whoever saves their pictures (ControlUnit.record)."""
        return {f.name: getattr(self, f.name) for f in setting_fields()}

    @classmethod
    def from_record(cls, record):
        """Settings from saved parameters (whose seed is the one used); keys of other things (file names, the
        precision) are left aside, and settings saved before they existed take their defaults."""
        names = {f.name for f in setting_fields()}
        return cls().with_values(**{k: v for k, v in record.items() if k in names})

    def with_values(self, **values):
        """A copy with `values` changed (the first unit's settings among them), each converted to its field's
        type (UI numbers arrive as floats)."""
        types = {f.name: f.type for f in setting_fields()}
        unknown = sorted(set(values) - set(types) - {"units"})
        if unknown:
            raise TypeError(f"unknown settings {unknown}; the settings are {sorted(types)}")
        first = {k: values.pop(k) for k in UNIT_SETTINGS if k in values}
        units = tuple(values.pop("units", self.units))
        if first:
            units = (units[0].with_values(**first), *units[1:])
        return replace(self, units=units, **{k: convert(types[k], v) for k, v in values.items()})


def setting_fields():
    """Every setting a flag, a page input and a record key: Settings' own, and its first unit's."""
    own = [f for f in fields(Settings) if not f.metadata.get("unit")]
    return [*own, *(f for f in fields(ControlUnit) if f.name in UNIT_SETTINGS)]


def convert(kind, value):
    """A number as a field of type `kind` holds it (an int from a UI's float, a float from an int); text fields
    take what they are given (block weights may be a list of numbers)."""
    if kind is int:
        return int(round(float(value)))
    return kind(value) if kind in (float, bool) else value


def add_arguments(parser, defaults=Settings(), skip=()):
    """A --flag per setting, with its default, help and choices."""
    for f in setting_fields():
        if f.name in skip:
            continue
        label, help_text, choices = f.metadata["label"], f.metadata["help"], f.metadata["choices"]
        flags, default = ["--" + f.name.replace("_", "-"), *f.metadata["aliases"]], getattr(defaults, f.name)
        description = ", ".join(p for p in (label, help_text) if p)
        if f.type is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=description)
        else:
            parser.add_argument(*flags, dest=f.name, type=f.type, default=default, choices=choices,
                                help=f"{description} (default: {default})")


def from_args(args, base=Settings()):
    """The settings the parsed flags give."""
    return base.with_values(**{f.name: getattr(args, f.name) for f in setting_fields() if hasattr(args, f.name)})


def field_of(name):
    """The setting called `name` (its type and metadata): Settings' own, or a control unit's."""
    return next(f for f in [*fields(Settings), *fields(ControlUnit)] if f.name == name)
