"""Every Gradio app: its Blocks build, its generate function returns the map and images on the shipped default
model, saved PNGs reproduce their image, missing files and bad inputs give messages, and the HTTP API works."""

import importlib
import re
import socket

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image
from skimage import data

from apps.annotator_app import DETECTORS, build_annotator_demo
from apps.errors import log_to_terminal
from apps.models import resolve_model
from apps.page import build_demo, friendly
from apps.runner import Runner
from cldm.model import ModelOptions
from cldm.outputs import read_params
from cldm.pipeline import generate
from cldm.settings import Settings
from tests.helpers import ROOT
from toy.model import TOY_PROMPT, circle_outline, load_default_model, star_outline

APPS = sorted(p.stem for p in ROOT.glob("gradio_*2image*.py"))
WEIGHTS = {"hed": ["hed"], "fake_scribble": ["hed"], "mlsd": ["mlsd"], "depth": ["midas"], "normal": ["midas"],
           "seg": ["upernet"], "lineart": ["lineart"], "lineart_anime": ["lineart_anime"], "softedge": ["pidinet"],
           "normalbae": ["normalbae"]}
NOTE = "The shipped default model (tests)."


@pytest.fixture(scope="module")
def default_model():
    return load_default_model()


def task_of(app):
    return importlib.import_module(app).task


def values(task, seed=1, steps=2, resolution=64, **changes):
    """The page's inputs by name (the HTTP API's parameters) at test size: the toy's prompt, a 64-pixel image,
    two steps, a fixed seed; the others take the page's defaults."""
    named = {"prompt": TOY_PROMPT, "added_prompt": "", "negative_prompt": "", "seed": seed, "steps": steps,
             "image_resolution": resolution, **changes}
    if task.detect_resolution is not None:
        named.setdefault("detect_resolution", resolution)
    return named


def through_the_page(runner, task, image, **changes):
    """The runner as the page calls it: inputs in the page's order, errors as messages."""
    named = values(task, **changes)
    return friendly(runner, list(named))(image, *named.values())


def test_the_eighteen_apps_and_the_annotator_app_exist():
    assert len(APPS) == 18 and (ROOT / "gradio_annotator.py").is_file()
    demo = build_annotator_demo()
    tabs = [block.id for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == list(DETECTORS)  # every annotator, 1.0 and 1.1 (its key: the tab's id and its api_name)
    radios = {tuple(block.choices) for block in demo.blocks.values() if isinstance(block, gr.Radio)}
    assert (("pidinet", "pidinet"), ("hed", "hed")) in radios  # softedge's detector, from its Literal annotation


def painted_astronaut():
    """What the inpaint editor gives: the upload as background, the brush strokes (white, opaque) as a layer."""
    strokes = np.zeros((*data.astronaut().shape[:2], 4), np.uint8)
    strokes[100:300, 150:350] = 255
    return {"background": data.astronaut(), "layers": [strokes], "composite": None}


def app_input(task):
    if task.canvas:
        return {"composite": drawn_circle()}
    return painted_astronaut() if task.workflow == "inpaint" else data.astronaut()


@pytest.mark.parametrize("app", APPS)
def test_app_builds_and_returns_the_map_and_images(app, default_model, annotator_weights, tmp_path):
    """On the toy model: the map and an image where the toy can serve the app (outlines; image-to-image and
    inpainting without a control), else the map and a page saying why there is no image."""
    task = task_of(app)
    weights = annotator_weights(*WEIGHTS.get(task.annotator, []))
    runner = Runner(task, default_model, NOTE, tmp_path, str(weights), toy=True)
    assert isinstance(build_demo(task, runner), gr.Blocks)
    gallery, info = runner(app_input(task), **values(task))
    assert all(g.shape == (64, 64, 3) and g.dtype == np.uint8 for g in gallery)
    if task.toy is None:
        assert len(gallery) == 1 and "follows outlines only" in info and not list(tmp_path.glob("*.png"))
    else:
        # the image; the map when the toy's control used it; the starting picture and the mask
        saved = 1 + (task.toy == "control") + (task.workflow is not None) + (task.workflow == "inpaint")
        assert len(gallery) == 2 and "Seed 1" in info and len(list(tmp_path.glob("*.png"))) == saved


def drawn_circle():
    """What the drawing canvas gives: RGBA, black strokes on a white background."""
    canvas = np.zeros((200, 200, 4), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    canvas[..., 3] = 255
    canvas[..., :3] = 255
    ring = np.abs(np.hypot(yy - 100, xx - 100) - 60) < 3
    canvas[ring, :3] = 0
    return canvas


def test_saved_png_parameters_reproduce_the_image(default_model, tmp_path):
    task = task_of("gradio_canny2image")
    runner = Runner(task, default_model, NOTE, tmp_path)
    gallery, _ = runner(data.astronaut(), **values(task, seed=-1, steps=3, sampler="Euler a"))
    saved = sorted(p for p in tmp_path.glob("canny-0*.png"))
    params = read_params(saved[0])
    hint = np.asarray(Image.open(tmp_path / params["hint"]).convert("RGB"))
    assert np.array_equal(hint, gallery[0])
    assert params["precision"] == "fp32"  # the default model as the fixture loads it
    settings = Settings.from_record(params)  # UI values -> settings -> PNG -> settings
    assert settings.sampler == "Euler a" and settings.steps == 3 and settings.seed >= 0  # the seed drawn for -1
    images, _ = generate(default_model, hint, settings=settings, verbose=False)
    assert np.array_equal(images[0], gallery[1]) and np.array_equal(np.asarray(Image.open(saved[0])), gallery[1])


def test_a_missing_control_file_still_runs_the_annotator(tmp_path):
    model, note, _ = resolve_model("control_sd15_canny.pth", control=tmp_path / "control_sd15_canny.pth")
    assert model is None and "control_sd15_canny.pth not found" in note and "huggingface.co/lllyasviel" in note
    task = task_of("gradio_canny2image")
    gallery, info = Runner(task, None, note, tmp_path)(data.coffee(), **values(task))
    assert len(gallery) == 1 and gallery[0].shape == (64, 128, 3) and info == note


def test_default_model_without_release_files_is_the_toy():
    model, note, toy = resolve_model("control_sd15_does_not_exist.pth")
    assert toy and note.startswith("Running the shipped toy model") and hasattr(model, "control_model")


def test_the_precision_flag_and_the_page_saying_which_runs(tmp_path):
    import torch

    from apps.launch import make_runner, parse_args

    task = task_of("gradio_canny2image")
    runner = make_runner(task, parse_args(task, ["--precision", "bf16", "--output-dir", str(tmp_path)]))
    assert runner.model.model.diffusion_model.dtype == torch.bfloat16 and runner.precision == "bf16"
    assert runner.note.endswith("Computing in bf16.")
    runner(data.astronaut(), **values(task, steps=1))
    assert read_params(next(tmp_path.glob("canny-0*.png")))["precision"] == "bf16"


@pytest.mark.parametrize("image,message", [
    (None, "no picture was given"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
])
def test_bad_inputs_become_messages_not_tracebacks(image, message, default_model, tmp_path):
    task = task_of("gradio_canny2image")
    with pytest.raises(gr.Error, match=message):
        through_the_page(Runner(task, default_model, NOTE, tmp_path), task, image)


def test_empty_canvas_and_empty_prompt(default_model, tmp_path):
    task = task_of("gradio_scribble2image_interactive")
    with pytest.raises(gr.Error, match="canvas is empty"):
        through_the_page(Runner(task, default_model, NOTE, tmp_path), task, {"composite": None})
    gallery, _ = Runner(task, default_model, NOTE, tmp_path)({"composite": drawn_circle()}, **values(task, prompt=""))
    assert len(gallery) == 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(app, model, folder):
    """An app's page served on a free local port: (its task, the URL, the demo to close)."""
    task = task_of(app)
    log_to_terminal()  # as launch() does
    demo = build_demo(task, Runner(task, model, NOTE, folder, toy=True))
    demo.queue(max_size=8, default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            show_error=True)
    return task, url, demo


@pytest.fixture(scope="module")
def served_canny(default_model, tmp_path_factory):
    task, url, demo = served("gradio_canny2image", default_model, tmp_path_factory.mktemp("served"))
    yield task, url
    demo.close()


@pytest.fixture(scope="module")
def served_inpaint(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served_inpaint")
    task, url, demo = served("gradio_inpaint2image", default_model, folder)
    yield task, url, folder
    demo.close()


def mask_file(folder, mode):
    """A 200x300 mask, white over the middle quarter (where to redraw), written in one of the ways people make
    masks: grey, RGB or RGBA PNG, RGBA with white strokes on transparency, or JPEG."""
    white = np.zeros((200, 300), bool)
    white[50:150, 75:225] = True
    grey = np.where(white, 255, 0).astype(np.uint8)
    pictures = {"grey": Image.fromarray(grey), "rgb": Image.fromarray(grey).convert("RGB"),
                "rgba_opaque": Image.fromarray(grey).convert("RGBA"),
                "rgba_strokes": Image.fromarray(np.dstack([grey, grey, grey, grey])),
                "jpeg": Image.fromarray(grey).convert("RGB")}
    path = folder / f"mask_{mode}.{'jpg' if mode == 'jpeg' else 'png'}"
    pictures[mode].save(path)
    return path


@pytest.mark.parametrize("mode", ["grey", "rgb", "rgba_opaque", "rgba_strokes", "jpeg"])
def test_inpaint_masks_of_every_file_mode_over_http(served_inpaint, mode, tmp_path):
    """White is painted, whatever the mask file's mode: the saved mask is the middle quarter, not all white."""
    from gradio_client import Client, handle_file

    task, url, folder = served_inpaint
    photo = tmp_path / "photo.png"
    Image.fromarray(data.coffee()).save(photo)  # 400x600: the mask is stretched to it
    picture = {"background": handle_file(str(photo)), "layers": [handle_file(str(mask_file(tmp_path, mode)))],
               "composite": None}
    gallery, info = Client(url, verbose=False).predict(picture, api_name="/generate", **values(task, mask_blur=0))
    mask = np.asarray(Image.open(folder / re.search(r"inpaint-mask-\d+\.png", info)[0]))
    assert mask.shape == (64, 128) and 0.2 < (mask > 127).mean() < 0.3
    assert mask[32, 64] == 255 and mask[5, 5] == 0


def test_the_readme_inpaint_example_verbatim(served_inpaint, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(# python gradio_inpaint2image.py.*?)```", readme, re.S)[1]
    _, url, folder = served_inpaint
    Image.fromarray(data.coffee()).save(tmp_path / "photo.jpg")
    mask_file(tmp_path, "grey").rename(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(example.replace("http://127.0.0.1:7860/", url), scope)  # noqa: S102 (the README's own text)
    assert len(scope["gallery"]) == 2 and "Seed" in scope["info"]
    mask = np.asarray(Image.open(folder / re.search(r"inpaint-mask-\d+\.png", scope["info"])[0]))
    assert 0.15 < (mask > 127).mean() < 0.35  # the painted quarter, its edge blurred


def test_http_api_through_gradio_client(served_canny, tmp_path, capfd):
    from gradio_client import Client, handle_file

    task, url = served_canny
    assert url.startswith("http://127.0.0.1:")
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).save(photo)
    client = Client(url, verbose=False)
    gallery, info = client.predict(handle_file(str(photo)), api_name="/generate", **values(task))
    assert len(gallery) == 2 and "Seed 1" in info
    assert np.asarray(Image.open(gallery[1]["image"])).shape == (64, 64, 3)

    # a second control unit by name: the app's control twice at half strength is the control once, bit for bit
    twice, _ = client.predict(handle_file(str(photo)), api_name="/generate",
                              **values(task, strength=0.5, unit2_enabled=True, unit2_strength=0.5))
    assert len(twice) == 3
    assert np.array_equal(np.asarray(Image.open(twice[2]["image"])), np.asarray(Image.open(gallery[1]["image"])))

    broken = tmp_path / "broken.png"
    broken.write_bytes(photo.read_bytes()[:2000])
    capfd.readouterr()
    with pytest.raises(Exception, match="broken.png is not a readable image"):
        client.predict(handle_file(str(broken)), api_name="/generate", **values(task))
    log = capfd.readouterr().err  # the server's terminal: one line, the traceback only in the debug log
    assert "refused: broken.png is not a readable image" in log and "Traceback" not in log


def test_concurrent_requests_are_all_served(served_canny, tmp_path):
    from gradio_client import Client, handle_file

    task, url = served_canny
    photo = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()).save(photo)
    client = Client(url, verbose=False)
    jobs = [client.submit(handle_file(str(photo)), api_name="/generate", **values(task, seed=s))
            for s in (1, 2, 3)]
    infos = [job.result(timeout=120)[1] for job in jobs]
    assert [info.split(".")[0] for info in infos] == ["Seed 1", "Seed 2", "Seed 3"]


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
    """A models/ folder as the 1.1 release lays it out, at test size: an SD base, and a control-only file with
    its yaml beside it (the shuffle one: global_average_pooling)."""
    import yaml

    from ldm.checkpoint import save_safetensors
    from tests.helpers import TINY_V15, tiny_model

    folder = tmp_path_factory.mktemp("models")
    state = tiny_model(TINY_V15).state_dict()
    save_safetensors({k: v for k, v in state.items() if not k.startswith("control_model.")},
                     folder / "v1-5-pruned.safetensors")
    save_safetensors({k: v for k, v in state.items() if k.startswith("control_model.")},
                     folder / "control_v11e_sd15_shuffle.safetensors")
    config = yaml.safe_load(TINY_V15.read_text())
    config["model"]["params"]["global_average_pooling"] = True
    (folder / "control_v11e_sd15_shuffle.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_a_1_1_control_file_is_found_with_its_yaml_and_base(release_files, monkeypatch):
    import apps.models

    monkeypatch.setattr(apps.models, "MODELS", release_files)
    model, note, toy = resolve_model(("control_sd15_shuffle.pth", "control_v11e_sd15_shuffle.safetensors"),
                                     base=release_files / "v1-5-pruned.safetensors")
    assert not toy and note == ("Running v1-5-pruned.safetensors + control_v11e_sd15_shuffle.safetensors "
                                "(control_v11e_sd15_shuffle.yaml).")
    assert model.control_model.global_average_pooling


def test_the_1_1_apps_generate_on_real_checkpoints(release_files, tmp_path):
    """Each 1.1 app on a (tiny, random) real model: the condition it feeds the control, and images; those of
    the apps whose control needs model options (prompt windows and clip skip, pooling) reproduce bit for bit
    from the command line, which reads the options from the image's record."""
    import generate as cli
    from apps.launch import make_runner, parse_args

    base, control = release_files / "v1-5-pruned.safetensors", release_files / "control_v11e_sd15_shuffle.safetensors"
    fed = {}
    for app in ("gradio_inpaint2image", "gradio_tile2image", "gradio_ip2p2image", "gradio_shuffle2image",
                "gradio_lineart_anime2image"):
        task = task_of(app)
        runner = make_runner(task, parse_args(task, ["--control", str(control), "--base", str(base), "--config",
                                                      str(ROOT / "tests/configs/cldm_tiny_v15.yaml"),
                                                      "--output-dir", str(tmp_path / app)]))
        model = runner.model
        encode = model.get_learned_conditioning

        def recorded(prompts, app=app, encode=encode):  # the first conditioning each app feeds, unchanged
            context = encode(prompts)
            fed.setdefault(app, context)
            return context

        model.get_learned_conditioning = recorded
        picture = painted_astronaut() if task.workflow == "inpaint" else data.astronaut()
        preprocessor = "invert" if "invert" in task.alternatives else task.annotator  # no weights needed
        gallery, info = runner(picture, **values(task, denoise=0.5, mask_blur=0.0, preprocessor=preprocessor))
        assert len(gallery) == 2 and "Seed 1" in info, app
        if app == "gradio_inpaint2image":
            shown = gallery[0]
            mask = np.asarray(Image.open(next((tmp_path / app).glob("inpaint-mask-*.png"))))
            init = np.asarray(Image.open(next((tmp_path / app).glob("inpaint-init-*.png"))))
            assert (shown[mask > 127] == 0).all() and np.array_equal(shown[mask == 0], init[mask == 0])
        if app == "gradio_ip2p2image":
            # as the 1.1 ip2p app feeds it: the upload resized straight to the generation grid, bilinear
            assert np.array_equal(gallery[0], cv2.resize(data.astronaut(), (64, 64), interpolation=cv2.INTER_LINEAR))
        if app == "gradio_shuffle2image":
            assert model.control_model.global_average_pooling  # by the task, whatever the yaml says
        if app in ("gradio_shuffle2image", "gradio_lineart_anime2image"):
            saved = next((tmp_path / app).glob(f"{task.name}-0*.png"))
            assert read_params(saved)["model_options"] == task.options.record() != ModelOptions().record()
            again = tmp_path / f"{app}-again.png"
            cli.main(["--reproduce", str(saved), "--config", str(ROOT / "tests/configs/cldm_tiny_v15.yaml"),
                      "--ckpt", str(base), str(control), "--out", str(again)])
            assert np.array_equal(np.asarray(Image.open(again)), gallery[1]), app
    assert fed["gradio_lineart_anime2image"].shape[1] == 3 * 77  # three prompt windows, as it was trained
    assert fed["gradio_tile2image"].shape[1] == 77


@pytest.mark.parametrize("app", ["gradio_tile2image", "gradio_inpaint2image"])
def test_image_to_image_and_inpainting_from_the_apps_reproduce_on_the_command_line(app, default_model, tmp_path):
    import generate as cli

    task = task_of(app)
    picture = painted_astronaut() if task.workflow == "inpaint" else data.astronaut()
    gallery, _ = Runner(task, default_model, NOTE, tmp_path, toy=True)(picture, **values(task, denoise=0.6))
    saved = next(p for p in tmp_path.glob(f"{task.name}-0*.png"))
    assert "hint" not in read_params(saved)  # the toy ran them without a control: nothing to feed it
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(saved), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), gallery[1])


def test_an_inpaint_mask_sent_as_a_plain_white_on_black_layer(default_model, tmp_path):
    """What an HTTP API caller sends: the picture, and the mask as an RGB layer of another size."""
    task = task_of("gradio_inpaint2image")
    layer = np.zeros((100, 100, 3), np.uint8)
    layer[25:75, 25:75] = 255
    sent = {"background": data.coffee(), "layers": [layer], "composite": None}
    gallery, info = Runner(task, default_model, NOTE, tmp_path, toy=True)(sent, **values(task, mask_blur=0))
    mask = np.asarray(Image.open(next(tmp_path.glob("inpaint-mask-*.png"))))
    assert mask.shape == (64, 128) and 0.2 < (mask > 127).mean() < 0.3  # the middle quarter, stretched
    init = np.asarray(Image.open(next(tmp_path.glob("inpaint-init-*.png"))))
    assert np.array_equal(gallery[1][mask == 0], init[mask == 0])


def test_an_unpainted_inpaint_upload_is_a_message(default_model, tmp_path):
    task = task_of("gradio_inpaint2image")
    unpainted = {"background": data.astronaut(), "layers": [np.zeros((512, 512, 4), np.uint8)], "composite": None}
    with pytest.raises(gr.Error, match="paint over the part"):
        through_the_page(Runner(task, default_model, NOTE, tmp_path, toy=True), task, unpainted)


def test_a_1_1_app_without_its_files_names_the_control_its_yaml_and_its_base():
    from apps.launch import parse_args

    task = task_of("gradio_lineart_anime2image")
    args = parse_args(task, [])
    _, note, toy = resolve_model(task.control, args.control, args.base, args.config)
    assert toy and "control_v11p_sd15s2_lineart_anime.pth" in note
    assert "huggingface.co/lllyasviel/ControlNet-v1-1" in note
    assert "control_v11p_sd15s2_lineart_anime.yaml" in note and "anything-v3-full.safetensors" in note


def test_block_weights_and_a_region_mask_from_the_app_reproduce(default_model, tmp_path):
    import generate as cli

    task = task_of("gradio_canny2image")
    left = np.zeros((300, 300, 3), np.uint8)
    left[:, :150] = 255  # any size: resized to the generation's
    runner = Runner(task, default_model, NOTE, tmp_path, toy=True)
    gallery, info = runner(data.astronaut(), **values(task, block_weights="only_mid", region_mask=left,
                                   resize_mode="crop_and_resize"))
    saved = next(tmp_path.glob("canny-0*.png"))
    params = read_params(saved)
    assert params["block_weights"] == "only_mid" and params["region_mask"] in info
    region = np.asarray(Image.open(tmp_path / params["region_mask"]))
    assert region.shape == (64, 64) and region[:, :30].min() == 255 and region[:, 34:].max() == 0
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(saved), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), gallery[1])
    plain, _ = runner(data.astronaut(), **values(task))
    assert not np.array_equal(plain[1], gallery[1])


def test_the_pose_app_runs_offline_and_says_which_detector_it_used(default_model, tmp_path, monkeypatch):
    monkeypatch.delenv("CONTROLNET_ANNOTATOR_CKPTS", raising=False)
    task = task_of("gradio_pose2image")
    gallery, info = Runner(task, default_model, NOTE, tmp_path, str(tmp_path / "no-weights"), toy=True)(
        data.astronaut(), **values(task, resolution=256))
    assert "1 person found by mediapipe's bundled detectors" in info  # which detector, and how many it found
    assert (gallery[0] > 0).mean() > 0.005  # her skeleton


def test_examples_the_toy_follows_are_one_click_away(default_model, tmp_path):
    from apps.page import example_pictures

    task = task_of("gradio_hed2image")  # HED needs weights the page may not have: the examples need none
    examples = example_pictures(task)
    assert list(examples) == ["a circle", "a drawn star", "a scribble"]
    demo = build_demo(task, Runner(task, default_model, NOTE, tmp_path, toy=True))
    assert any(isinstance(block, gr.Dataset) and len(block.samples) == 3 for block in demo.blocks.values())
    run_example = friendly(Runner(task, default_model, NOTE, tmp_path, toy=True), ["preprocessor", "prompt"])
    path, prompt = examples["a drawn star"]
    gallery, info = run_example(str(path), "none", prompt)  # the file, as Gradio hands it over
    star = np.asarray(Image.open(path).convert("RGB").resize((128, 128)))
    assert len(gallery) == 2 and gallery[0].shape == (128, 128, 3) and "Seed" in info
    drawn = gallery[1].astype(int)
    on_line, off_line = star[..., 0] > 127, star[..., 0] == 0
    # the toy paints the shape the star outlines: its pixels differ along the outline from the background
    assert np.abs(drawn[on_line] - drawn[off_line].mean(axis=0)).mean() > 20
    assert not example_pictures(task_of("gradio_depth2image"))  # the toy does not follow depth maps


def test_a_reference_unit_in_an_app_is_saved_and_reproduced(default_model, tmp_path):
    """A unit whose preprocessor is a reference mode: its picture steers the image through the UNet (no control
    file), and the record makes the same image again with generate.py --reproduce."""
    import generate as cli

    task = task_of("gradio_canny2image")
    runner = Runner(task, default_model, NOTE, tmp_path, toy=True)
    picture = circle_outline(256)
    once, _ = runner(picture, **values(task))
    unit = dict(unit2_enabled=True, unit2_image=data.coffee(), unit2_preprocessor="reference_adain+attn",
                unit2_style_fidelity=0.8)
    referenced, _ = runner(picture, **values(task, **unit))
    assert np.abs(referenced[2].astype(int) - once[1]).max() > 10
    saved = max(tmp_path.glob("canny-0*.png"))
    (record,) = read_params(saved)["controls"]
    assert record["preprocessor"] == "reference_adain+attn" and record["style_fidelity"] == 0.8
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(saved), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), referenced[2])


def test_two_controls_in_an_app(default_model, tmp_path):
    """The toy's one control used by two units: half strength each is full strength once, bit for bit; a unit
    with its own picture, range, block weights and region mask changes the image, and its saved record makes
    the same image again with generate.py --reproduce."""
    import generate as cli

    task = task_of("gradio_canny2image")
    runner = Runner(task, default_model, NOTE, tmp_path, toy=True)
    picture = circle_outline(256)
    once, _ = runner(picture, **values(task))
    twice, info = runner(picture, **values(task, strength=0.5, unit2_enabled=True, unit2_strength=0.5))
    assert len(twice) == 3 and np.array_equal(twice[0], twice[1]) and np.array_equal(once[1], twice[2])

    right = np.zeros((64, 64), np.uint8)
    right[:, 32:] = 255
    unit = dict(unit3_enabled=True, unit3_image=star_outline(256), unit3_strength=0.8, unit3_control_start=0.5,
                unit3_block_weights="soft", unit3_region_mask=right)
    star, _ = runner(picture, **values(task, **unit))
    assert len(star) == 3 and not np.array_equal(star[1], star[0]) and not np.array_equal(star[2], once[1])
    saved = max(tmp_path.glob("canny-0*.png"))
    number = saved.stem.split("-")[-1]
    assert number == "00003"  # the third request: its maps took no numbers of their own
    assert sorted(p.name for p in tmp_path.glob(f"*-{number}.png")) == [
        f"canny-{number}.png", f"canny-map-{number}.png", f"canny-unit2-map-{number}.png",  # the second unit run
        f"canny-unit2-region-{number}.png"]
    (record,) = read_params(saved)["controls"]
    assert record["strength"] == 0.8 and record["control_start"] == 0.5 and record["block_weights"] == "soft"
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(saved), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), star[2])

    with pytest.raises(gr.Error, match="control 'control_nowhere.pth' is not one of the control files this server"):
        through_the_page(runner, task, picture, unit2_enabled=True, unit2_control="control_nowhere.pth")
    disabled, _ = runner(picture, **values(task, unit2_control="control_nowhere.pth"))  # not enabled: not read
    assert np.array_equal(disabled[1], once[1])


def test_region_masks_drawn_in_the_editor():
    from apps.units import region_of

    black = np.zeros((32, 48, 4), np.uint8)
    black[..., 3] = 255
    assert region_of(None) is None and region_of({"background": black, "layers": []}) is None  # untouched
    stroke = np.zeros((32, 48, 4), np.uint8)
    stroke[:, :10] = 255  # a white brush stroke on the left
    mask = region_of({"background": black, "layers": [stroke], "composite": None})
    assert mask.shape == (32, 48) and mask[:, :10].min() == 255 and mask[:, 10:].max() == 0
    uploaded = np.zeros((16, 24, 3), np.uint8)
    uploaded[:8] = 200  # an uploaded mask: its light part marks
    mask = region_of({"background": uploaded, "layers": []})
    assert mask[:8].min() == 255 and mask[8:].max() == 0
    assert region_of(np.zeros((8, 8), np.uint8)).max() == 0  # a plain black picture: the control acts nowhere
    # a mask sent as a layer, as Gradio hands every layer over (RGBA, opaque): white marks, black does not
    layer = np.dstack([np.repeat(uploaded[..., :1], 3, axis=2), np.full((16, 24, 1), 255, np.uint8)])
    mask = region_of({"background": None, "layers": [layer]})
    assert mask[:8].min() == 255 and mask[8:].max() == 0


def test_the_toy_says_what_it_draws_when_given_a_photo(default_model, tmp_path):
    from toy.model import looks_like_a_photo, scribble_outline

    task = task_of("gradio_canny2image")
    runner = Runner(task, default_model, NOTE, tmp_path, toy=True)
    _, info = runner(data.coffee(), **values(task))
    assert "only draws flat shapes" in info
    _, info = runner(circle_outline(256), **values(task, preprocessor="none"))
    assert "only draws flat shapes" not in info
    photos = [data.astronaut(), data.chelsea(), data.rocket(), data.camera(), data.moon(), data.hubble_deep_field()]
    drawings = [circle_outline(256), star_outline(512), scribble_outline(256), data.checkerboard(), data.horse()]
    assert all(looks_like_a_photo(np.asarray(p, np.uint8)) for p in photos)
    assert not any(looks_like_a_photo(np.asarray(p, np.uint8) * (255 if p.dtype == bool else 1)) for p in drawings)


def test_each_app_starts_from_defaults_that_suit_the_toy():
    tile, pose, canny = task_of("gradio_tile2image"), task_of("gradio_pose2image"), task_of("gradio_canny2image")
    assert tile.defaults(toy=True).denoise == 0.5 and tile.defaults(toy=False).denoise == 1.0
    assert pose.defaults(toy=True).prompt == pose.prompt  # the toy only shows the pose: the app's own prompt
    assert canny.defaults(toy=True).prompt == TOY_PROMPT and canny.defaults(toy=True).image_resolution == 128
    assert pose.defaults(toy=True).image_resolution == 512  # the map, readable
