"""gradio_annotator.py's UI: every annotator on its own tab, its parameters taken from its signature and shown
with the labels, help and ranges of PARAMETERS. Each tab says before running which weights it needs and whether
they are on disk; its HTTP endpoint is the annotator's key (api_name="/canny", ...), its inputs the image and
the annotator's parameter names."""

import inspect
import typing
import warnings
from dataclasses import dataclass

import gradio as gr

from annotators import ANNOTATORS, REFERENCE_MODES, AnnotatorNotice, ImageError, WeightsError
from annotators.util import MAX_SIDE
from annotators.weights import ENV_VAR, FILES, NEEDS, found_on_disk
from apps.errors import page_error
from apps.widgets import checked_on_arrival, uploaded_image
from cldm.settings import checked_value

# the preprocessors that make a map: a reference unit's picture is the picture itself, nothing to see here
DETECTORS = {key: annotate for key, annotate in ANNOTATORS.items() if key not in REFERENCE_MODES}
TITLES = {
    "canny": "Canny edges",
    "scribble": "Scribble (drawing)",
    "fake_scribble": "Fake scribble (HED)",
    "hed": "HED soft edges",
    "mlsd": "M-LSD straight lines",
    "openpose": "OpenPose",
    "openpose_mediapipe": "Pose (mediapipe)",
    "pose": "Pose (auto)",
    "depth": "MiDaS depth",
    "normal": "Normals from MiDaS depth",
    "seg": "Segmentation (ADE20K)",
    "lineart": "Line art",
    "lineart_anime": "Anime line art",
    "softedge": "Soft edges (PiDiNet, HED)",
    "scribble_from_photo": "Scribble from a photo",
    "invert": "Invert a drawing",
    "depth_leres": "LeReS depth",
    "depth_zoe": "ZoeDepth",
    "normalbae": "NormalBAE normals",
    "shuffle": "Content shuffle",
    "tile": "Tile (downsample)",
}


@dataclass(frozen=True)
class Parameter:
    label: str
    info: str
    range: tuple | None = None  # (minimum, maximum, step): a slider; None: the widget the default's type calls for


# every annotator parameter, by name, as a person reads it (a parameter means the same wherever it appears)
PARAMETERS = {
    "low_threshold": Parameter("Low threshold", "gradients below this are never edges", (1, 255, 1)),
    "high_threshold": Parameter("High threshold", "gradients above this are always edges; those between only "
                                "where they join one", (1, 255, 1)),
    "threshold": Parameter("Darkness threshold", "pixels darker than this become strokes", (1, 255, 1)),
    "detect_resolution": Parameter("Detect resolution", "the shorter side the detector sees, in pixels; the map "
                                   "comes out at this size", (64, MAX_SIDE, 64)),
    "value_threshold": Parameter("Line score threshold", "lines M-LSD scores below this are dropped: higher "
                                 "keeps fewer", (0.01, 2.0, 0.01)),
    "distance_threshold": Parameter("Minimum line length", "lines shorter than this (pixels) are dropped",
                                    (0.01, 20.0, 0.01)),
    "include_hand": Parameter("Hands", "also find each hand's 21 points"),
    "include_face": Parameter("Face", "also find the face's 70 points"),
    "min_visibility": Parameter("Minimum visibility", "how sure mediapipe must be that a point is visible to "
                                "draw it", (0.0, 1.0, 0.05)),
    "detector": Parameter("Detector", "the network that finds the lines or the pose"),
    "background_threshold": Parameter("Background threshold", "depth below this fraction counts as flat "
                                      "background", (0.0, 1.0, 0.01)),
    "coarse": Parameter("Coarse", "fewer, bolder lines"),
    "safe": Parameter("Safe", "edges quantised to three levels, which the control follows more robustly"),
    "xdog_threshold": Parameter("XDoG threshold", "with the xdog detector: higher draws fewer strokes", (1, 64, 1)),
    "remove_near": Parameter("Remove near (%)", "the nearest depths cut to black", (0, 100, 1)),
    "remove_background": Parameter("Remove background (%)", "the farthest depths cut to black", (0, 100, 1)),
    "shuffle_seed": Parameter("Seed", "the same seed scrambles the same way"),
    "downsample": Parameter("Downsample", "shrink by this factor; the tile control invents the detail back",
                            (1.0, 8.0, 0.5)),
    "weights": Parameter("Weights folder", f"a folder with this tab's files; empty: annotators/ckpts/ or "
                         f"${ENV_VAR}, else downloaded"),
}


# what each choice of a choice parameter (a Literal annotation) means, for the help under its radio buttons
CHOICES = {
    "auto": "OpenPose when its weights are on disk, else mediapipe",
    "openpose": "body, hands and face; needs its weights",
    "mediapipe": "everyone, with hands and face; bundled, no download",
    "pidinet": "PiDiNet, 3 MB of weights",
    "hed": "HED, 29 MB of weights",
    "xdog": "difference of Gaussians, no weights",
}


def parameter_component(name, default, annotation=None):
    """The widget of one annotator parameter, its value checked on arrival (from the page or any HTTP client)."""
    known = PARAMETERS.get(name) or Parameter(name.replace("_", " ").capitalize(), "")
    label, info = known.label, known.info or None
    if typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
        info = "; ".join(f"{choice}: {CHOICES[choice]}" for choice in choices if choice in CHOICES) or info
        widget, check = gr.Radio(label=label, info=info, choices=choices, value=default), (str, None, None, choices)
    elif isinstance(default, bool):
        widget, check = gr.Checkbox(label=label, info=info, value=default), (bool, None, None, None)
    elif isinstance(default, (int, float)):
        kind, precision = type(default), 0 if isinstance(default, int) else None
        if known.range:
            minimum, maximum, step = known.range
            widget = gr.Slider(minimum, maximum, value=default, step=step, label=label, info=info, precision=precision)
        else:
            minimum = maximum = None
            widget = gr.Number(label=label, info=info, value=default, precision=precision)
        check = (kind, minimum, maximum, None)
    else:
        widget, check = gr.Textbox(label=label, info=info, value="" if default is None else str(default)), (
            str, None, None, None)
    kind, low, high, choices = check
    optional = kind is str and not choices  # an empty weights folder: the default places
    return checked_on_arrival(widget, lambda v: checked_value(name, v, kind, low, high, choices, optional))


def weights_note(key):
    """The line under a tab's title: the weights it needs before it can run, and whether they are on disk."""
    if key == "pose":
        folder = found_on_disk(NEEDS["openpose"])
        return (f"*Auto uses OpenPose: its weights are in {folder}.*" if folder else
                "*OpenPose's weights are not on disk: auto uses mediapipe's bundled detectors, no download.*")
    names = NEEDS.get(key)
    if not names:
        return "*Needs no weights: runs offline.*"
    files = ", ".join(f"{name} (about {FILES.get(name, '?')})" for name in names)
    which = " with its default detector" if "detector" in inspect.signature(ANNOTATORS[key]).parameters else ""
    folder = found_on_disk(names)
    if folder:
        return f"*Needs {files}{which}: on disk in {folder}.*"
    return (f"*Needs {files}{which}: not on disk. The first run downloads it when the model hub can be reached; "
            f"offline, put it in annotators/ckpts/ or the weights folder below.*")


def runner(annotate, parameters):
    """`annotate` behind a tab: errors as messages, AnnotatorNotices (a fallback taken) as notes on the page;
    the HTTP API names its inputs after the annotator's parameters, whatever their labels."""

    def run(image, *values):
        params = {name: v for (name, _), v in zip(parameters, values) if not (name == "weights" and not v)}
        try:
            with warnings.catch_warnings(record=True) as notices:
                warnings.simplefilter("always", AnnotatorNotice)
                result = annotate(image, **params)
        except (ImageError, WeightsError, ValueError, ImportError) as error:
            raise page_error(error) from error
        for notice in notices:
            if issubclass(notice.category, AnnotatorNotice):
                gr.Info(str(notice.message))
        return result

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    run.__signature__ = inspect.Signature(
        [inspect.Parameter("image", positional),
         *(inspect.Parameter(name, positional, default=p.default) for name, p in parameters)])
    return run


def build_annotator_demo():
    with gr.Blocks(title="Annotators") as demo:
        gr.Markdown("## Annotators: the condition maps the controls take")
        notes = {}
        for key, annotate in DETECTORS.items():
            parameters = list(inspect.signature(annotate).parameters.items())[1:]  # after the image
            with gr.Tab(TITLES.get(key, key), id=key):
                notes[key] = gr.Markdown(weights_note(key))
                with gr.Row():
                    with gr.Column():
                        image = uploaded_image(label="Input image")
                        fields = [parameter_component(name, p.default, p.annotation) for name, p in parameters]
                        run = gr.Button("Run", variant="primary")
                    output = gr.Image(label=f"{TITLES.get(key, key)} map")
                run.click(fn=runner(annotate, parameters), inputs=[image, *fields], outputs=output, api_name=key)
        # weights downloaded by a run show as on disk when the page is opened again
        demo.load(lambda: [weights_note(key) for key in notes], outputs=list(notes.values()),
                  api_visibility="private")
    return demo
