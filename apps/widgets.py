"""The page's controls, each made from what it shows: a Settings field's metadata, an annotator parameter, a
control unit's input, the picture."""


import gradio as gr
import numpy as np
from gradio.components.image_editor import EditorData
from pydantic import ValidationError

from annotators import ANNOTATORS, ImageError, read_image
from apps.errors import page_error
from apps.task import NO_ANNOTATOR, Check, Choice
from apps.units import control_choices
from cldm.loras import lora_names
from cldm.settings import SettingError, checked, checked_value, field_of, short
from ldm.files import MODELS


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


def settings_component(name, value, api_name=None):
    """The control of one Settings field, made from its metadata; what arrives in it is checked as the setting
    (named `api_name`, as the page's input is called) before anything else reads it."""
    f = field_of(name)
    label, help_text, number_range, choices = (f.metadata[k] for k in ("label", "help", "range", "choices"))
    info = help_text or None
    if f.type is bool:
        widget = gr.Checkbox(label=label, value=value, info=info)
    elif choices:
        widget = (gr.Dropdown if name == "sampler" else gr.Radio)(label=label, choices=list(choices), value=value,
                                                                   info=info)
    elif number_range:
        minimum, maximum, step = number_range
        widget = gr.Slider(label=label, minimum=minimum, maximum=maximum, step=step, value=value, info=info)
    else:
        widget = gr.Textbox(label=label, value=value, info=info)
    blank_is_default = name == "block_weights"  # an emptied box: the default (Runner)
    return checked_on_arrival(widget, lambda v: v if blank_is_default and v == "" else checked(f, v, api_name))


def lora_picker(box):
    """A choice of models/loras/'s files beside the LoRAs box: a file chosen is added to the box at weight 1, to
    edit there (the box is what the request sends)."""
    names = lora_names()
    picker = gr.Dropdown(label="Add a LoRA", choices=names, value=None, interactive=bool(names),
                         info="from models/loras/" if names else "put LoRA files in models/loras/ to choose them")
    picker.input(with_lora, [picker, box], [box, picker], api_name=False)
    return picker


def with_lora(name, loras):
    """The LoRAs box's text with `name` added at weight 1, and the picker cleared."""
    return (", ".join(p for p in (loras.strip(), f"{name}:1") if p) if name else loras), None


def checked_on_arrival(widget, check):
    """`widget` whose value, from the page or any HTTP client, is first given to `check` (a setting's or an
    annotator parameter's): a wrong one is the project's message naming the input, not a framework error."""
    preprocess = widget.preprocess

    def checked_preprocess(payload):
        try:
            return preprocess(check(payload))
        except SettingError as error:
            raise page_error(error) from None

    widget.preprocess = checked_preprocess
    return widget


def page_component(task, name, value, control_dirs=(MODELS,)):
    """A page input that is not a setting: the preprocessor choice, a region mask, a control unit's inputs (its
    control files are those in `control_dirs`), each checked on arrival."""
    one_of = lambda choices: lambda v: checked_value(name, v, str, choices=choices)  # noqa: E731
    if name == "preprocessor":
        choices = [*task.annotators, NO_ANNOTATOR]
        return checked_on_arrival(gr.Radio(label="Preprocessor", choices=choices, value=value), one_of(choices))
    if name.endswith("region_mask"):
        return mask_editor()
    unit_input = name.split("_", 1)[1]  # unit<k>_<input>
    if unit_input == "enabled":
        return checked_on_arrival(gr.Checkbox(label="Enable", value=value), lambda v: checked_value(name, v, bool))
    if unit_input == "image":
        return uploaded_image(label="Picture (none: the input image)", sources=["upload", "clipboard"])
    if unit_input == "preprocessor":
        choices = [NO_ANNOTATOR, *ANNOTATORS]
        return checked_on_arrival(gr.Dropdown(label="Preprocessor", choices=choices, value=value), one_of(choices))
    if unit_input == "control":
        choices = control_choices(control_dirs)
        return checked_on_arrival(gr.Dropdown(label="Control file", choices=choices, value=value,
                                              info="a control file of the server's models/ folder; the app's "
                                                   "control runs it on this unit's picture"), one_of(choices))
    return settings_component(unit_input, value, api_name=name)


def taking_files(editor, what):
    """An ImageEditor that takes, through the API, its own value or a plain picture file (as its picture, as an
    upload into the editor is: a mask is never dropped for its form), and refuses anything else, or a file that
    is no picture, with a message naming `what` it is."""
    wrong = lambda value: page_error(  # noqa: E731
        f"{what} is the image editor's value (background, layers, composite) or a picture file, not {short(value)}")

    class Data(EditorData):
        @classmethod
        def model_validate(cls, value, **kwargs):
            if isinstance(value, dict) and not {"background", "layers", "composite"} & set(value):
                if "path" not in value:
                    raise wrong(value)
                value = {"background": value, "layers": [], "composite": None}
            elif isinstance(value, dict) and value.get("layers") is None:
                value = {**value, "layers": []}
            try:
                return super().model_validate(value, **kwargs)
            except ValidationError:
                raise wrong(value) from None

    to_arrays = editor.preprocess

    def preprocess(payload):
        try:
            return to_arrays(payload)
        except Exception as error:
            raise page_error(f"{what} could not be read as a picture ({error}); give a PNG or JPEG") from error

    editor.data_model, editor.preprocess = Data, preprocess
    return editor


def mask_editor():
    """A region mask, painted white on black (or uploaded: white where the control acts)."""
    black = np.zeros((512, 512, 3), np.uint8)
    return taking_files(gr.ImageEditor(
        value={"background": black, "layers": [], "composite": None}, type="numpy",
        label="Region mask: paint white where the control acts (nothing white: everywhere)",
        sources=["upload", "clipboard"], layers=False, transforms=(), canvas_size=(512, 512),
        brush=gr.Brush(colors=["#ffffff"], default_size=48, color_mode="fixed")), "a region mask")


def picture_input(task):
    """The page's picture: a drawing canvas, an upload to paint a mask on, or a plain upload."""
    if task.canvas:
        white = np.full((512, 512, 3), 255, np.uint8)
        return taking_files(gr.ImageEditor(value={"background": white, "layers": [], "composite": None},
                                           type="numpy", label="Draw (black on white)", canvas_size=(512, 512),
                                           brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed")),
                            "the drawing")
    if task.workflow == "inpaint":
        return taking_files(gr.ImageEditor(type="numpy", label="Picture: upload, then paint over what to redraw",
                                           sources=["upload", "clipboard"], layers=False, transforms=(),
                                           brush=gr.Brush(colors=["#ffffff"], default_size=32, color_mode="fixed")),
                            "the picture to inpaint")
    return uploaded_image(label="Input image", sources=["upload", "clipboard"])

def component(param, default):
    label = param.label or param.name.replace("_", " ").capitalize()
    value = default if param.value is None else param.value
    if isinstance(param, Choice):
        widget = gr.Radio(label=label, choices=list(param.choices), value=value)
    elif isinstance(param, Check):
        widget = gr.Checkbox(label=label, value=bool(value))
    else:
        widget = gr.Slider(label=label, minimum=param.minimum, maximum=param.maximum, step=param.step, value=value)
    return checked_on_arrival(widget, param.checked)
