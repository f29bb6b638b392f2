"""Every generation setting once, with its default, range and help: the apps' controls, the command line's
flags, the parameters saved in a PNG, `--reproduce` and the `generate()` call are all made from `Settings`.

A field's metadata says how it is shown: `label`, `help`, `range` (minimum, maximum, step) for numbers,
`choices` for a fixed set. Four fields say how the pictures are prepared (image and detect resolution,
pixel perfect, resize mode): the apps and the command line use them, `generate()` takes its pictures ready.
"""

import argparse
import math
import numbers
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import PurePath

from annotators.util import MAX_SIDE, RESIZE_MODES
from cldm.cldm import BLOCK_WEIGHT_PRESETS, RELEASE_SOFT_BASE, parse_block_weights
from cldm.loras import parse_loras, prompt_loras
from cldm.samplers import SAMPLERS
from cldm.schedules import SCHEDULE_CURVES, batch_multipliers, keyframes
from cldm.union import AUTO, UNION_TYPES

# The control modes of the A1111 ControlNet extension: "prompt" weighs the control's blocks softly (deeper
# blocks more, the release's guess-mode scales); "control" gives the control to the conditional branch only,
# so classifier-free guidance amplifies it.
CONTROL_MODES = ("balanced", "prompt", "control")
MAX_TEXT = 20_000  # characters of a text setting: CLIP reads 77 tokens a window; more is a mistake or an attack
MAX_UNITS = 8


class SettingError(ValueError):
    """A setting's value that cannot be used; the message names the setting, the value and what it takes."""


def setting(default, label, help="", range=None, choices=None, aliases=()):  # noqa: A002 (the names users read)
    return field(default=default, metadata={"label": label, "help": help, "range": range, "choices": choices,
                                            "aliases": aliases})


def picture(label, help=""):  # noqa: A002
    """A picture field (HWC / HW uint8, or None): shown as an upload, saved beside the images, never compared."""
    return field(default=None, compare=False, metadata={"label": label, "help": help, "range": None, "choices": None,
                                                         "aliases": (), "picture": True})


# -- the check at the door: every value a Settings or ControlUnit holds went through checked() ---------------

def check_fields(instance, checked_fields):
    """Check and convert the fields of a frozen dataclass being built (pictures are checked when read)."""
    for f in checked_fields:
        if not f.metadata.get("picture"):
            object.__setattr__(instance, f.name, checked(f, getattr(instance, f.name)))


def checked(f, value, name=None):
    """`value` as setting `f` holds it (an int from a UI's 20.0, a float from an int), or a SettingError that
    names the setting (or `name`, as a page's input calls it), the value and what the setting takes: its type,
    range or choices, finite numbers."""
    kind, optional, name = f.type, False, name or f.name
    if isinstance(kind, types.UnionType):  # `str | None`
        optional, kind = True, next(k for k in kind.__args__ if k is not type(None))
    if f.name == "block_weights":
        return checked_block_weights(value, name)
    low, high, _ = f.metadata["range"] or (None, None, None)
    return checked_value(name, value, kind, low, high, f.metadata["choices"], optional)


def checked_value(name, value, kind, low=None, high=None, choices=None, optional=False):
    """`value` as a `kind` (bool, str, int or float) named `name` holds it: a bool, text (of `choices`), or a
    finite number from `low` to `high` (an int: a whole one), or None if `optional`; else a SettingError saying
    what it takes."""
    if value is None and optional:
        return None
    if kind is bool:
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise SettingError(f"{name} must be true or false, not {short(value)}")
    if kind is str:
        if not isinstance(value, str):
            raise SettingError(f"{name} must be text{' or null' if optional else ''}, not {short(value)}")
        if len(value) > MAX_TEXT:
            raise SettingError(f"{name} is {len(value)} characters long; at most {MAX_TEXT} are read")
        if choices and value not in choices:
            raise SettingError(f"{name} {short(value)} is not one of {', '.join(map(str, choices))}")
        return value
    whole = kind is int
    what = "a whole number" if whole else "a number"
    if low is not None:
        what += f" from {low} to {high}" if high is not None else f" of at least {low}"
    elif not whole:
        what += " (finite)"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise SettingError(f"{name} must be {what}, not {short(value)}")
    if whole and value != int(value):
        raise SettingError(f"{name} must be {what}, not {short(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingError(f"{name} must be {what}; {short(value)} is out of range")
    return int(value) if whole else float(value)


def number_flag(kind, low=None, high=None):
    """An argparse type for a number flag, checked as a setting is: finite, a whole one for int, from `low` (to
    `high`); argparse then names the flag in its one-line error."""

    def parse(text):
        try:
            return checked_value("the value", kind(text), kind, low, high)
        except (ValueError, OverflowError) as error:  # SettingError, or text that is no number
            raise argparse.ArgumentTypeError(str(error) if isinstance(error, SettingError) else
                                             f"{text!r} is not a {'whole ' if kind is int else ''}number") from None

    parse.__name__ = kind.__name__  # argparse's "invalid int value" wording for what it reports itself
    return parse


def checked_block_weights(value, name="block_weights"):
    """A block-weights setting: a preset, or numbers (text or a list) each finite and in the strength's range
    (how many is the ControlNet's to say: its blocks)."""
    if not isinstance(value, (str, list, tuple)):
        raise SettingError(f"{name} must be a preset or numbers, not {short(value)}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise SettingError(f"{name} is {len(value)} characters long; at most {MAX_TEXT} are read")
    if value in BLOCK_WEIGHT_PRESETS:
        return value
    try:
        weights = parse_block_weights(value, n=None)
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"{name} {short(value)} are neither a preset ({', '.join(BLOCK_WEIGHT_PRESETS)}) "
                           "nor numbers like '1, 1, 0.5'") from None
    low, high, _ = ControlUnit.__dataclass_fields__["strength"].metadata["range"]
    wrong = [w for w in weights or [] if not (math.isfinite(w) and low <= w <= high)]
    if wrong:
        raise SettingError(f"{name} must each be a number from {low} to {high}; {short(wrong[0])} is not")
    return value if isinstance(value, str) else list(weights)


def short(value, limit=60):
    """A value as a message quotes it: its repr, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to write out
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    strength_keyframes: str = setting("", "Strength keyframes", "fraction of the steps:multiplier of the "
                                      "strength, e.g. 0:1, 0.5:0.3 (held before the first and after the last); "
                                      "empty: constant")
    keyframe_curve: str = setting("linear", "Keyframe curve", "between keyframes: linear, or eased in and out",
                                  choices=SCHEDULE_CURVES)
    uncond_multiplier: float = setting(1.0, "Uncond multiplier", "the control on the unconditional branch of "
                                       "guidance: 1 as on the conditional, 0 not at all (the control mode "
                                       "'control')", (0.0, 1.0, 0.01))
    batch_strengths: str = setting("", "Batch strengths", "one multiplier of the strength per image of the batch, "
                                   "e.g. 1, 0.6, 0.3 (images past the list: the last); empty: 1 for all")
    control_mode: str = setting("balanced", "Control Mode", "prompt: the release's soft block weights; control: "
                                "the control on the conditional branch only", choices=CONTROL_MODES)
    block_weights: str = setting("uniform", "Block weights",
                                 f"{', '.join(BLOCK_WEIGHT_PRESETS)}, or one number per block (SD: 13, SDXL: 10, "
                                 "a T2I-Adapter: its 4 levels; shallowest block first, the middle block last)")
    soft_base: float = setting(RELEASE_SOFT_BASE, "Soft base", "the soft block weights' ratio, each block's weight "
                               "this times the next deeper one's (0.825: the release's soft scales)",
                               (0.0, 1.0, 0.005))
    style_fidelity: float = setting(0.5, "Style fidelity", "a reference unit's pull on guidance's unconditional "
                                    "half: 0 none (the prompt leads), 1 full (the reference leads)", (0.0, 1.0, 0.01))
    control_type: str = setting(AUTO, "Control type", "what kind of map a ControlNet-Union is given; auto: its "
                                "preprocessor's kind", choices=(AUTO, *UNION_TYPES))
    region_mask: object = picture("Region mask", "white where the control acts; none: everywhere")

    def __post_init__(self):
        check_fields(self, fields(self))
        try:
            keyframes(self.strength_keyframes)
        except ValueError as error:
            raise SettingError(f"strength_keyframes: {error}") from None
        try:
            batch_multipliers(self.batch_strengths)
        except ValueError as error:
            raise SettingError(f"batch_strengths: {error}") from None
        if self.control_start > self.control_end:
            raise SettingError(f"control_start {self.control_start} is after control_end {self.control_end}: the "
                               "control would never act; start before it ends")

    def with_values(self, **values):
        """A copy with `values` changed, each checked and converted to its field's type (UI numbers arrive as
        floats); a value that cannot be used is a SettingError."""
        unknown = sorted(set(values) - {f.name for f in fields(self)})
        if unknown:
            raise SettingError(f"unknown control unit settings {unknown}; they are {[f.name for f in fields(self)]}")
        return replace(self, **values)

    def settings(self):
        """Its settings (those the first unit has as Settings' flags), by name."""
        return {name: getattr(self, name) for name in UNIT_SETTINGS}

    def record(self):
        """What a saved image records of it (its pictures are saved as files beside, named by the caller); its
        control file by name, which reproduction looks for in models/ and beside the record."""
        control = None if self.control is None else PurePath(self.control).name
        return {"control": control, "preprocessor": self.preprocessor, **self.settings()}

    @classmethod
    def from_record(cls, record):
        """A unit from its record (settings saved before they existed take their defaults); the page's label for
        the model's own control, which older records saved in place of null, reads as None."""
        if not isinstance(record, dict):
            raise SettingError(f"a control unit's record must be a JSON object, not {short(record)}")
        names = {f.name for f in fields(cls) if not f.metadata.get("picture")}
        values = {k: v for k, v in record.items() if k in names}
        if values.get("control") in ("", LEGACY_OWN_CONTROL):
            values["control"] = None
        return cls().with_values(**values)


LEGACY_OWN_CONTROL = "the app's control"
UNIT_SETTINGS = ("strength", "control_start", "control_end", "strength_keyframes", "keyframe_curve",
                 "uncond_multiplier", "batch_strengths", "control_mode", "block_weights", "soft_base", "style_fidelity",
                 "control_type")


@dataclass(frozen=True)
class Settings:
    prompt: str = setting("", "Prompt")
    added_prompt: str = setting("", "Added Prompt", "joined to the prompt with a comma")
    negative_prompt: str = setting("", "Negative Prompt")
    num_samples: int = setting(1, "Images", "images generated together", (1, 12, 1), aliases=("--samples",))
    image_resolution: int = setting(512, "Image Resolution", "the shorter side, rounded to a multiple of 64",
                                    (64, MAX_SIDE, 64), aliases=("--resolution",))
    detect_resolution: int = setting(512, "Detect Resolution", "the shorter side the annotator sees",
                                     (64, MAX_SIDE, 64))
    pixel_perfect: bool = setting(False, "Pixel perfect", "the annotator sees the image resolution")
    resize_mode: str = setting("just_resize", "Resize mode", "how a picture of another shape is fitted",
                               choices=RESIZE_MODES)
    steps: int = setting(20, "Steps", range=(1, 100, 1))
    guidance_scale: float = setting(9.0, "Guidance Scale", "classifier-free guidance", (0.1, 30.0, 0.1),
                                    aliases=("--guidance",))
    seed: int = setting(-1, "Seed", "-1: a random one", (-1, 2**31 - 1, 1))
    eta: float = setting(0.0, "eta (DDIM)", "DDIM's noise (TCD's gamma); 0 is deterministic", (0.0, 1.0, 0.01))
    sampler: str = setting("DDIM", "Sampler", choices=SAMPLERS)
    guess_mode: bool = setting(False, "Guess Mode", "the controls alone, without the prompt's help")
    denoise: float = setting(1.0, "Denoise", "image-to-image: 0 keeps the picture, 1 redraws it all",
                             (0.0, 1.0, 0.01))
    mask_blur: float = setting(5.0, "Mask Blur", "inpainting: the mask's edge softened by this many pixels",
                               (0.0, 16.0, 0.1))
    loras: str = setting("", "LoRAs", "name:weight, ... of files in models/loras/ (<lora:name:weight> in the "
                         "prompt does the same)")

    units: tuple = field(default=(ControlUnit(),), metadata={"label": "Control units", "unit": True})

    def __post_init__(self):
        check_fields(self, [f for f in fields(self) if not f.metadata.get("unit")])
        for name, read in (("loras", parse_loras), ("prompt", prompt_loras), ("added_prompt", prompt_loras)):
            try:
                read(getattr(self, name))
            except ValueError as error:
                raise SettingError(f"{name}: {error}") from None
        units = self.units
        if not isinstance(units, (tuple, list)) or not 1 <= len(units) <= MAX_UNITS or not all(
                isinstance(u, ControlUnit) for u in units):
            raise SettingError(f"units must be 1 to {MAX_UNITS} control units (the model's own first), not "
                               f"{short(units)}")
        object.__setattr__(self, "units", tuple(units))

    def __getattr__(self, name):  # only for names that are not fields: the first unit's settings
        if name in UNIT_SETTINGS:
            return getattr(self.units[0], name)
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def record(self):
        """The settings as saved in a PNG's parameters (JSON): the first unit's as the flags name them, and its
        preprocessor (a reference unit's is what it is); the other units are recorded by whoever saves their
        pictures (ControlUnit.record)."""
        return {**{f.name: getattr(self, f.name) for f in setting_fields()}, "preprocessor": self.units[0].preprocessor}

    @classmethod
    def from_record(cls, record):
        """Settings from saved parameters (whose seed is the one used); keys of other things (file names, the
        precision) are left aside, and settings saved before they existed take their defaults."""
        if not isinstance(record, dict):
            raise SettingError(f"saved parameters must be a JSON object, not {short(record)}")
        names = {f.name for f in setting_fields()}
        settings = cls().with_values(**{k: v for k, v in record.items() if k in names})
        first = settings.units[0].with_values(preprocessor=record.get("preprocessor"))
        return settings.with_values(units=(first, *settings.units[1:]))

    def with_values(self, **values):
        """A copy with `values` changed (the first unit's settings among them), each checked and converted to its
        field's type (UI numbers arrive as floats); a value that cannot be used is a SettingError."""
        names = {f.name for f in setting_fields()}
        unknown = sorted(set(values) - names - {"units"})
        if unknown:
            raise SettingError(f"unknown settings {unknown}; the settings are {sorted(names)}")
        first = {k: values.pop(k) for k in UNIT_SETTINGS if k in values}
        units = values.pop("units", self.units)
        if first:
            units = (units[0].with_values(**first), *units[1:])
        return replace(self, units=units, **values)


def setting_fields():
    """Every setting a flag, a page input and a record key: Settings' own, and its first unit's."""
    own = [f for f in fields(Settings) if not f.metadata.get("unit")]
    return [*own, *(f for f in fields(ControlUnit) if f.name in UNIT_SETTINGS)]


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
