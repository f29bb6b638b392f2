"""An app's page: its layout, the Run button behind the HTTP API, errors as messages, and examples the shipped
model follows."""

import inspect
import tempfile
from pathlib import Path

import gradio as gr

from annotators import ImageError, WeightsError
from apps.errors import failure, page_error
from apps.pose_editor import pose_editor
from apps.task import NO_ANNOTATOR
from apps.units import EXTRA_UNITS, unit_defaults, unit_inputs
from apps.widgets import component, lora_picker, page_component, picture_input, settings_component
from cldm.outputs import save_png
from toy.model import TOY_PROMPT, circle_outline, scribble_outline, star_outline


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


def build_demo(task, runner):
    defaults = runner.defaults()
    values = {**task.annotator_defaults(), **{p.name: p.value for p in task.annotator_params if p.value is not None},
              **{name: getattr(defaults, name) for name in task.settings()}, "preprocessor": task.annotator,
              "region_mask": None, "pose": ""}
    for unit in EXTRA_UNITS:
        values.update(unit_defaults(unit, task.unit_preprocessor))
    names = task.inputs()
    page_inputs = [name for name in names if not name.startswith("unit") and name != "pose"]
    annotator_params = {p.name: p for p in task.annotator_params}

    def make(name):
        if name in annotator_params:
            return component(annotator_params[name], values[name])
        if name in ("preprocessor", "region_mask") or name.startswith("unit"):
            return page_component(task, name, values[name], runner.control_dirs)
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
                    if "loras" in components:
                        lora_picker(components["loras"])
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
