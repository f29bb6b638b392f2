"""The pose app's editor: the detected skeleton (or an empty canvas) as OpenPose JSON, edited in the browser
(apps/pose_editor.js: drag joints, add and remove people, download), uploaded from and read as OpenPose
files. Generation draws the map from the edited JSON."""

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np

from annotators import AnnotatorNotice, ImageError, read_image
from annotators.pose import detect_poses, draw
from annotators.pose_json import poses_to_json, read_pose_file, read_pose_json
from apps.errors import page_error

EMPTY_POSE = json.dumps({"canvas_width": 512, "canvas_height": 512, "people": []})
SCRIPT = (Path(__file__).with_name("pose_editor.js")).read_text()
TEMPLATE = """
<div class="pose-editor">
  <canvas width="512" height="512"></canvas>
  <div class="pose-buttons">
    <button type="button" class="pose-add">Add person</button>
    <button type="button" class="pose-remove">Remove person</button>
    <button type="button" class="pose-download">Download JSON</button>
    <span class="pose-status"></span>
  </div>
  <small class="pose-note"></small>
  <small>Drag a joint to move it; shift-drag moves the whole person.</small>
</div>
"""
# Gradio's own small secondary buttons (and its "stop" colours for removing), from the page's theme; the
# canvas is scaled to the column, the drawing buffer behind it is at least 512 pixels (see pose_editor.js)
CSS = """
.pose-editor canvas { display: block; width: 100%; max-width: 512px; touch-action: none; cursor: crosshair; }
.pose-editor small { display: block; color: var(--body-text-color-subdued); }
.pose-buttons { display: flex; flex-wrap: wrap; align-items: center; gap: var(--spacing-md);
                margin: var(--spacing-md) 0; }
.pose-buttons button {
  border: var(--button-border-width) solid var(--button-secondary-border-color);
  background: var(--button-secondary-background-fill); color: var(--button-secondary-text-color);
  box-shadow: var(--button-secondary-shadow); border-radius: var(--button-small-radius);
  padding: var(--button-small-padding); font-size: var(--button-small-text-size);
  font-weight: var(--button-small-text-weight); transition: var(--button-transition); cursor: pointer;
}
.pose-buttons button:hover {
  background: var(--button-secondary-background-fill-hover); color: var(--button-secondary-text-color-hover);
  border-color: var(--button-secondary-border-color-hover);
}
.pose-buttons .pose-remove {
  background: var(--button-cancel-background-fill); color: var(--button-cancel-text-color);
  border-color: var(--button-cancel-border-color);
}
.pose-buttons .pose-remove:hover { background: var(--button-cancel-background-fill-hover); }
"""


def pose_picture(text):
    """The map the editor's JSON draws (body, hands and face as it has them), at its canvas size; None when it
    holds no one (the picture's pose is then detected). Which detector found the pose, when the JSON says
    (see detected_json), comes as an AnnotatorNotice, for the page to show with the run's other notes."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    frame = read_pose_json(text)
    if not frame.poses:
        return None
    if frame.note:
        warnings.warn(frame.note, AnnotatorNotice, stacklevel=2)
    return draw(frame.poses, frame.size, hands=True, face=True)


def detected_json(picture, detector, include_hand, include_face, detect_resolution, weights=None):
    """A picture's detected poses as the editor's JSON (an empty canvas of the picture's size when no one is
    found or no picture is given), with which detector ran as its "note": the detection happens here, when the
    picture arrives, not when Run is pressed, so the note travels with the pose (the editor shows it, and
    pose_picture says it again at Run)."""
    if picture is None:
        return EMPTY_POSE
    with warnings.catch_warnings(record=True) as notices:
        warnings.simplefilter("always", AnnotatorNotice)
        poses, size = detect_poses(picture, detector, include_hand, include_face, detect_resolution, weights)
    said = " ".join(str(n.message) for n in notices if issubclass(n.category, AnnotatorNotice))
    return poses_to_json(poses, size, note=said)


def uploaded_json(path, current):
    """An uploaded OpenPose file -> the editor's JSON; a file without a canvas size takes the editor's."""
    try:
        frame = read_pose_file(path, size=read_pose_json(current or EMPTY_POSE).size)
    except (OSError, ValueError) as error:
        raise page_error(f"could not read that pose file: {error}") from error
    return poses_to_json(frame.poses, frame.size)


class PoseEditor(NamedTuple):
    editor: gr.HTML  # its value is the OpenPose JSON the page sends with Run (input "pose")
    detect: gr.Button
    upload: gr.UploadButton

    def wire(self, image, detect_inputs, detect):
        """Detect the pose into the editor when a picture is uploaded or Detect is pressed, with
        `detect(picture, *values of detect_inputs)`; read an uploaded OpenPose file into it."""
        image.upload(detect, [image, *detect_inputs], self.editor)
        self.detect.click(detect, [image, *detect_inputs], self.editor)
        self.upload.upload(uploaded_json, [self.upload, self.editor], self.editor)


def pose_editor():
    """The editor and its Detect and Upload buttons, placed where it is called."""
    editor = gr.HTML(EMPTY_POSE, html_template=TEMPLATE, css_template=CSS, js_on_load=SCRIPT, label="Pose",
                     elem_id="pose-editor")
    with gr.Row():
        detect = gr.Button("Detect pose", size="sm")
        upload = gr.UploadButton("Upload OpenPose JSON", file_types=[".json"], size="sm")
    return PoseEditor(editor, detect, upload)


def picture_or_none(value):
    """The image input's value as a picture (a file path from an example) or None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        try:
            return read_image(value)
        except ImageError as error:
            raise page_error(error) from error
    return np.asarray(value)
