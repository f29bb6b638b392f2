"""The one app builder behind every gradio_*2image.py: a Task names the annotator, the control file and the
annotator's sliders; everything else (the familiar controls, saving, errors, launching) is here.
"""

import argparse
import inspect
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
import torch

import config
from annotators import ANNOTATORS, ImageError, WeightsError, condition_map, read_image, to_rgb_uint8
from apps.models import resolve_model
from cldm.lowvram import low_vram
from cldm.outputs import next_path, save_png
from cldm.pipeline import CONTROL_MODES, generate
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


@dataclass
class Task:
    name: str  # the outputs' file stem
    title: str
    annotator: str  # a key of annotators.ANNOTATORS
    control: str  # the release's control file for this condition, looked for in models/
    extra: list = field(default_factory=list)  # Slider / Choice / Check for the annotator's parameters
    detect_resolution: int | None = 512  # None: the annotator runs at the image resolution (no slider)
    nearest: bool = False  # resize the map without blending (pose skeletons, segment colours)
    canvas: bool = False  # draw the input instead of uploading it
    prompt: str = ""

    def annotator_defaults(self):
        parameters = inspect.signature(ANNOTATORS[self.annotator]).parameters
        return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


class Runner:
    """The model behind an app, turning the UI's values into a detected map and images saved with parameters."""

    def __init__(self, task, model, note, output_dir=config.OUTPUT_DIR, annotator_weights=None, low_vram_device=None,
                 toy=False):
        self.task, self.model, self.note, self.toy = task, model, note, toy
        self.output_dir, self.annotator_weights = output_dir, annotator_weights
        self.low_vram_device = low_vram_device  # keep the model in CPU memory, run it part by part there
        self.precision = precision_of(model) if model is not None else None
        if model is not None:
            self.note += f"\n\nComputing in {self.precision}."

    def detect(self, image, image_resolution, detect_resolution=None, **params):
        """The condition map at the generation size: image resolution's grid, sides multiples of 64."""
        image = drawing(image) if self.task.canvas else image
        if "weights" in inspect.signature(ANNOTATORS[self.task.annotator]).parameters and self.annotator_weights:
            params["weights"] = self.annotator_weights
        return condition_map(image, self.task.annotator, image_resolution, detect_resolution, self.task.nearest,
                             **params)

    def __call__(self, image, prompt, added_prompt, negative_prompt, num_samples, image_resolution, detect_resolution,
                 steps, guidance_scale, seed, eta, strength, guess_mode, control_start, control_end, control_mode,
                 sampler, *extra):
        params = dict(zip([s.name for s in self.task.extra], extra))
        detected = self.detect(image, int(image_resolution), int(detect_resolution) or None, **params)
        if self.model is None:
            return [detected], self.note
        settings = dict(prompt=prompt, added_prompt=added_prompt, negative_prompt=negative_prompt,
                        num_samples=int(num_samples), steps=int(steps), guidance_scale=float(guidance_scale),
                        strength=float(strength), guess_mode=bool(guess_mode), eta=float(eta),
                        sampler=sampler, control_start=float(control_start), control_end=float(control_end),
                        control_mode=control_mode)
        with low_vram(self.model, self.low_vram_device) if self.low_vram_device else nullcontext():
            images, used_seed = generate(self.model, detected, seed=int(seed), **settings)
        map_path = save_png(detected, next_path(self.output_dir, f"{self.task.name}-map"), {"annotator": params})
        saved = []
        for i, image in enumerate(images):
            record = {**settings, "seed": used_seed, "sample": i, "hint": map_path.name, "annotator": params,
                      "size": list(detected.shape[:2]), "precision": self.precision}
            saved.append(save_png(image, next_path(self.output_dir, self.task.name), record).name)
        info = f"Seed {used_seed}. Saved {', '.join(saved)} and {map_path.name} in {self.output_dir}/."
        return [detected, *images], info


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
    p.add_argument("--control", help=f"control checkpoint (default: models/{task.control} if present, "
                                     "else the shipped toy model)")
    p.add_argument("--base", default=config.BASE,
                   help="SD checkpoint for control-only files (default: models/v1-5-pruned.ckpt)")
    p.add_argument("--config", default=config.CONFIG, help="model yaml for real checkpoints")
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
