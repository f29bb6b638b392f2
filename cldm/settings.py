"""Every generation setting once, with its default, range and help: the apps' controls, the command line's
flags, the parameters saved in a PNG, `--reproduce` and the `generate()` call are all made from `Settings`.

A field's metadata says how it is shown: `label`, `help`, `range` (minimum, maximum, step) for numbers,
`choices` for a fixed set. Four fields say how the pictures are prepared (image and detect resolution,
pixel perfect, resize mode): the apps and the command line use them, `generate()` takes its pictures ready.
"""

import argparse
from dataclasses import asdict, dataclass, field, fields, replace

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
    strength: float = setting(1.0, "Control Strength", range=(0.0, 2.0, 0.01))
    guess_mode: bool = setting(False, "Guess Mode", "the control alone, without the prompt's help")
    control_start: float = setting(0.0, "Control Start", "fraction of the steps done when the control starts",
                                   (0.0, 1.0, 0.01))
    control_end: float = setting(1.0, "Control End", "... and when it stops", (0.0, 1.0, 0.01))
    control_mode: str = setting("balanced", "Control Mode", "prompt: the release's soft block weights; control: "
                                "the control on the conditional branch only", choices=CONTROL_MODES)
    block_weights: str = setting("uniform", "Block weights",
                                 f"{', '.join(BLOCK_WEIGHT_PRESETS)}, or 13 numbers (shallowest block first, the "
                                 "middle block last)")
    denoise: float = setting(1.0, "Denoise", "image-to-image: 0 keeps the picture, 1 redraws it all",
                             (0.0, 1.0, 0.01))
    mask_blur: float = setting(5.0, "Mask Blur", "inpainting: the mask's edge softened by this many pixels",
                               (0.0, 16.0, 0.1))

    def record(self):
        """The settings as saved in a PNG's parameters (JSON)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record):
        """Settings from saved parameters (whose seed is the one used); keys of other things (file names, the
        precision) are left aside, and settings saved before they existed take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def with_values(self, **values):
        """A copy with `values` changed, each converted to its field's type (UI numbers arrive as floats)."""
        types = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise TypeError(f"unknown settings {unknown}; the settings are {sorted(types)}")
        return replace(self, **{k: convert(types[k], v) for k, v in values.items()})


def convert(kind, value):
    """A number as a field of type `kind` holds it (an int from a UI's float, a float from an int); text fields
    take what they are given (block weights may be a list of numbers)."""
    if kind is int:
        return int(round(float(value)))
    return kind(value) if kind in (float, bool) else value


def add_arguments(parser, defaults=Settings(), skip=()):
    """A --flag per setting, with its default, help and choices."""
    for f in fields(Settings):
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
    return replace(base, **{f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)})


def field_of(name):
    """The Settings field called `name` (its type and metadata)."""
    return next(f for f in fields(Settings) if f.name == name)
