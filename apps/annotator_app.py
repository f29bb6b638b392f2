"""gradio_annotator.py's UI: every annotator on its own tab, its parameters taken from its signature."""

import inspect
import typing

import gradio as gr

from annotators import ANNOTATORS, ImageError, WeightsError
from apps.builder import uploaded_image


def parameter_component(name, default, annotation=None):
    label = name.replace("_", " ").capitalize()
    if typing.get_origin(annotation) is typing.Literal:
        return gr.Radio(label=label, choices=list(typing.get_args(annotation)), value=default)
    if isinstance(default, bool):
        return gr.Checkbox(label=label, value=default)
    if isinstance(default, (int, float)):
        return gr.Number(label=label, value=default, precision=0 if isinstance(default, int) else None)
    return gr.Textbox(label=label, value="" if default is None else str(default))


def runner(annotate, names):
    def run(image, *values):
        params = {n: v for n, v in zip(names, values) if not (n == "weights" and not v)}
        try:
            return annotate(image, **params)
        except (ImageError, WeightsError, ValueError, ImportError) as error:
            raise gr.Error(str(error)) from error

    return run


def build_annotator_demo():
    with gr.Blocks(title="Annotators") as demo:
        gr.Markdown("## Annotators: the condition maps the controls take")
        for key, annotate in ANNOTATORS.items():
            parameters = list(inspect.signature(annotate).parameters.items())[1:]  # after the image
            with gr.Tab(key):
                with gr.Row():
                    with gr.Column():
                        image = uploaded_image(label="Input image")
                        fields = [parameter_component(name, p.default, p.annotation) for name, p in parameters]
                        run = gr.Button("Run", variant="primary")
                    output = gr.Image(label=f"{key} map")
                run.click(fn=runner(annotate, [name for name, _ in parameters]), inputs=[image, *fields],
                          outputs=output, api_name=key)
    return demo
