"""An app as data: a Task names its annotator, control files, annotator parameters (as Slider, Choice or
Check) and how the shipped toy model serves it; the Settings each page starts from."""

import inspect
from dataclasses import dataclass, field, replace

from annotators import ANNOTATORS
from apps.units import EXTRA_UNITS, unit_inputs
from cldm.model import ModelOptions
from cldm.settings import SettingError, Settings, checked_value, short
from toy.model import TOY_PROMPT, TOY_SAMPLING

REAL_DEFAULTS = Settings(added_prompt="best quality, extremely detailed",
                         negative_prompt="longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                                         "fewer digits, cropped, worst quality, low quality")
TOY_DEFAULTS = Settings(prompt=TOY_PROMPT, image_resolution=128, **TOY_SAMPLING)
# the Settings an app shows, in the page's order; the prompt is above the Run button, the rest below it
PAGE_SETTINGS = ("prompt", "num_samples", "image_resolution", "detect_resolution", "pixel_perfect", "strength",
                 "guess_mode", "control_start", "control_end", "control_mode", "block_weights", "control_type",
                 "resize_mode", "denoise", "mask_blur", "sampler", "steps", "guidance_scale", "seed", "eta",
                 "added_prompt", "negative_prompt", "strength_keyframes", "keyframe_curve", "uncond_multiplier",
                 "batch_strengths", "soft_base", "loras")


@dataclass
class Slider:
    """A slider for one annotator parameter; value None takes the annotator's default."""

    name: str
    minimum: float
    maximum: float
    value: float | None = None
    step: float = 1
    label: str | None = None

    def checked(self, value):
        whole = all(float(v).is_integer() for v in (self.minimum, self.maximum, self.step))
        return checked_value(self.name, value, int if whole else float, self.minimum, self.maximum)


@dataclass
class Choice:
    """Radio buttons for one annotator parameter."""

    name: str
    choices: list
    value: str | None = None
    label: str | None = None

    def checked(self, value):
        if value not in self.choices:
            raise SettingError(f"{self.name} {short(value)} is not one of {', '.join(map(str, self.choices))}")
        return value


@dataclass
class Check:
    """A checkbox for one boolean annotator parameter."""

    name: str
    value: bool | None = None
    label: str | None = None

    def checked(self, value):
        return checked_value(self.name, value, bool)


# How the shipped toy model serves an app: "control" it follows the maps with its outline control (edges,
# lines, scribbles); "plain" it runs without a control (image-to-image and inpainting need none); None it
# cannot follow the condition, so the app shows the map and says which files to get.
TOY_MODES = ("control", "plain", None)
NO_ANNOTATOR = "none"  # the "Preprocessor" choice that takes the upload as the map itself
NEAREST_ANNOTATORS = ("pose", "openpose", "openpose_mediapipe", "seg")  # maps whose exact colours matter


@dataclass
class Task:
    name: str  # the outputs' file stem
    title: str
    annotator: str | None  # a key of annotators.ANNOTATORS; None: the condition is built from the picture
    control: str | tuple  # the control file(s) for this condition, looked for in models/ in this order
    annotator_params: list = field(default_factory=list)  # Slider / Choice / Check, one per annotator parameter
    detect_resolution: int | None = 512  # None: the annotator runs at the image resolution (no slider)
    nearest: bool = False  # resize the map without blending (pose skeletons, segment colours)
    canvas: bool = False  # draw the input instead of uploading it
    prompt: str = ""
    alternatives: tuple = ()  # other annotators offered beside `annotator` (and "none": the upload is the map)
    workflow: str | None = None  # "img2img": start from the picture (Denoise slider); "inpaint": paint a mask on it
    base: str | None = None  # the SD base its control-only file needs, when not models/v1-5-pruned.ckpt
    options: ModelOptions = ModelOptions()  # how its control was trained: prompt windows, clip skip, pooling
    toy: str | None = "control"  # one of TOY_MODES
    pose_editor: bool = False  # the page edits the detected pose (OpenPose JSON) before generating

    def __post_init__(self):
        if self.toy not in TOY_MODES:
            raise ValueError(f"toy must be one of {TOY_MODES}, got {self.toy!r}")
        self.control = (self.control,) if isinstance(self.control, str) else tuple(self.control)

    @property
    def annotators(self):
        return [a for a in (self.annotator, *self.alternatives) if a]

    def annotator_defaults(self):
        defaults = {}
        for name in self.annotators:
            parameters = inspect.signature(ANNOTATORS[name]).parameters.items()
            defaults.update({k: p.default for k, p in parameters if p.default is not inspect.Parameter.empty})
        return defaults

    @property
    def unit_preprocessor(self):
        """What a control unit detects by default: the app's annotator, or nothing when the app's input is
        not a photo to detect on (a drawing, a picture to inpaint)."""
        return self.annotator if self.annotator and not self.canvas else NO_ANNOTATOR

    def settings(self):
        """The Settings this app's page shows, in its order."""
        hidden = {*(() if self.detect_resolution is not None else ("detect_resolution", "pixel_perfect")),
                  *(() if self.workflow else ("denoise",)), *(() if self.workflow == "inpaint" else ("mask_blur",))}
        return [name for name in PAGE_SETTINGS if name not in hidden]

    def inputs(self):
        """The names of the page's inputs after the picture, in order: the HTTP API's parameters too."""
        uploads_a_map = self.annotator is not None and not self.canvas
        return [*self.settings(), *(["preprocessor"] if uploads_a_map else []),
                *(p.name for p in self.annotator_params), "region_mask", *(["pose"] if self.pose_editor else []),
                *(name for k in EXTRA_UNITS for name in unit_inputs(k))]

    def defaults(self, toy):
        """The Settings the page starts from: the real models' prompts, or the toy model's prompt and size (the
        app's own prompt where the toy only shows the map, at the real models' size; half the picture redrawn,
        as the toy redraws a whole picture as one of its shapes)."""
        if not toy:
            base = replace(REAL_DEFAULTS, prompt=self.prompt)
        else:
            shows_map_only = self.toy is None  # at a size a person can read the map at
            base = replace(TOY_DEFAULTS, prompt=self.prompt if shows_map_only else TOY_PROMPT,
                           image_resolution=(REAL_DEFAULTS if shows_map_only else TOY_DEFAULTS).image_resolution,
                           denoise=0.5 if self.workflow == "img2img" else TOY_DEFAULTS.denoise)
        return replace(base, detect_resolution=self.detect_resolution or base.detect_resolution)
