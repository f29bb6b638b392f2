"""The pose app's editor: OpenPose files read as OpenPose writes them (BODY_25, hands, face, no canvas size)
and written back, generation drawing the map from the edited pose, and the browser side (pose_editor.js)
under node with a stand-in page. (Dragging in a real browser is in test_browser.py.)"""

import itertools
import json
import shutil
import subprocess

import gradio as gr
import numpy as np
import pytest
from skimage import data

from annotators import ImageError
from annotators.pose_json import poses_to_json, read_pose_json
from apps.pose_editor import EMPTY_POSE, detected_json, pose_picture, uploaded_json
from apps.runner import Runner
from tests.helpers import ROOT
from tests.test_apps import NOTE, task_of, values
from toy.model import load_default_model

RNG = np.random.default_rng(0)


def keypoints(count, width, height):
    """OpenPose's flat [x, y, confidence, ...] in pixels, every point found."""
    points = np.stack([RNG.uniform(0.2, 0.8, count) * width, RNG.uniform(0.2, 0.8, count) * height,
                       RNG.uniform(0.5, 1, count)], axis=1)
    return [round(float(v), 3) for v in points.ravel()]


def openpose_output(width=640, height=480):
    """One frame as OpenPose 1.7 writes it with --hand --face: BODY_25, no canvas size, 3D arrays empty."""
    return {"version": 1.3, "people": [{
        "person_id": [-1],
        "pose_keypoints_2d": keypoints(25, width, height),
        "face_keypoints_2d": keypoints(70, width, height),
        "hand_left_keypoints_2d": keypoints(21, width, height),
        "hand_right_keypoints_2d": keypoints(21, width, height),
        "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": []}]}


def test_a_file_as_openpose_writes_it(tmp_path):
    frame = openpose_output()
    path = tmp_path / "frame_000000000000_keypoints.json"
    path.write_text(json.dumps(frame))
    canvas = json.dumps({"canvas_width": 640, "canvas_height": 480, "people": []})
    read = json.loads(uploaded_json(str(path), canvas))  # no canvas size in the file: the editor's
    assert (read["canvas_width"], read["canvas_height"]) == (640, 480)
    (person,) = read["people"]
    body25 = np.reshape(frame["people"][0]["pose_keypoints_2d"], (25, 3))
    coco18 = np.reshape(person["pose_keypoints_2d"], (18, 3))
    assert np.allclose(coco18[:8], body25[:8]) and np.allclose(coco18[8:], body25[9:19])  # no mid hip, no feet
    for part in ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
        assert np.allclose(person[part], frame["people"][0][part])
    # and back: what the editor writes reads again to the same numbers
    again = json.loads(poses_to_json(*read_pose_json(json.dumps(read))[:2]))
    for part, numbers in person.items():
        assert np.allclose(again["people"][0][part], numbers)
    drawn = pose_picture(json.dumps(read))
    assert drawn.shape == (480, 640, 3)
    hand = np.reshape(person["hand_left_keypoints_2d"], (21, 3))[:, :2].round().astype(int)
    assert drawn[hand[:, 1], hand[:, 0]].max(axis=1).min() > 0  # every hand point drawn


def test_files_that_are_not_openpose_say_why(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(gr.Error, match="could not read that pose file"):
        uploaded_json(str(broken), EMPTY_POSE)
    nineteen = json.dumps({"canvas_width": 8, "canvas_height": 8, "people": [{"pose_keypoints_2d": [1, 1, 1] * 19}]})
    with pytest.raises(ValueError, match="body has 57 numbers; it takes 18 or 25 points"):
        read_pose_json(nineteen)


@pytest.fixture(scope="module")
def pose_runner(tmp_path_factory):
    task = task_of("gradio_pose2image")
    return task, Runner(task, load_default_model(), NOTE, tmp_path_factory.mktemp("pose"), toy=True)


def test_generation_draws_the_map_from_the_edited_pose(pose_runner):
    task, runner = pose_runner
    photo = data.astronaut()
    detected, _ = runner(photo, **values(task, detect_resolution=256))
    text = detected_json(photo, "mediapipe", False, False, 256)
    assert json.loads(text)["note"].startswith("1 person found by mediapipe")  # the editor shows which ran
    unedited, _ = runner(photo, **values(task, detect_resolution=256, pose=text))
    assert np.array_equal(unedited[0], detected[0])  # the editor's JSON draws what the detector drew

    frame = json.loads(text)
    frame["people"][0]["pose_keypoints_2d"][0] += 60  # the nose, 60 pixels to the right
    edited, _ = runner(photo, **values(task, detect_resolution=256, pose=json.dumps(frame)))
    assert not np.array_equal(edited[0], detected[0])
    added = {"canvas_width": 256, "canvas_height": 384, "people": frame["people"] * 2}
    drawn, _ = runner(None, **values(task, pose=json.dumps(added)))  # no picture: the pose alone
    assert drawn[0].shape == (128, 64, 3) and drawn[0].max() > 0  # sides rounded to multiples of 64
    with pytest.raises(ImageError, match="add a person in the pose editor"):
        runner(None, **values(task, pose=EMPTY_POSE))


def edited_in_node(start, *actions):
    """pose_editor.js run on `start` (a pose frame) through `actions` (see tests/pose_editor_harness.js)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine to run pose_editor.js")
    command = [node, str(ROOT / "tests/pose_editor_harness.js"), str(ROOT / "apps/pose_editor.js"),
               json.dumps([{"start": start}, *actions])]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout)


def test_the_editor_adds_people_side_by_side_and_moves_a_person_whole():
    start = {"canvas_width": 512, "canvas_height": 256, "people": [], "note": "1 person found by OpenPose."}
    nose = [0.5 * 512, 0.2 * 256]  # where the first person added stands (STANDING in pose_editor.js)
    out = edited_in_node(start, ["add"], ["add"], ["add"], ["drag", *nose, nose[0], 1000, True])
    first, *others = (np.reshape(p["pose_keypoints_2d"], (-1, 3))[:, :2] for p in out["value"]["people"])
    spans = sorted((p[:, 0].min(), p[:, 0].max()) for p in (first, *others))
    assert all(right < left for (_, right), (left, _) in itertools.pairwise(spans))  # no one on top of another
    offset = first - others[0]  # both the same standing figure: shifted, not squashed against the bottom
    assert np.ptp(offset, axis=0).max() < 1e-6 and offset[0, 1] > 0 and first[:, 1].max() == 255
    assert out["buffer"] == [1024, 512] and out["note"] == start["note"]  # drawn at 512 pixels at least
