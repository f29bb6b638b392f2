"""The one app builder behind every gradio_*2image.py: a Task names the annotator, the control file and the
annotator's sliders; everything else (the familiar controls, saving, errors, launching) is here.
"""

import argparse
import inspect
import os
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import torch

import config
from annotators import (
    ANNOTATORS,
    AnnotatorNotice,
    ImageError,
    WeightsError,
    condition_map,
    fit,
    read_image,
    resize_image,
    to_rgb_uint8,
)
from apps.errors import failure, log_to_terminal, page_error
from apps.models import resolve_model
from apps.pose_editor import detected_json, picture_or_none, pose_editor, pose_picture
from apps.units import (
    EXTRA_UNITS,
    OWN_CONTROL,
    UNIT_SETTINGS,
    Unit,
    control_choices,
    marked,
    region_of,
    unit_defaults,
    unit_inputs,
)
from cldm.defaults import (
    TOY_PHOTO_NOTE,
    TOY_PROMPT,
    circle_outline,
    looks_like_a_photo,
    scribble_outline,
    star_outline,
)
from cldm.img2img import condition_picture, inpaint_condition
from cldm.lowvram import low_vram
from cldm.model import load_control_net
from cldm.outputs import BESIDE, next_path, save_beside, save_png
from cldm.pipeline import Control, generate
from cldm.settings import Settings, field_of
from cldm.speed import speed_up
from ldm.files import find_model_file
from ldm.precision import PRECISIONS, add_precision_argument, precision_of, resolve_precision
from ldm.threads import add_threads_argument, use_threads


REAL_DEFAULTS = Settings(added_prompt="best quality, extremely detailed",
                         negative_prompt="longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                                         "fewer digits, cropped, worst quality, low quality")
TOY_DEFAULTS = Settings(prompt=TOY_PROMPT, image_resolution=128)
# the Settings an app shows, in the page's order; the prompt is above the Run button, the rest below it
PAGE_SETTINGS = ("prompt", "num_samples", "image_resolution", "detect_resolution", "pixel_perfect", "strength",
                 "guess_mode", "control_start", "control_end", "control_mode", "block_weights", "resize_mode",
                 "denoise", "mask_blur", "sampler", "steps", "guidance_scale", "seed", "eta", "added_prompt",
                 "negative_prompt")


@dataclass
class Slider:
    """A slider for one annotator parameter; value None takes the annotator's default."""

    name: str
    minimum: float
    maximum: float
    value: float | None = None
    step: float = 1
    label: str | None = None


@dataclass
class Choice:
    """Radio buttons for one annotator parameter."""

    name: str
    choices: list
    value: str | None = None
    label: str | None = None


@dataclass
class Check:
    """A checkbox for one boolean annotator parameter."""

    name: str
    value: bool | None = None
    label: str | None = None


def component(param, default):
    label = param.label or param.name.replace("_", " ").capitalize()
    value = default if param.value is None else param.value
    if isinstance(param, Choice):
        return gr.Radio(label=label, choices=list(param.choices), value=value)
    if isinstance(param, Check):
        return gr.Checkbox(label=label, value=bool(value))
    return gr.Slider(label=label, minimum=param.minimum, maximum=param.maximum, step=param.step, value=value)


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
    extra: list = field(default_factory=list)  # Slider / Choice / Check for the annotators' parameters
    detect_resolution: int | None = 512  # None: the annotator runs at the image resolution (no slider)
    nearest: bool = False  # resize the map without blending (pose skeletons, segment colours)
    canvas: bool = False  # draw the input instead of uploading it
    prompt: str = ""
    alternatives: tuple = ()  # other annotators offered beside `annotator` (and "none": the upload is the map)
    start: str | None = None  # "img2img": start from the picture (Denoise slider); "inpaint": paint a mask on it
    base: str | None = None  # the SD base its control-only file needs, when not models/v1-5-pruned.ckpt
    text_windows: int = 1  # prompt windows of 75 tokens, and the CLIP layer counted from the last, that the
    clip_skip: int = 1  # control was trained with (1.1 anime lineart: 3 and 2)
    toy: str | None = "control"  # one of TOY_MODES
    pooled: bool = False  # the control's residuals are pooled (1.1 shuffle), whatever yaml it is loaded with
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
                  *(() if self.start else ("denoise",)), *(() if self.start == "inpaint" else ("mask_blur",))}
        return [name for name in PAGE_SETTINGS if name not in hidden]

    def inputs(self):
        """The names of the page's inputs after the picture, in order: the HTTP API's parameters too."""
        uploads_a_map = self.annotator is not None and not self.canvas
        return [*self.settings(), *(["preprocessor"] if uploads_a_map else []), *(p.name for p in self.extra),
                "region_mask", *(["pose"] if self.pose_editor else []),
                *(name for k in EXTRA_UNITS for name in unit_inputs(k))]

    def defaults(self, toy):
        """The Settings the page starts from: the toy model's prompt and size (the app's own prompt where the toy
        only shows the map, at the real models' size; half the picture redrawn, as the toy redraws a whole picture as one of its shapes),
        or the real models' prompts."""
        if not toy:
            base = replace(REAL_DEFAULTS, prompt=self.prompt)
        else:
            shows_map_only = self.toy is None  # at a size a person can read the map at
            base = replace(TOY_DEFAULTS, prompt=self.prompt if shows_map_only else TOY_PROMPT,
                           image_resolution=(REAL_DEFAULTS if shows_map_only else TOY_DEFAULTS).image_resolution,
                           denoise=0.5 if self.start == "img2img" else TOY_DEFAULTS.denoise)
        return replace(base, detect_resolution=self.detect_resolution or base.detect_resolution)


class Runner:
    """The model behind an app, turning the UI's values into a detected map and images saved with parameters."""

    def __init__(self, task, model, note, output_dir=config.OUTPUT_DIR, annotator_weights=None, low_vram_device=None,
                 toy=False):
        self.task, self.model, self.note, self.toy = task, model, note, toy
        self.output_dir, self.annotator_weights = output_dir, annotator_weights
        self.low_vram_device = low_vram_device  # keep the model in CPU memory, run it part by part there
        self.nets = {}  # the units' ControlNets by file
        self.precision = precision_of(model) if model is not None else None
        self.generates = model is not None and not (toy and task.toy is None)
        if model is not None and not self.generates:
            self.note += ("\n\nThe toy model follows outlines only, not these maps: the app shows the map, and "
                          "generates once the control file is in place.")
        elif model is not None:
            self.note += f"\n\nComputing in {self.precision}."

    def detect(self, picture, image_resolution, detect_resolution=None, annotator=None, **params):
        """The condition map at the generation size: image resolution's grid, sides multiples of 64."""
        annotator = annotator or self.task.annotator
        nearest = self.task.nearest if annotator in (self.task.annotator, NO_ANNOTATOR) else (
            annotator in NEAREST_ANNOTATORS)
        if annotator in (None, NO_ANNOTATOR):
            return condition_map(picture, None, image_resolution, nearest=nearest)
        accepted = inspect.signature(ANNOTATORS[annotator]).parameters  # the page's sliders serve several
        params = {k: v for k, v in params.items() if k in accepted}
        return condition_map(picture, annotator, image_resolution, detect_resolution, nearest,
                             self.annotator_weights, **params)

    def condition(self, image, resolution, detect_resolution, params, preprocessor, mask_blur, edited=None):
        """(the control's condition, the map shown and saved, the starting picture, the mask, the picture the
        condition comes from) for the UI's input (and the pose editor's map, which replaces the detection)."""
        if edited is not None:
            detected = self.detect(edited, resolution, annotator=NO_ANNOTATOR)
            return detected, detected, None, None, edited if image is None else image
        if image is None:
            raise ImageError("no picture was given: upload one" + (" or add a person in the pose editor"
                                                                   if self.task.pose_editor else ""))
        if self.task.start == "inpaint":
            picture, mask = painted(image)
            init = resize_image(picture, resolution)
            mask = cv2.resize(mask, (init.shape[1], init.shape[0]), interpolation=cv2.INTER_LINEAR)
            condition = inpaint_condition(init, mask, mask_blur)
            return condition, condition_picture(condition), init, mask, picture
        picture = drawing(image) if self.task.canvas else image
        detected = self.detect(picture, resolution, detect_resolution, preprocessor, **params)
        init = resize_image(to_rgb_uint8(picture), resolution) if self.task.start == "img2img" else None
        return detected, detected, init, None, picture

    def unit_controls(self, units, picture, size, settings, detect_resolution):
        """The enabled extra units -> (their Controls, their maps at the generation size `size`)."""
        controls, maps = [], []
        for unit in units:
            if not unit.enabled:
                continue
            preprocessor = unit.preprocessor or self.task.unit_preprocessor
            detected = self.detect(unit.image if unit.image is not None else picture, settings.image_resolution,
                                   detect_resolution, preprocessor)
            detected = fit(detected, size, settings.resize_mode, nearest=preprocessor in NEAREST_ANNOTATORS)
            region = region_of(unit.region_mask)
            net = None if unit.control in (None, "", OWN_CONTROL) else self.control_net(unit.control)
            controls.append(Control(detected, unit.strength, unit.control_start, unit.control_end, unit.control_mode,
                                    net, unit.block_weights.strip() or "uniform",
                                    None if region is None else fit(region, size, settings.resize_mode)))
            maps.append(detected)
        return controls, maps

    def pose_json(self, picture, detector, include_hand, include_face, detect_resolution, pixel_perfect,
                  image_resolution):
        """The pose editor's JSON for a picture, detected at the resolution a generation would detect at."""
        resolution = image_resolution if pixel_perfect else detect_resolution
        return detected_json(picture_or_none(picture), detector, include_hand, include_face, resolution,
                             self.annotator_weights)

    def control_net(self, name):
        """A unit's ControlNet file, loaded once, in the model's dtype and on its device."""
        path = find_model_file(name)
        if path not in self.nets:
            self.nets[path] = load_control_net(self.model, path).to(self.model.betas.device)
        return self.nets[path]

    def __call__(self, image, **values):
        """The page's input picture and its other inputs by name (Task.inputs(); any left out take the page's
        defaults) -> (the maps and the images, what happened)."""
        if isinstance(image, (str, os.PathLike)):  # a file, as Gradio hands over an example's picture
            image = read_image(image)
        params = {p.name: values.pop(p.name) for p in self.task.extra if p.name in values}
        units = [Unit.pop(k, values) for k in EXTRA_UNITS]
        preprocessor, region = values.pop("preprocessor", None), region_of(values.pop("region_mask", None))
        pose = values.pop("pose", None)
        settings = self.task.defaults(self.toy).with_values(**values)
        if settings.block_weights.strip() in ("", "uniform"):
            settings = replace(settings, block_weights="uniform")
        detect_resolution = None if self.task.detect_resolution is None else settings.detect_resolution
        if settings.pixel_perfect:  # the annotator sees the picture at the size it is generated at
            detect_resolution = settings.image_resolution
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always", AnnotatorNotice)
            edited = pose_picture(pose) if self.task.pose_editor else None  # says who found the pose
            condition, shown, init, mask, picture = self.condition(image, settings.image_resolution,
                                                                   detect_resolution, params, preprocessor,
                                                                   settings.mask_blur, edited)
            controls, unit_maps = self.unit_controls(units, picture, shown.shape[:2], settings, detect_resolution)
        said = "".join(f" {n.message}" for n in notices if issubclass(n.category, AnnotatorNotice))
        if not self.generates:
            return [shown, *unit_maps], self.note + said
        if self.toy and looks_like_a_photo(to_rgb_uint8(picture)):
            said += " " + TOY_PHOTO_NOTE
        if region is not None:
            region = fit(region, shown.shape[:2], settings.resize_mode)
        hint = None if self.toy and self.task.toy == "plain" else condition
        nets = [c.net for c in controls if c.net is not None]
        with low_vram(self.model, self.low_vram_device, nets=nets) if self.low_vram_device else nullcontext():
            images, used_seed = generate(self.model, hint, settings=settings, controls=controls, init_image=init,
                                         mask=mask, region_mask=region)
        record = {**settings.record(), "seed": used_seed, "annotator": params, "preprocessor": preprocessor,
                  "size": list(shown.shape[:2]), "precision": self.precision, "threads": torch.get_num_threads(),
                  **({"pose": pose} if edited is not None else {})}
        if self.task.start == "inpaint":  # the condition is made again from the picture and the mask
            record["inpaint_control"] = hint is not None
        pictures = {"hint": None if hint is None else shown, "init_image": init, "mask": mask, "region_mask": region}
        first = next_path(self.output_dir, self.task.name)  # one number for every file of the request
        number = first.stem.rsplit("-", 1)[1]
        path_for = lambda suffix: first.with_name(f"{self.task.name}-{suffix}-{number}.png")  # noqa: E731
        beside = save_beside(pictures, path_for, {"hint": {"annotator": params}})
        record.update(beside)
        if controls:
            record["controls"] = self.save_units(units, controls, path_for)
        saved = [save_png(image, first if i == 0 else first.with_name(f"{first.stem}_{i}.png"),
                          {**record, "sample": i}).name for i, image in enumerate(images)]
        files = ", ".join([*beside.values(), *(c[k] for c in record.get("controls", []) for k in BESIDE if k in c)])
        info = f"Seed {used_seed}. Saved {', '.join(saved)} and {files} in {self.output_dir}/.{said}"
        return [shown, *unit_maps, *images], info

    def save_units(self, units, controls, path_for):
        """Each enabled unit's map and region mask saved beside the images; its part of their record."""
        enabled = [(k, unit) for k, unit in zip(EXTRA_UNITS, units) if unit.enabled]
        records = []
        for (k, unit), control in zip(enabled, controls):
            pictures = {"hint": control.hint, "region_mask": control.region_mask}
            preprocessor = unit.preprocessor or self.task.unit_preprocessor
            records.append({"control": unit.control or OWN_CONTROL, "preprocessor": preprocessor,
                            **{name: getattr(control, attribute) for name, attribute in UNIT_SETTINGS.items()},
                            **save_beside(pictures, lambda suffix, k=k: path_for(f"unit{k}-{suffix}"))})
        return records


def uploaded_image(**kwargs):
    """A gr.Image whose uploads are decoded by annotators.read_image (16-bit, RGBA, grayscale and EXIF rotation
    understood); a file that is no image is refused with a message instead of a traceback. (A subclass would
    need its own frontend; replacing the instance's preprocess keeps gr.Image's.)"""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    to_path = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        try:
            return read_image(to_path(payload))
        except ImageError as error:
            raise page_error(error) from error
        except Exception as error:  # PIL cannot even identify it
            raise page_error(f"the upload is not a readable image ({error}); give a PNG, JPEG or WebP file") from error

    image.preprocess = preprocess
    return image


def painted(editor_value):
    """An inpaint editor's value -> (the picture RGB uint8, the mask: 255 where painted over)."""
    if not isinstance(editor_value, dict) or editor_value.get("background") is None:
        raise ImageError("no picture was given: upload one, then paint over what to redraw")
    picture = to_rgb_uint8(editor_value["background"])
    marks = [marked(np.asarray(layer)) for layer in editor_value.get("layers") or [] if layer is not None]
    if not any(m.any() for m in marks):
        raise ImageError("paint over the part of the picture to redraw (the brush marks the mask; through the "
                         "API, give the mask as a layer: white where to redraw, black elsewhere)")
    mask = np.max([cv2.resize(m, picture.shape[1::-1], interpolation=cv2.INTER_NEAREST) for m in marks], axis=0)
    return picture, mask


def drawing(editor_value):
    """A canvas value (gradio ImageEditor dict, or a plain array) -> RGB, strokes dark on white."""
    if isinstance(editor_value, dict):
        editor_value = editor_value.get("composite")
    if editor_value is None:
        raise ImageError("the canvas is empty: draw something first")
    return to_rgb_uint8(editor_value)


def friendly(runner, names=(), defaults=()):
    """The runner behind a UI, taking the page's inputs in the order of `names` (which the HTTP API then
    names, with `defaults` for those a caller leaves out), showing errors as messages, never as tracebacks."""

    def run(image, *values, progress=gr.Progress(track_tqdm=True)):
        try:
            return runner(image, **dict(zip(names, values)))
        except (ImageError, WeightsError, ValueError) as error:
            raise page_error(error) from error
        except Exception as error:  # keep the server up and say something useful; details go to the log
            raise failure(error) from error

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = [*defaults, *[inspect.Parameter.empty] * (len(names) - len(defaults))]
    run.__signature__ = inspect.Signature(
        [inspect.Parameter("image", positional),
         *(inspect.Parameter(name, positional, default=value) for name, value in zip(names, defaults)),
         inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress(track_tqdm=True))])
    return run


def settings_component(name, value):
    """The control of one Settings field, made from its metadata."""
    f = field_of(name)
    label, help_text, number_range, choices = (f.metadata[k] for k in ("label", "help", "range", "choices"))
    info = help_text or None
    if f.type is bool:
        return gr.Checkbox(label=label, value=value, info=info)
    if choices:
        widget = gr.Dropdown if name == "sampler" else gr.Radio
        return widget(label=label, choices=list(choices), value=value, info=info)
    if number_range:
        minimum, maximum, step = number_range
        return gr.Slider(label=label, minimum=minimum, maximum=maximum, step=step, value=value, info=info)
    return gr.Textbox(label=label, value=value, info=info)


def page_component(task, name, value):
    """A page input that is not a setting: the preprocessor choice, a region mask, a control unit's inputs."""
    if name == "preprocessor":
        return gr.Radio(label="Preprocessor", choices=[*task.annotators, NO_ANNOTATOR], value=value)
    if name.endswith("region_mask"):
        return mask_editor()
    unit_input = name.split("_", 1)[1]  # unit<k>_<input>
    if unit_input == "enabled":
        return gr.Checkbox(label="Enable", value=value)
    if unit_input == "image":
        return uploaded_image(label="Picture (none: the input image)", sources=["upload", "clipboard"])
    if unit_input == "preprocessor":
        return gr.Dropdown(label="Preprocessor", choices=[NO_ANNOTATOR, *ANNOTATORS], value=value)
    if unit_input == "control":
        return gr.Dropdown(label="Control file", choices=control_choices(), value=value, allow_custom_value=True,
                           info="a file in models/ or a path; the app's control runs it on this unit's picture")
    return settings_component(unit_input, value)


def mask_editor():
    """A region mask, painted white on black (or uploaded: white where the control acts)."""
    black = np.zeros((512, 512, 3), np.uint8)
    return gr.ImageEditor(value={"background": black, "layers": [], "composite": None}, type="numpy",
                          label="Region mask: paint white where the control acts (nothing white: everywhere)",
                          sources=["upload", "clipboard"], layers=False, transforms=(), canvas_size=(512, 512),
                          brush=gr.Brush(colors=["#ffffff"], default_size=48, color_mode="fixed"))


def build_demo(task, runner):
    defaults = task.defaults(runner.toy)
    values = {**task.annotator_defaults(), **{p.name: p.value for p in task.extra if p.value is not None},
              **{name: getattr(defaults, name) for name in task.settings()}, "preprocessor": task.annotator,
              "region_mask": None, "pose": ""}
    for unit in EXTRA_UNITS:
        values.update(unit_defaults(unit, task.unit_preprocessor))
    names = task.inputs()
    page_inputs = [name for name in names if not name.startswith("unit") and name != "pose"]
    annotator_params = {p.name: p for p in task.extra}

    def make(name):
        if name in annotator_params:
            return component(annotator_params[name], values[name])
        if name in ("preprocessor", "region_mask") or name.startswith("unit"):
            return page_component(task, name, values[name])
        return settings_component(name, values[name])

    with gr.Blocks(title=task.title) as demo:
        gr.Markdown(f"## {task.title}")
        gr.Markdown(runner.note)
        with gr.Row():
            with gr.Column():
                image = picture_input(task)
                editor = pose_editor() if task.pose_editor else None
                components = {"pose": editor.editor} if editor else {}
                components["prompt"] = make("prompt")
                run = gr.Button("Run", variant="primary")
                with gr.Accordion("Advanced options", open=False):
                    components.update({name: make(name) for name in page_inputs[1:]})
                for unit in EXTRA_UNITS:
                    with gr.Accordion(f"Control unit {unit}", open=False):
                        components.update({name: make(name) for name in unit_inputs(unit)})
            with gr.Column():
                gallery = gr.Gallery(label="Output", columns=2, height="auto", format="png")
                info = gr.Markdown()
        if editor:
            detect_inputs = ["detector", "include_hand", "include_face", "detect_resolution", "pixel_perfect",
                             "image_resolution"]
            editor.wire(image, [components[n] for n in detect_inputs], runner.pose_json)
        run.click(fn=friendly(runner, names, [values[name] for name in names]),
                  inputs=[image, *(components[name] for name in names)], outputs=[gallery, info],
                  api_name="generate")
        examples = example_pictures(task)
        if examples:  # one click: the picture as the map, its prompt, the page's defaults, straight to the images
            gr.Examples([[str(path), NO_ANNOTATOR, prompt] for path, prompt in examples.values()],
                        [image, components["preprocessor"], components["prompt"]], [gallery, info],
                        friendly(runner, ["preprocessor", "prompt"]), run_on_click=True, cache_examples=False,
                        label="Examples the shipped model follows", example_labels=list(examples))
    return demo


EXAMPLES = Path(tempfile.gettempdir()) / "controlnet-examples"


def example_pictures(task):
    """{label: (PNG path, prompt)}: maps the shipped toy model follows, with prompts in its colours, for the
    apps whose maps are outlines."""
    if task.toy != "control" or task.canvas or task.annotator is None:
        return {}
    examples = {"a circle": (circle_outline(256), TOY_PROMPT),
                "a drawn star": (star_outline(256), "a gold star on a navy background"),
                "a scribble": (scribble_outline(256), "a forest green circle on a light yellow background")}
    EXAMPLES.mkdir(exist_ok=True)
    paths = {}
    for label, (picture, prompt) in examples.items():
        path = EXAMPLES / f"{label.replace(' ', '_')}.png"
        if not path.is_file():
            save_png(picture, path, {})
        paths[label] = (path, prompt)
    return paths


def picture_input(task):
    """The page's picture: a drawing canvas, an upload to paint a mask on, or a plain upload."""
    if task.canvas:
        white = np.full((512, 512, 3), 255, np.uint8)
        return gr.ImageEditor(value={"background": white, "layers": [], "composite": None}, type="numpy",
                              label="Draw (black on white)", canvas_size=(512, 512),
                              brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"))
    if task.start == "inpaint":
        return gr.ImageEditor(type="numpy", label="Picture: upload, then paint over what to redraw",
                              sources=["upload", "clipboard"], layers=False, transforms=(),
                              brush=gr.Brush(colors=["#ffffff"], default_size=32, color_mode="fixed"))
    return uploaded_image(label="Input image", sources=["upload", "clipboard"])


def parse_args(task, argv=None):
    p = argparse.ArgumentParser(description=task.title)
    files = " or ".join(f"models/{name}" for name in task.control)
    p.add_argument("--control", help=f"control checkpoint (default: {files} if present, else the shipped toy model)")
    p.add_argument("--base", default=config.BASE or (f"models/{task.base}" if task.base else None),
                   help=f"SD checkpoint for control-only files (default: models/{task.base or 'v1-5-pruned.ckpt'})")
    p.add_argument("--config", default=config.CONFIG,
                   help="model yaml for real checkpoints (default: the yaml beside the control file, else "
                        "models/cldm_v15.yaml)")
    p.add_argument("--annotator-ckpts", default=config.ANNOTATOR_CKPTS, help="folder of annotator weights")
    p.add_argument("--output-dir", default=config.OUTPUT_DIR)
    p.add_argument("--host", default=config.HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=config.PORT)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--queue-size", type=int, default=config.QUEUE_SIZE, help="requests allowed to wait")
    add_threads_argument(p, config.THREADS)
    p.add_argument("--low-vram", action="store_true", default=config.SAVE_MEMORY,
                   help="keep only the running part of the model on the GPU (small GPUs)")
    add_precision_argument(p, config.PRECISION)
    p.add_argument("--compile", action="store_true", default=config.COMPILE,
                   help="torch.compile the UNet and ControlNet (the first request then takes a while longer)")
    return p.parse_args(argv)


def make_runner(task, args):
    offload = args.low_vram and torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = PRECISIONS[resolve_precision(args.precision, device)]
    model, note, toy = resolve_model(task.control, args.control, args.base, args.config, "cpu" if offload else None,
                                     dtype)
    if model is not None and not toy:
        text_encoder = model.cond_stage_model
        if (task.text_windows, task.clip_skip) != (1, 1) and not hasattr(text_encoder, "windows"):
            raise SystemExit(f"{task.title} needs an SD 1.x base (CLIP text encoder), not {type(text_encoder)}")
        if hasattr(text_encoder, "windows"):
            text_encoder.windows, text_encoder.clip_skip = task.text_windows, task.clip_skip
        if task.pooled:
            model.control_model.global_average_pooling = True
    if model is not None:
        speed_up(model, compile=args.compile)
    return Runner(task, model, note, args.output_dir, args.annotator_ckpts, "cuda" if offload else None, toy)


def launch(task, argv=None):
    args = parse_args(task, argv)
    log_to_terminal()
    use_threads(args.threads)
    runner = make_runner(task, args)
    print(runner.note)
    demo = build_demo(task, runner)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
