"""The annotators on real photos (scikit-image's), their real weight-loading path on random weights, and odd inputs."""

import io
import json
import re
import socket
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from annotators import (
    ANNOTATORS,
    HWC3,
    AnnotatorNotice,
    ImageError,
    WeightsError,
    read_image,
    resize_image,
    to_rgb_uint8,
)
from annotators.pose import detect_mediapipe, draw
from annotators.pose_json import poses_to_json, read_pose_json


def assert_map(out, short_side=None):
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0
    if short_side:
        assert min(out.shape[:2]) == short_side


def test_canny_is_opencv_canny_on_the_resized_photo():
    photo = data.coffee()  # 400x600
    out = ANNOTATORS["canny"](photo, 50, 150, detect_resolution=256)
    assert_map(out, 256)
    expected = cv2.Canny(resize_image(photo, 256), 50, 150)
    assert np.array_equal(out[..., 0], expected) and 0.01 < (expected > 0).mean() < 0.5


def test_scribble_turns_dark_strokes_white():
    sketch = np.full((300, 200, 3), 255, np.uint8)
    cv2.line(sketch, (20, 20), (180, 280), (0, 0, 0), 5)
    out = ANNOTATORS["scribble"](sketch, detect_resolution=128)
    assert_map(out, 128)
    assert out[0, 0].tolist() == [0, 0, 0] and 0.01 < (out[..., 0] == 255).mean() < 0.2


@pytest.mark.parametrize("name,files,params", [
    ("hed", ["hed"], {}),
    ("fake_scribble", ["hed"], {}),
    ("mlsd", ["mlsd"], {"value_threshold": 0.1}),
    ("openpose", ["openpose"], {"include_hand": True}),
    ("depth", ["midas"], {}),
    ("normal", ["midas"], {"background_threshold": 0.4}),
    ("seg", ["upernet"], {}),
])
def test_network_annotators_load_their_files_and_map_a_photo(name, files, params, annotator_weights):
    folder = annotator_weights(*files)
    out = ANNOTATORS[name](data.chelsea(), detect_resolution=128, weights=str(folder), **params)
    assert_map(out, 128)


def test_seg_colours_come_from_the_ade20k_palette(annotator_weights):
    from annotators.seg import palette

    out = ANNOTATORS["seg"](data.rocket(), detect_resolution=128, weights=str(annotator_weights("upernet")))
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert colors <= {tuple(c) for c in palette()} and len(palette()) == 150


def test_missing_weights_name_the_file_its_size_and_where_to_put_it(tmp_path):
    with pytest.raises(WeightsError, match=r"ControlNetHED\.pth.*about 29 MB.*huggingface\.co/lllyasviel/Annotators"):
        ANNOTATORS["hed"](data.chelsea(), weights=str(tmp_path))
    with pytest.raises(WeightsError, match="mediapipe"):
        ANNOTATORS["pose"](data.astronaut(), detector="openpose", weights=str(tmp_path))


def test_the_weights_each_annotator_needs_are_the_files_it_loads(tmp_path):
    """annotators.weights.NEEDS, which the annotator app shows per tab, names what each detector asks for."""
    from annotators.weights import NEEDS

    for name, files in NEEDS.items():
        with pytest.raises(WeightsError) as error:
            ANNOTATORS[name](np.zeros((64, 64, 3), np.uint8), weights=str(tmp_path))
        expected = files[0] if "/" in files[0] else f"{', '.join(files)} not found in"  # a repository: its folder
        assert expected in str(error.value), name


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Downloads into an empty annotators/ckpts, the hub's reachability asked afresh."""
    from annotators import weights

    monkeypatch.setattr(weights, "CKPT_DIR", tmp_path)
    monkeypatch.delenv("CONTROLNET_ANNOTATOR_CKPTS", raising=False)
    weights.hub_reachable.cache_clear()
    yield weights
    weights.hub_reachable.cache_clear()


def test_offline_a_missing_file_is_reported_at_once(hub, monkeypatch):
    from huggingface_hub import constants

    def never(*args, **kwargs):
        raise AssertionError("the hub was asked although it is set offline")

    with monkeypatch.context() as patched, pytest.raises(WeightsError, match="ControlNetHED.pth not on disk, and "
                                                                              "downloads are off \\(HF_HUB_OFFLINE"):
        patched.setattr(hub, "hub_reachable", never)
        hub.weights_dir(["ControlNetHED.pth"])  # tests run with HF_HUB_OFFLINE=1 (conftest)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers: a hub that hangs
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(hub, "PROBE_TIMEOUT", 0.2)
    start = time.perf_counter()
    with silent, pytest.raises(WeightsError, match="UperNet folder on disk, and http://127.0.0.1:.* cannot be reached"):
        hub.seg_dir()
    with pytest.raises(WeightsError, match="cannot be reached"):
        hub.weights_dir(["ControlNetHED.pth"])  # asked once per process
    assert time.perf_counter() - start < 1.5


def test_mediapipe_pose_finds_the_astronaut_in_openpose_order():
    poses, (h, w) = detect_mediapipe(data.astronaut(), detect_resolution=256)
    assert len(poses) == 1
    k = poses[0].body.keypoints
    assert len(k) == 18
    nose, neck, right_shoulder, left_shoulder = k[0], k[1], k[2], k[5]
    assert None not in (nose, neck, right_shoulder, left_shoulder)
    assert neck.x == pytest.approx((right_shoulder.x + left_shoulder.x) / 2)
    assert nose.y < neck.y  # the head is above the shoulders
    assert right_shoulder.x < left_shoulder.x  # her right shoulder is on the image's left
    assert 0.3 < nose.x < 0.55 and 0.1 < nose.y < 0.35  # the face in skimage's astronaut photo
    skeleton = draw(poses, (h, w))
    assert (skeleton.sum(axis=2) > 0).mean() > 0.005


def test_no_person_gives_an_empty_pose_map():
    out = ANNOTATORS["openpose_mediapipe"](data.coffee(), detect_resolution=128)
    assert_map(out, 128)
    assert out.max() == 0


def test_openpose_json_round_trip_redraws_the_same_skeleton():
    poses, size = detect_mediapipe(data.astronaut(), detect_resolution=256)
    text = poses_to_json(poses, size)
    frame = json.loads(text)
    assert frame["canvas_width"] == 256 and len(frame["people"][0]["pose_keypoints_2d"]) == 54
    again, size2, _ = read_pose_json(text)
    assert size2 == size and np.array_equal(draw(again, size2), draw(poses, size))
    with pytest.raises(ValueError, match="body has 2 numbers; it takes 18 or 25 points of 3"):
        read_pose_json(json.dumps({"canvas_width": 8, "canvas_height": 8, "people": [{"pose_keypoints_2d": [1, 2]}]}))


@pytest.mark.parametrize("image", [
    np.zeros((1, 1, 3), np.uint8),
    np.full((40, 30, 4), 200, np.uint8),  # RGBA
    np.full((40, 30), 128, np.uint8),  # grayscale
    np.full((40, 30, 3), 40000, np.uint16),  # 16-bit
    np.full((40, 30, 3), 0.5, np.float32),
    np.ones((40, 30), bool),
])
def test_odd_images_become_rgb_maps(image):
    out = ANNOTATORS["canny"](image, detect_resolution=64)
    assert_map(out, 64)


def test_pixel_conversions():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    assert HWC3(rgba).min() == 255
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16)).min() == 255
    with pytest.raises(ImageError, match="NaN"):
        to_rgb_uint8(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ImageError, match="no image"):
        to_rgb_uint8(None)


def test_resize_keeps_the_release_rule_and_caps_elongated_pictures():
    assert resize_image(np.zeros((400, 600, 3), np.uint8), 512).shape == (512, 768, 3)
    assert resize_image(np.zeros((1, 1, 3), np.uint8), 512).shape == (512, 512, 3)
    assert resize_image(np.zeros((8000, 8000, 3), np.uint8), 512).shape == (512, 512, 3)
    assert resize_image(np.zeros((10, 8000, 3), np.uint8), 512).shape == (64, 2048, 3)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_image_handles_16_bit_and_refuses_broken_files(tmp_path):
    deep = np.full((8, 8), 65535, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert read_image(str(path)).min() == 255
    good = png_bytes(np.zeros((8, 8, 3), np.uint8))
    assert read_image(good).shape == (8, 8, 3)
    for broken in (good[: len(good) // 2], b"not an image at all"):
        with pytest.raises(ImageError, match="not a readable image"):
            read_image(broken)


NEW_NETWORK_ANNOTATORS = [
    ("lineart", ["lineart"], {}, "lines.lineart_detector", {}),
    ("lineart", ["lineart"], {"coarse": True}, "lines.lineart_detector", {"coarse": True}),
    ("lineart_anime", ["lineart_anime"], {}, "lines.lineart_anime_detector", {}),
    ("softedge", ["pidinet"], {}, "lines.pidinet_detector", {}),
    ("softedge", ["pidinet"], {"safe": True}, "lines.pidinet_detector", {"safe": True}),
    ("softedge", ["hed"], {"detector": "hed", "safe": True}, "edges.hed_detector", {"safe": True}),
    ("normalbae", ["normalbae"], {}, "depth.normalbae_detector", {}),
    ("depth_leres", ["leres"], {"remove_background": 10}, "depth.leres_detector", {"thr_b": 10}),
]


@pytest.mark.parametrize("name,files,params,detector,aux_params", NEW_NETWORK_ANNOTATORS)
def test_1_1_network_annotators_load_the_release_files_and_equal_controlnet_aux(
        name, files, params, detector, aux_params, annotator_weights):
    """Each 1.1 detector loads its file (written here in the release's format) through its real loading code
    (controlnet-aux's from_pretrained), and the map equals that controlnet-aux detector's own output for the
    same photo and resolution."""
    import importlib

    folder = str(annotator_weights(*files))
    out = ANNOTATORS[name](data.chelsea(), detect_resolution=128, weights=folder, **params)
    assert_map(out, 128)
    module, getter = detector.split(".")
    aux = getattr(importlib.import_module(f"annotators.{module}"), getter)(folder)  # the loaded detector
    assert type(aux).__module__.startswith("controlnet_aux")
    expected = aux(data.chelsea(), detect_resolution=128, image_resolution=128, output_type="np", **aux_params)
    assert np.array_equal(out, HWC3(np.asarray(expected)))


def test_zoe_depth_loads_its_file_and_maps_a_photo(annotator_weights):
    from controlnet_aux.zoe.zoedepth.models.base_models.midas import PrepForMidas

    from annotators.depth import zoe_detector

    folder = str(annotator_weights("zoe"))
    # BEiT-L at its own 384x512 takes a minute a photo on two cores: run it at 128 here (the loading code,
    # the wrapper and the depth scaling are the same)
    zoe_detector(folder).model.core.prep = PrepForMidas(keep_aspect_ratio=True, img_size=(128, 128))
    out = ANNOTATORS["depth_zoe"](data.chelsea(), detect_resolution=128, weights=folder)
    assert_map(out, 128)
    assert out.max() == 255 and out.min() == 0  # scaled between its percentiles: both ends reached


def test_scribbles_from_a_photo_are_binary_strokes(annotator_weights):
    folder = str(annotator_weights("hed", "pidinet"))
    for detector in ("hed", "pidinet", "xdog"):
        out = ANNOTATORS["scribble_from_photo"](data.astronaut(), detector=detector, detect_resolution=128,
                                                weights=folder)
        assert_map(out, 128)
        assert set(np.unique(out)) <= {0, 255}
    xdog = ANNOTATORS["scribble_from_photo"](data.astronaut(), detector="xdog", detect_resolution=256)
    assert 0.02 < (xdog[..., 0] == 255).mean() < 0.4  # real photo: strokes along her outline, not everywhere


def test_content_shuffle_is_seeded_and_keeps_the_colours():
    photo = data.coffee()
    one = ANNOTATORS["shuffle"](photo, shuffle_seed=1, detect_resolution=128)
    assert_map(one, 128)
    assert np.array_equal(one, ANNOTATORS["shuffle"](photo, shuffle_seed=1, detect_resolution=128))
    assert not np.array_equal(one, ANNOTATORS["shuffle"](photo, shuffle_seed=2, detect_resolution=128))
    before = np.random.get_state()[1].copy()
    ANNOTATORS["shuffle"](photo, shuffle_seed=3, detect_resolution=128)
    assert np.array_equal(before, np.random.get_state()[1])  # numpy's global generator is left as it was
    resized = resize_image(photo, 128)
    assert np.abs(one.reshape(-1, 3).mean(0) - resized.reshape(-1, 3).mean(0)).max() < 25
    assert np.abs(one.astype(int) - resized).mean() > 20  # but not where they were


def test_tile_and_invert_reshape_the_picture_itself():
    photo = data.rocket()  # 427x640
    assert np.array_equal(ANNOTATORS["tile"](photo), photo)
    assert ANNOTATORS["tile"](photo, downsample=4.0).shape == (107, 160, 3)
    with pytest.raises(ValueError, match=">= 1"):
        ANNOTATORS["tile"](photo, downsample=0.5)
    assert np.array_equal(ANNOTATORS["invert"](photo), 255 - photo)


@pytest.mark.parametrize("photo,people", [("astronaut", 1), ("coffee", 0), ("rocket", 0), ("chelsea", 0)])
def test_the_offline_pose_detector_draws_people_only(photo, people, tmp_path):
    poses, _ = detect_mediapipe(getattr(data, photo)(), detect_resolution=512)
    assert len(poses) == people
    said = "1 person found" if people else "No person found"
    with pytest.warns(AnnotatorNotice, match=f"{said} by mediapipe's bundled detectors.*OpenPose weights not found "
                                             f"in {re.escape(str(tmp_path))}"):  # auto, no OpenPose weights
        drawn = ANNOTATORS["pose"](getattr(data, photo)(), weights=str(tmp_path))
    assert (drawn.max() > 0) == bool(people)


def test_auto_pose_says_it_used_openpose_when_its_weights_are_on_disk(tmp_path, monkeypatch):
    import importlib

    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    module = importlib.import_module("annotators.pose")  # `annotators.pose` is the function
    for name in module.OPENPOSE_FILES:
        (tmp_path / name).touch()  # on disk is all auto looks at; the network is stood in for below
    nose = PoseResult(BodyResult([Keypoint(0.5, 0.5, 1.0, 0)] + [None] * 17, 1.0, 1), None, None, None)
    monkeypatch.setattr(module, "detect_openpose", lambda *args: ([nose], (64, 64)))
    with pytest.warns(AnnotatorNotice, match=f"1 person found by OpenPose \\(its weights are in "
                                             f"{re.escape(str(tmp_path))}"):
        ANNOTATORS["pose"](data.astronaut(), weights=str(tmp_path))


def test_the_three_resize_modes():
    from annotators import fit

    wide = np.zeros((100, 200, 3), np.uint8)
    wide[:, :100] = 255  # left half white
    stretched = fit(wide, (64, 64), "just_resize")
    assert stretched.shape == (64, 64, 3) and stretched[:, :30].min() == 255 and stretched[:, 34:].max() == 0
    cropped = fit(wide, (64, 64), "crop_and_resize")  # scaled to 64x128, the middle 64 columns kept
    assert cropped.shape == (64, 64, 3) and cropped[:, :30].min() == 255 and cropped[:, 34:].max() == 0
    filled = fit(wide, (64, 64), "resize_and_fill")  # scaled to 32x64, black bands above and below
    assert filled.shape == (64, 64, 3) and filled[:16].max() == 0 and filled[48:].max() == 0
    assert filled[16:48, :30].min() == 255 and filled[16:48, 34:].max() == 0
    tall_mask = np.zeros((300, 100), np.uint8)
    assert fit(tall_mask, (64, 128), "crop_and_resize").shape == (64, 128)
    with pytest.raises(ValueError, match="resize mode"):
        fit(wide, (64, 64), "stretch")
