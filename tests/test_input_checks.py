"""Every input checked at the door: for any value of a request's fields, an OpenPose frame or a saved record, a
result or one of the project's own errors (naming what was wrong), never another exception; the CLI answers in
one line with exit status 2; the HTTP server answers every raw request and stays up."""

import json
import math
from dataclasses import fields

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

import generate as cli
from annotators.pose import draw
from annotators.pose_json import PoseError, read_pose_json
from annotators.util import ImageError
from apps.runner import Runner
from cldm.outputs import PARAMS_KEY, RecordError
from cldm.settings import ControlUnit, SettingError, Settings, setting_fields
from ldm.errors import run_main
from ldm.files import MODELS, CheckpointError
from tests.test_apps import NOTE, default_model, served, task_of, values  # noqa: F401 (a fixture)
from toy.model import TOY_CONTROL

PROJECT_ERRORS = (SettingError, RecordError, CheckpointError, PoseError, ImageError)
# any JSON value, NaN, infinities and 1e400 included (what a raw client or a crafted record can carry)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-300, 300) | st.integers(2**31 - 2, 2**70)
           | st.floats() | st.floats(-3, 40) | st.text(max_size=12) | st.sampled_from(["20", "nan", "DDIM", "soft"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
SETTING_NAMES = [f.name for f in setting_fields()]
UNIT_NAMES = [f.name for f in fields(ControlUnit) if not f.metadata.get("picture")]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SETTING_NAMES), json_values, min_size=1, max_size=3))
def test_any_settings_are_checked_settings_or_a_setting_error(changes):
    try:
        result = Settings().with_values(**changes)
    except SettingError as error:
        assert any(name in str(error) for name in changes)  # the message names the setting
        return
    for name, value in result.record().items():  # what was accepted is what the fields take
        assert value is None or isinstance(value, (bool, int, float, str, list)), name
        if isinstance(value, float):
            assert math.isfinite(value), name


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(UNIT_NAMES), json_values, max_size=3))
def test_any_control_unit_record_is_a_unit_or_a_setting_error(record):
    try:
        unit = ControlUnit.from_record(record)
    except SettingError:
        return
    assert 0 <= unit.strength <= 2 and 0 <= unit.control_start <= unit.control_end <= 1


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps must be a whole number from 1 to 100; 0 is out of range"),
    ({"num_samples": 0}, "num_samples must be a whole number from 1 to 12; 0 is out of range"),
    ({"image_resolution": 32}, "image_resolution must be a whole number from 64 to 2048; 32 is out of range"),
    ({"seed": 2**70}, "seed must be a whole number from -1 to 2147483647; 1180591620717411303424 is out of range"),
    ({"seed": float("nan")}, "seed must be a whole number from -1 to 2147483647, not nan"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a number from 0.1 to 30.0, not inf"),
    ({"strength": float("nan")}, "strength must be a number from 0.0 to 2.0, not nan"),
    ({"steps": "20"}, "steps must be a whole number from 1 to 100, not '20'"),
    ({"block_weights": "1, inf, 1"}, "block_weights must each be a number from 0.0 to 2.0; inf is not"),
    ({"block_weights": "1e39"}, "block_weights must each be a number from 0.0 to 2.0; 1e+39 is not"),
    ({"control_start": 0.8, "control_end": 0.2}, "control_start 0.8 is after control_end 0.2"),
    ({"sampler": "Heun"}, "sampler 'Heun' is not one of DDIM, Euler a"),
])
def test_settings_errors_name_the_setting_the_value_and_the_range(changes, message):
    with pytest.raises(SettingError) as error:
        Settings().with_values(**changes)
    assert message in str(error.value)


# -- OpenPose JSON ---------------------------------------------------------------------------------------------

def flat_points(n):
    return st.lists(st.floats(-50, 600) | st.integers(-5, 600), min_size=3 * n, max_size=3 * n)


people = st.fixed_dictionaries({}, optional={
    "pose_keypoints_2d": st.sampled_from([18, 25, 17]).flatmap(flat_points) | json_values,
    "hand_left_keypoints_2d": st.sampled_from([21, 20]).flatmap(flat_points),
    "face_keypoints_2d": st.sampled_from([70, 68]).flatmap(flat_points) | st.none()})
frames = st.fixed_dictionaries({"people": st.lists(people, max_size=3) | json_values}, optional={
    "canvas_width": st.integers(-2, 3000) | json_values, "canvas_height": st.integers(1, 600),
    "note": st.text(max_size=20) | json_values})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames | json_values)
def test_any_openpose_json_is_a_drawable_frame_or_a_pose_error(document):
    try:
        frame = read_pose_json(json.dumps(document))
    except PoseError:
        return
    assert 1 <= min(frame.size) and max(frame.size) <= 2048
    assert draw(frame.poses, frame.size).shape == (*frame.size, 3)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_any_text_is_a_frame_or_a_pose_error(text):
    try:
        read_pose_json(text)
    except PoseError:
        pass


def pose_frame(**person):
    return {"canvas_width": 64, "canvas_height": 64, "people": [person]}


@pytest.mark.parametrize("text, message", [
    ('{"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [NaN, 1, 1]}]}', "NaN is not"),
    ('{"canvas_width": Infinity, "canvas_height": 64, "people": []}', "Infinity is not"),
    ('{"canvas_width": 1e400, "canvas_height": 64, "people": []}', "1e400 is not a finite number"),
    (json.dumps({"canvas_width": 0, "canvas_height": 64, "people": []}), "canvas_width must be a whole number of "
                                                                          "pixels from 1 to 2048, not 0"),
    (json.dumps({"canvas_width": 64, "canvas_height": -3, "people": []}), "canvas_height must be"),
    (json.dumps({"canvas_width": 10**6, "canvas_height": 64, "people": []}), "not 1000000"),
    (json.dumps({"canvas_width": 64, "canvas_height": 64, "people": {"a": 1}}), "people must be a list"),
    (json.dumps({"canvas_width": 64, "canvas_height": 64, "people": [3]}), "people must be a list of people"),
    (json.dumps(pose_frame(pose_keypoints_2d="1, 2, 3")), "person 1's pose_keypoints_2d must be a list of numbers"),
    (json.dumps(pose_frame(pose_keypoints_2d=[None] * 54)), "must be a list of numbers"),
    (json.dumps(pose_frame(hand_right_keypoints_2d=[1, 1, 1] * 20)), "right hand has 60 numbers; it takes 21"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("{" * 10, "not OpenPose JSON"),
    (json.dumps({"people": []}), "give both canvas_width and canvas_height"),
])
def test_openpose_json_that_cannot_be_drawn_says_why(text, message):
    with pytest.raises(PoseError) as error:
        read_pose_json(text)
    assert message in str(error.value)


def test_openpose_points_off_the_canvas_are_dropped_and_a_face_alone_is_drawn():
    body = [32, 32, 1] + [1e6, 5, 1] + [-3, 5, 1] + [0, 0, 0] * 15
    (pose,), _, _ = read_pose_json(json.dumps(pose_frame(pose_keypoints_2d=body)))
    assert [k is not None for k in pose.body.keypoints[:4]] == [True, False, False, False]
    face = read_pose_json(json.dumps(pose_frame(face_keypoints_2d=[20, 30, 1] * 70)))
    assert draw(face.poses, face.size).max() > 0 and face.poses[0].body.total_parts == 0


# -- saved records ---------------------------------------------------------------------------------------------

RECORD = {"prompt": "a red circle", "steps": 1, "seed": 3, "image_resolution": 64, "hint": "map.png"}


def write_record(folder, params, name="record.png"):
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMS_KEY, params if isinstance(params, str) else json.dumps(params))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / name, pnginfo=info)
    return folder / name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([*RECORD, "precision", "threads", "model_options", "controls", "inpaint_control", "mask",
                        "strength", "block_weights"]), json_values)
def test_any_saved_record_is_read_or_refused_with_a_message(tmp_path, key, value):
    path = write_record(tmp_path, {**RECORD, key: value})
    try:
        saved = cli.Saved.read(path)
    except PROJECT_ERRORS:
        return
    assert saved.settings.seed == RECORD["seed"] or key == "seed"
    assert all(file.parent == tmp_path for file in saved.pictures.values())


@pytest.mark.parametrize("params, message", [
    ("{not json", "are not readable JSON"),
    ("[1, 2]", "are a JSON list, not an object"),
    (json.dumps({"steps": 3}), "have no seed"),
    ('{"seed": 1, "guidance_scale": NaN}', "NaN is not a JSON number"),
    (json.dumps({**RECORD, "steps": 0}), "steps must be a whole number from 1 to 100; 0 is out of range"),
    (json.dumps({**RECORD, "precision": "fp12"}), "precision 'fp12' is not one of fp32, fp16, bf16"),
    (json.dumps({**RECORD, "hint": "../map.png"}), "names '../map.png' as its hint: a record's files are plain"),
    (json.dumps({**RECORD, "init_image": "/etc/hostname"}), "names '/etc/hostname' as its init_image"),
    (json.dumps({**RECORD, "controls": [{"control": str(TOY_CONTROL)}]}), "is not a file in"),
    (json.dumps({**RECORD, "controls": [{"control": "/nowhere/control.pth"}]}), "is not a file in"),
])
def test_records_that_cannot_be_reproduced_say_why_in_one_line(tmp_path, capsys, params, message):
    path = write_record(tmp_path, params)
    with pytest.raises(SystemExit) as exit_status:
        run_main(cli.main, ["--reproduce", str(path), "--out", str(tmp_path / "out.png")])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps must be a whole number from 1 to 100; 0 is out of range"),
    (["--num-samples", "0"], "num_samples must be a whole number from 1 to 12; 0 is out of range"),
    (["--image-resolution", "0"], "image_resolution must be a whole number from 64 to 2048; 0 is out of range"),
    (["--seed", str(2**70)], "seed must be a whole number from -1 to 2147483647"),
    (["--guidance-scale", "nan"], "guidance_scale must be a number from 0.1 to 30.0, not nan"),
    (["--block-weights", "1,nan"], "block_weights must each be a number from 0.0 to 2.0; nan is not"),
    (["--extra-control", str(TOY_CONTROL), "MAP", "abc"], "its scale 'abc' is not a number"),
])
def test_cli_errors_are_one_line_and_exit_2_with_the_traceback_behind_debug(tmp_path, capsys, argv, message):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "map.png")
    argv = [str(tmp_path / "map.png") if a == "MAP" else a for a in argv] + ["--out", str(tmp_path / "out.png")]
    with pytest.raises(SystemExit) as exit_status:
        run_main(cli.main, argv)
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    with pytest.raises(ValueError) as error:  # --debug: the error itself, with its traceback
        run_main(cli.main, [*argv, "--debug"])
    assert message in str(error.value)


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "argument --batch-size: the value must be a whole number of at least 1; 0 is out of range"),
    ("--learning-rate", "nan", "argument --learning-rate: the value must be a number from 0.0 to 1.0, not nan"),
    ("--ckpt-every", "0", "argument --ckpt-every: the value must be a whole number of at least 1"),
    ("--prompt-dropout", "x", "argument --prompt-dropout: 'x' is not a number"),
])
def test_train_flags_are_checked_as_settings_are(capsys, flag, value, message):
    import train

    with pytest.raises(SystemExit) as exit_status:
        train.parse_args(["--data", "d", flag, value])
    assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_a_served_unit_names_its_control_file_only_among_the_servers(default_model, tmp_path):  # noqa: F811
    added = tmp_path / "added"  # a folder the server's command line adds (--control-dir): any checkpoint in it
    added.mkdir()
    (added / "mine.safetensors").write_bytes(TOY_CONTROL.read_bytes())
    runner = Runner(task_of("gradio_canny2image"), default_model, NOTE, tmp_path, toy=True,
                    control_dirs=[MODELS, added])
    assert runner.control_net(TOY_CONTROL.name) is not None and runner.control_net("mine.safetensors") is not None
    answers = []
    for name in (str(TOY_CONTROL), "/etc/hostname", "/nowhere/x.pth", "../models/" + TOY_CONTROL.name, 5):
        with pytest.raises(SettingError) as error:
            runner.control_net(name)
        answers.append(str(error.value).replace(repr(name), "NAME"))
    assert len(set(answers)) == 1 and "is not one of the control files this server offers" in answers[0]


# -- the HTTP server, from a raw client ------------------------------------------------------------------------

def raw_client(app, model, folder):
    """An app served, and a raw HTTP call of its /generate with the page's defaults but `changes`: (the kind of
    the answer, its data)."""
    from gradio_client import Client

    folder.mkdir(parents=True, exist_ok=True)
    task, url, demo = served(app, model, folder)
    endpoint = Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    parameters = endpoint["/generate"]["parameters"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in parameters}
    names = [p["parameter_name"] for p in parameters]
    photo = folder / "photo.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).save(photo)

    def upload(path):
        with open(path, "rb") as f:
            path = httpx.post(f"{url}gradio_api/upload", files={"files": f}).json()[0]
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def call(**changes):
        given = {**defaults, **values(task, steps=1), "image": upload(photo), **changes}
        body = json.dumps({"data": [given[name] for name in names]})  # NaN and Infinity as JS writes them
        posted = httpx.post(f"{url}gradio_api/call/generate", content=body,
                            headers={"content-type": "application/json"}, timeout=30)
        assert posted.status_code == 200, posted.text
        events = httpx.get(f"{url}gradio_api/call/generate/{posted.json()['event_id']}", timeout=120).text
        kind, data = [line.split(": ", 1)[1] for line in events.strip().splitlines()[-2:]]
        return kind, json.loads(data)

    return call, upload, demo


@pytest.fixture(scope="module")
def raw_api(default_model, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("raw")
    call, upload, demo = raw_client("gradio_canny2image", default_model, folder)
    yield call, upload, folder
    demo.close()


def assert_clear(kind, data):
    """A result, or a message of the project's (gradio hides other errors, or shows their type)."""
    if kind == "complete":
        return
    assert kind == "error" and data and data.get("error"), data
    message = data["error"]
    assert "failed:" not in message and "Traceback" not in message and "Could not preprocess" not in message
    assert "Error" not in message.split(":")[0], message  # no exception type in place of a message


HTTP_FIELDS = ["prompt", "num_samples", "image_resolution", "strength", "control_start", "control_end",
               "control_mode", "block_weights", "guidance_scale", "seed", "sampler", "eta", "low_threshold",
               "preprocessor", "unit2_enabled", "unit2_strength", "unit2_control", "region_mask"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(HTTP_FIELDS), st.floats(0, 2) | st.integers(1, 20) | st.text(max_size=12) | json_values)
def test_any_raw_http_value_is_a_result_or_a_clear_message(raw_api, name, value):
    call, _, _ = raw_api
    large = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 128
    assume(not (name in ("image_resolution", "num_samples") and large))  # valid, only slow
    assert_clear(*call(**{name: value}))


@pytest.fixture(scope="module")
def raw_pose_api(default_model, tmp_path_factory):  # noqa: F811
    call, _, demo = raw_client("gradio_pose2image", default_model, tmp_path_factory.mktemp("raw_pose"))
    yield call
    demo.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames.map(json.dumps) | json_values)
def test_any_pose_sent_to_the_pose_app_is_a_map_or_a_clear_message(raw_pose_api, pose):
    assert_clear(*raw_pose_api(pose=pose))


def test_raw_http_inputs_at_the_door(raw_api):
    call, upload, folder = raw_api
    for changes, message in [
            ({"guidance_scale": float("nan")}, "guidance_scale must be a number from 0.1 to 30.0, not nan"),
            ({"steps": float("nan")}, "steps must be a whole number from 1 to 100, not nan"),
            ({"unit2_enabled": True, "unit2_strength": float("inf")}, "unit2_strength must be a number"),
            ({"low_threshold": float("nan")}, "low_threshold must be a whole number from 1 to 255, not nan"),
            ({"block_weights": "1, 1e39"}, "block_weights must each be a number"),
            ({"unit2_enabled": True, "unit2_control": 5}, "unit2_control must be text, not 5"),
            ({"unit2_enabled": True, "unit2_control": "/etc/hostname"}, "unit2_control '/etc/hostname' is not one of"),
            ({"region_mask": "mask.png"}, "a region mask is the image editor's value")]:
        kind, data = call(**changes)
        assert kind == "error" and message in data["error"], (changes, data)
    # a region mask sent as a plain file is honoured: saved beside the image, black where it is black
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    kind, data = call(region_mask=upload(folder / "mask.png"))
    assert kind == "complete"
    region = np.asarray(Image.open(sorted(folder.glob("canny-region-*.png"))[-1]))
    assert region[:, :28].min() == 255 and region[:, 36:].max() == 0
    assert call(steps=1)[0] == "complete"  # and the server is still up


def test_the_inpaint_and_canvas_editors_take_a_plain_file_or_say_what_they_take(default_model, tmp_path):  # noqa: F811
    for app, what in (("gradio_inpaint2image", "the picture to inpaint"), ("gradio_scribble2image_interactive",
                                                                           "the drawing")):
        call, upload, demo = raw_client(app, default_model, tmp_path / app)
        try:
            kind, data = call(image="photo.png")
            assert kind == "error" and data["error"].startswith(f"{what} is the image editor's value"), data
            picture = upload(tmp_path / app / "photo.png")
            kind, data = call(image=picture)  # a plain file: the editor's picture
            if app == "gradio_inpaint2image":  # ... with no mask painted on it
                assert kind == "error" and "paint over the part of the picture to redraw" in data["error"]
            else:
                assert kind == "complete", data
        finally:
            demo.close()


def test_the_cli_draws_a_pose_file_through_the_same_reader(tmp_path, capsys):
    body = [[128, 40], [128, 80], [100, 80], [90, 120], [85, 160], [156, 80], [166, 120], [171, 160], [110, 160],
            [110, 210], [110, 250], [146, 160], [146, 210], [146, 250], [120, 35], [136, 35], [112, 40], [144, 40]]
    frame = {"canvas_width": 256, "canvas_height": 256, "people": [{"pose_keypoints_2d": [v for x, y in body
                                                                                         for v in (x, y, 1)]}]}
    (tmp_path / "pose.json").write_text(json.dumps(frame))
    cli.main(["--pose", str(tmp_path / "pose.json"), "--steps", "1", "--resolution", "64",
              "--out", str(tmp_path / "out.png")])
    drawn = np.asarray(Image.open(tmp_path / "out-map.png"))
    assert drawn.shape == (64, 64, 3) and (drawn.max(axis=2) > 0).mean() > 0.02  # the skeleton, scaled
    (tmp_path / "bad.json").write_text('{"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": '
                                       '[NaN, 1, 1]}]}')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(cli.main, ["--pose", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png")])
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'bad.json'}: not OpenPose JSON: NaN is not")


def test_the_cli_decodes_with_a_vae_file(tmp_path):
    from ldm.checkpoint import save_safetensors
    from toy.model import load_default_model

    vae = load_default_model().first_stage_model.state_dict()
    brighter = {k: v + 0.2 if k == "decoder.conv_out.bias" else v for k, v in vae.items()}
    save_safetensors(brighter, tmp_path / "vae.safetensors")
    common = ["--steps", "1", "--resolution", "64", "--seed", "3", "--precision", "fp32"]
    cli.main([*common, "--out", str(tmp_path / "plain.png")])
    cli.main([*common, "--vae", str(tmp_path / "vae.safetensors"), "--out", str(tmp_path / "vae.png")])
    plain, other = (np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int) for name in ("plain", "vae"))
    assert 20 < (other - plain).mean() < 30  # +0.2 on the output's [-1, 1] scale: about 25 levels brighter
