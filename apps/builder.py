"""The one app builder behind every gradio_*2image.py: a Task names the annotator, the control file and the
annotator's sliders; everything else (the familiar controls, saving, errors, launching) is here.
"""

import argparse
import inspect
import logging
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import cv2
import gradio as gr
import numpy as np
import torch

import config
from annotators import (
    ANNOTATORS,
    RESIZE_MODES,
    AnnotatorNotice,
    ImageError,
    WeightsError,
    condition_map,
    fit,
    read_image,
    resize_image,
    to_rgb_uint8,
)
from apps.models import resolve_model
from cldm.cldm import BLOCK_WEIGHT_PRESETS
from cldm.img2img import condition_picture, inpaint_condition
from cldm.lowvram import low_vram
from cldm.outputs import next_path, save_png
from cldm.pipeline import generate
from cldm.settings import CONTROL_MODES
from cldm.samplers import SAMPLERS
from cldm.speed import speed_up
from ldm.precision import PRECISIONS, add_precision_argument, precision_of, resolve_precision

log = logging.getLogger(__name__)

REAL_DEFAULTS = {"image_resolution": 512, "added_prompt": "best quality, extremely detailed",
                 "negative_prompt": "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                                    "fewer digits, cropped, worst quality, low quality"}
TOY_DEFAULTS = {"image_resolution": 128, "added_prompt": "", "negative_prompt": ""}
TOY_PROMPT = "a crimson circle on a light sky blue background"


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
            if name != NO_ANNOTATOR:
                parameters = inspect.signature(ANNOTATORS[name]).parameters.items()
                defaults.update({k: p.default for k, p in parameters if p.default is not inspect.Parameter.empty})
        return defaults

    def settings(self):
        """The names of the app's own inputs after the annotator parameters, in the page's order."""
        uploads_a_map = self.annotator is not None and not self.canvas
        return [*(["preprocessor"] if uploads_a_map else []),
                *(["pixel_perfect"] if self.detect_resolution is not None else []),
                *(["denoise"] if self.start else []), *(["mask_blur"] if self.start == "inpaint" else []),
                "block_weights", "region_mask", "resize_mode"]


class Runner:
    """The model behind an app, turning the UI's values into a detected map and images saved with parameters."""

    def __init__(self, task, model, note, output_dir=config.OUTPUT_DIR, annotator_weights=None, low_vram_device=None,
                 toy=False):
        self.task, self.model, self.note, self.toy = task, model, note, toy
        self.output_dir, self.annotator_weights = output_dir, annotator_weights
        self.low_vram_device = low_vram_device  # keep the model in CPU memory, run it part by part there
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
        if annotator in (None, NO_ANNOTATOR):
            return condition_map(picture, None, image_resolution, nearest=self.task.nearest)
        accepted = inspect.signature(ANNOTATORS[annotator]).parameters
        params = {k: v for k, v in params.items() if k in accepted}
        if "weights" in accepted and self.annotator_weights:
            params["weights"] = self.annotator_weights
        return condition_map(picture, annotator, image_resolution, detect_resolution, self.task.nearest, **params)

    def condition(self, image, resolution, detect_resolution, params, app):
        """(the control's condition, the map shown and saved, the starting picture, the mask) for the UI's input."""
        if self.task.start == "inpaint":
            picture, mask = painted(image)
            init = resize_image(picture, resolution)
            mask = cv2.resize(mask, (init.shape[1], init.shape[0]), interpolation=cv2.INTER_LINEAR)
            condition = inpaint_condition(init, mask, float(app["mask_blur"]))
            return condition, condition_picture(condition), init, mask
        picture = drawing(image) if self.task.canvas else image
        detected = self.detect(picture, resolution, detect_resolution, app.get("preprocessor"), **params)
        init = resize_image(to_rgb_uint8(picture), resolution) if self.task.start == "img2img" else None
        return detected, detected, init, None

    def __call__(self, image, prompt, added_prompt, negative_prompt, num_samples, image_resolution, detect_resolution,
                 steps, guidance_scale, seed, eta, strength, guess_mode, control_start, control_end, control_mode,
                 sampler, *extra):
        params = dict(zip([s.name for s in self.task.extra] + self.task.settings(), extra))
        app = {name: params.pop(name) for name in self.task.settings()}
        if app.get("pixel_perfect"):  # the annotator sees the picture at the size it is generated at
            detect_resolution = image_resolution
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always", AnnotatorNotice)
            condition, shown, init, mask = self.condition(image, int(image_resolution), int(detect_resolution) or None,
                                                          params, app)
        said = "".join(f" {n.message}" for n in notices if issubclass(n.category, AnnotatorNotice))
        if not self.generates:
            return [shown], self.note + said
        settings = dict(prompt=prompt, added_prompt=added_prompt, negative_prompt=negative_prompt,
                        num_samples=int(num_samples), steps=int(steps), guidance_scale=float(guidance_scale),
                        strength=float(strength), guess_mode=bool(guess_mode), eta=float(eta),
                        sampler=sampler, control_start=float(control_start), control_end=float(control_end),
                        control_mode=control_mode)
        if self.task.start:
            settings.update(denoise=float(app["denoise"]), mask_blur=float(app.get("mask_blur", 0.0)))
        settings["block_weights"] = app["block_weights"].strip() or "uniform"
        region = app["region_mask"]
        if region is not None:
            region = fit(to_rgb_uint8(region), shown.shape[:2], app["resize_mode"])
        hint = None if self.toy and self.task.toy == "plain" else condition
        with low_vram(self.model, self.low_vram_device) if self.low_vram_device else nullcontext():
            images, used_seed = generate(self.model, hint, seed=int(seed), init_image=init, mask=mask,
                                         region_mask=region, **settings)
        record = {**settings, "seed": used_seed, "annotator": params, "size": list(shown.shape[:2]),
                  "precision": self.precision}
        if self.task.start == "inpaint":  # the condition is made again from the picture and the mask
            record["inpaint_control"] = hint is not None
        for key, picture in (("hint", None if hint is None else shown), ("init_image", init), ("mask", mask),
                             ("region_mask", region)):
            if picture is not None:
                stem = {"hint": "map", "init_image": "init", "region_mask": "region"}.get(key, key)
                record[key] = save_png(picture, next_path(self.output_dir, f"{self.task.name}-{stem}"),
                                       {"annotator": params} if key == "hint" else {}).name
        saved = [save_png(image, next_path(self.output_dir, self.task.name), {**record, "sample": i}).name
                 for i, image in enumerate(images)]
        beside = ", ".join(record[k] for k in ("hint", "init_image", "mask", "region_mask") if k in record)
        info = f"Seed {used_seed}. Saved {', '.join(saved)} and {beside} in {self.output_dir}/.{said}"
        return [shown, *images], info


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
            raise gr.Error(str(error)) from error
        except Exception as error:  # PIL cannot even identify it
            raise gr.Error(f"the upload is not a readable image ({error}); give a PNG, JPEG or WebP file") from error

    image.preprocess = preprocess
    return image


def painted(editor_value):
    """An inpaint editor's value -> (the picture RGB uint8, the mask: 255 where painted over)."""
    if not isinstance(editor_value, dict) or editor_value.get("background") is None:
        raise ImageError("no picture was given: upload one, then paint over what to redraw")
    picture = to_rgb_uint8(editor_value["background"])
    strokes = [np.asarray(layer) for layer in editor_value.get("layers") or [] if layer is not None]
    alpha = [layer[..., 3] for layer in strokes if layer.ndim == 3 and layer.shape[2] == 4]
    if not any(a.any() for a in alpha):
        raise ImageError("paint over the part of the picture to redraw (the brush marks the mask)")
    mask = np.where(np.max([cv2.resize(a, picture.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                            for a in alpha], axis=0) > 0, 255, 0).astype(np.uint8)
    return picture, mask


def drawing(editor_value):
    """A canvas value (gradio ImageEditor dict, or a plain array) -> RGB, strokes dark on white."""
    if isinstance(editor_value, dict):
        editor_value = editor_value.get("composite")
    if editor_value is None:
        raise ImageError("the canvas is empty: draw something first")
    return to_rgb_uint8(editor_value)


def friendly(runner):
    """The runner behind a UI that shows errors as messages, never as tracebacks."""

    def run(*values, progress=gr.Progress(track_tqdm=True)):
        try:
            return runner(*values)
        except (ImageError, WeightsError, ValueError) as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # keep the server up and say something useful; details go to the log
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(error).__name__}: {error}") from error

    return run


def app_settings(task):
    """The components of Task.settings(), in its order."""
    components = {
        "preprocessor": lambda: gr.Radio(label="Preprocessor", choices=[*task.annotators, NO_ANNOTATOR],
                                         value=task.annotator),
        "denoise": lambda: gr.Slider(label="Denoise (0 keeps the picture, 1 redraws it all)", minimum=0.0,
                                     maximum=1.0, value=1.0, step=0.01),
        "mask_blur": lambda: gr.Slider(label="Mask Blur", minimum=0.0, maximum=16.0, value=5.0, step=0.1),
        "block_weights": lambda: gr.Textbox(label=f"Block weights: {', '.join(BLOCK_WEIGHT_PRESETS)}, or 13 numbers "
                                                  "(shallowest block first, the middle block last)", value="uniform"),
        "region_mask": lambda: uploaded_image(label="Region mask (white where the control acts; none: everywhere)",
                                              sources=["upload", "clipboard"]),
        "resize_mode": lambda: gr.Radio(label="Resize mode (a region mask of another shape)",
                                        choices=list(RESIZE_MODES), value="just_resize"),
        "pixel_perfect": lambda: gr.Checkbox(label="Pixel perfect (detect at the image resolution)", value=False),
    }
    return [components[name]() for name in task.settings()]


def build_demo(task, runner):
    toy = runner.toy
    defaults = TOY_DEFAULTS if toy else REAL_DEFAULTS
    annotator_defaults = task.annotator_defaults()
    with gr.Blocks(title=task.title) as demo:
        gr.Markdown(f"## {task.title}")
        gr.Markdown(runner.note)
        with gr.Row():
            with gr.Column():
                if task.canvas:
                    white = np.full((512, 512, 3), 255, np.uint8)
                    image = gr.ImageEditor(value={"background": white, "layers": [], "composite": None},
                                           type="numpy", label="Draw (black on white)", canvas_size=(512, 512),
                                           brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"))
                elif task.start == "inpaint":
                    image = gr.ImageEditor(type="numpy", label="Picture: upload, then paint over what to redraw",
                                           sources=["upload", "clipboard"], layers=False, transforms=(),
                                           brush=gr.Brush(colors=["#ffffff"], default_size=32, color_mode="fixed"))
                else:
                    image = uploaded_image(label="Input image", sources=["upload", "clipboard"])
                prompt = gr.Textbox(label="Prompt", value=TOY_PROMPT if toy else task.prompt)
                run = gr.Button("Run", variant="primary")
                with gr.Accordion("Advanced options", open=False):
                    num_samples = gr.Slider(label="Images", minimum=1, maximum=12, value=1, step=1)
                    image_resolution = gr.Slider(label="Image Resolution", minimum=64, maximum=1024,
                                                 value=defaults["image_resolution"], step=64)
                    detects = task.detect_resolution is not None  # else the annotator runs at image resolution
                    detect_resolution = gr.Slider(label="Detect Resolution", minimum=64 if detects else 0,
                                                  maximum=1024, value=task.detect_resolution or 0, step=64,
                                                  visible=detects)
                    strength = gr.Slider(label="Control Strength", minimum=0.0, maximum=2.0, value=1.0, step=0.01)
                    guess_mode = gr.Checkbox(label="Guess Mode", value=False)
                    control_start = gr.Slider(label="Control Start", minimum=0.0, maximum=1.0, value=0.0, step=0.01)
                    control_end = gr.Slider(label="Control End", minimum=0.0, maximum=1.0, value=1.0, step=0.01)
                    control_mode = gr.Radio(label="Control Mode", choices=list(CONTROL_MODES), value="balanced")
                    extra = [component(param, annotator_defaults[param.name]) for param in task.extra]
                    extra += app_settings(task)
                    sampler = gr.Dropdown(label="Sampler", choices=list(SAMPLERS), value="DDIM")
                    steps = gr.Slider(label="Steps", minimum=1, maximum=100, value=20, step=1)
                    guidance = gr.Slider(label="Guidance Scale", minimum=0.1, maximum=30.0, value=9.0, step=0.1)
                    seed = gr.Slider(label="Seed", minimum=-1, maximum=2147483647, step=1, value=-1)
                    eta = gr.Number(label="eta (DDIM)", value=0.0)
                    added_prompt = gr.Textbox(label="Added Prompt", value=defaults["added_prompt"])
                    negative_prompt = gr.Textbox(label="Negative Prompt", value=defaults["negative_prompt"])
            with gr.Column():
                gallery = gr.Gallery(label="Output", columns=2, height="auto", format="png")
                info = gr.Markdown()
        inputs = [image, prompt, added_prompt, negative_prompt, num_samples, image_resolution, detect_resolution,
                  steps, guidance, seed, eta, strength, guess_mode, control_start, control_end, control_mode,
                  sampler, *extra]
        run.click(fn=friendly(runner), inputs=inputs, outputs=[gallery, info], api_name="generate")
    return demo


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
    p.add_argument("--threads", type=int, default=config.THREADS, help="CPU threads for the model "
                                                                       "(default: all cores but one)")
    p.add_argument("--low-vram", action="store_true", default=config.SAVE_MEMORY,
                   help="keep only the running part of the model on the GPU (small GPUs)")
    add_precision_argument(p, config.PRECISION)
    p.add_argument("--compile", action="store_true", default=config.COMPILE,
                   help="torch.compile the UNet and ControlNet (the first request then takes a while longer)")
    return p.parse_args(argv)


def compute_threads(requested=None):
    """Torch's CPU threads in an app: all cores but one by default. The web server and the page's client
    need a core; when torch's threads have to share theirs, every denoising step waits on the slowest one
    (on 2 cores, 20 steps over HTTP took 4.1 s with 2 threads, 2.8 s with 1)."""
    return requested or max(1, (os.cpu_count() or 2) - 1)


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
    torch.set_num_threads(compute_threads(args.threads))
    runner = make_runner(task, args)
    print(runner.note)
    demo = build_demo(task, runner)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
