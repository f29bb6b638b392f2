"""generate.py: a photo through an annotator, a folder, extra ControlNets, and reproducing a saved result."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

import generate as cli
from cldm.outputs import read_params
from tests.helpers import ROOT
from toy.model import TOY_CONTROL


def test_photo_through_an_annotator_then_reproduced(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()).save(photo)
    first = tmp_path / "cat.png"
    cli.main(["--image", str(photo), "--annotator", "canny", "--resolution", "64", "--steps", "3",
              "--sampler", "UniPC", "--control-end", "0.5", "--out", str(first)])
    params = read_params(first)
    assert params["sampler"] == "UniPC" and params["control_end"] == 0.5 and params["hint"] == "cat-map.png"
    assert np.asarray(Image.open(tmp_path / "cat-map.png")).shape == (64, 128, 3)
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(first), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_a_folder_with_an_extra_control(tmp_path):
    pictures = tmp_path / "in"
    pictures.mkdir()
    for name, photo in (("a", data.astronaut()), ("b", data.coffee())):
        Image.fromarray(photo).save(pictures / f"{name}.jpg")
    (pictures / "notes.txt").write_text("not a picture")
    outline = tmp_path / "outline.png"
    Image.fromarray(cli.circle_outline(64)).save(outline)
    cli.main(["--input-dir", str(pictures), "--annotator", "scribble", "--resolution", "64", "--steps", "2",
              "--samples", "2", "--extra-control", str(TOY_CONTROL), str(outline), "0.5", "--out-dir",
              str(tmp_path / "out")])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a-map.png", "a-unit2-map.png", "a_0.png", "a_1.png",
                       "b-map.png", "b-unit2-map.png", "b_0.png", "b_1.png"]
    (unit,) = read_params(tmp_path / "out/b_1.png")["controls"]  # recorded as a unit, its file by name
    assert unit["control"] == TOY_CONTROL.name and unit["strength"] == 0.5 and unit["hint"] == "b-unit2-map.png"
    cli.main(["--reproduce", str(tmp_path / "out/b_1.png"), "--out", str(tmp_path / "again.png")])  # both samples
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again_1.png")),
                          np.asarray(Image.open(tmp_path / "out/b_1.png")))


def test_the_precision_is_saved_and_reproduced_bit_for_bit(tmp_path, capsys):
    first = tmp_path / "bf16.png"
    cli.main(["--precision", "bf16", "--resolution", "64", "--steps", "3", "--seed", "7", "--out", str(first)])
    assert "computing in bf16" in capsys.readouterr().out
    assert read_params(first)["precision"] == "bf16"
    again, other = tmp_path / "again.png", tmp_path / "fp32.png"
    cli.main(["--reproduce", str(first), "--out", str(again)])  # takes bf16 from the saved parameters
    assert "computing in bf16" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    cli.main(["--reproduce", str(first), "--precision", "fp32", "--out", str(other)])  # unless told otherwise
    assert read_params(other)["precision"] == "fp32"
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(other)))


def test_inpainting_with_the_inpaint_condition_then_reproduced(tmp_path):
    """The toy's control stands in for an inpaint ControlNet: the CLI feeds it the masked picture (-1 under the
    mask, shown black in the saved map), keeps the picture outside the mask and reproduces the result."""
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(data.coffee()).save(photo)  # 400x600
    drawn = np.zeros(data.coffee().shape[:2], np.uint8)
    drawn[100:300, 200:400] = 255
    Image.fromarray(drawn).save(mask)
    first = tmp_path / "cup.png"
    cli.main(["--init-image", str(photo), "--mask", str(mask), "--inpaint-control", "--mask-blur", "0",
              "--resolution", "64", "--steps", "3", "--seed", "5", "--out", str(first)])
    params = read_params(first)
    assert params["inpaint_control"] and params["init_image"] == "cup-init.png" and params["mask"] == "cup-mask.png"
    shown = np.asarray(Image.open(tmp_path / "cup-map.png"))
    init = np.asarray(Image.open(tmp_path / "cup-init.png"))
    saved_mask = np.asarray(Image.open(tmp_path / "cup-mask.png"))
    assert shown.shape == init.shape == saved_mask.shape == (64, 128, 3)  # 400x600 at 64, sides rounded to 64
    assert (shown[saved_mask[..., 0] > 127] == 0).all()
    result = np.asarray(Image.open(first))
    outside = saved_mask[..., 0] == 0
    assert np.array_equal(result[outside], init[outside])
    assert np.abs(result.astype(int) - init)[~outside].mean() > 5
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(first), "--out", str(again)])
    assert np.array_equal(result, np.asarray(Image.open(again)))


def test_image_to_image_from_a_photo(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(data.astronaut()).save(photo)
    out = tmp_path / "astronaut.png"
    cli.main(["--init-image", str(photo), "--denoise", "0.3", "--resolution", "64", "--steps", "4", "--out", str(out)])
    params = read_params(out)
    assert params["denoise"] == 0.3 and params["init_image"] == "astronaut-init.png" and "hint" not in params
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


def test_block_weights_and_a_region_mask_are_saved_and_reproduced(tmp_path):
    region = tmp_path / "left.png"
    left = np.zeros((64, 128), np.uint8)  # wider than the generation: fitted by the resize mode
    left[:, :64] = 255
    Image.fromarray(left).save(region)
    first, plain = tmp_path / "first.png", tmp_path / "plain.png"
    common = ["--resolution", "64", "--steps", "3", "--seed", "9"]
    cli.main([*common, "--block-weights", "soft", "--region-mask", str(region), "--resize-mode", "resize_and_fill",
              "--out", str(first)])
    params = read_params(first)
    assert params["block_weights"] == "soft" and params["region_mask"] == "first-region.png"
    saved_region = np.asarray(Image.open(tmp_path / "first-region.png"))[..., 0]
    assert saved_region[:16].max() == 0 and saved_region[16:48, :30].min() == 255  # fitted inside, bands black
    again = tmp_path / "again.png"
    cli.main(["--reproduce", str(first), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    cli.main([*common, "--out", str(plain)])
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(plain)))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_an_app_image_reproduces_in_another_process_with_another_thread_setting(tmp_path):
    """The thread count is saved with the image and restored: the CLI, in a new process told to use another
    count, computes on the saved one."""
    import torch

    from apps.runner import Runner
    from gradio_canny2image import task
    from toy.model import load_default_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gallery, _ = Runner(task, load_default_model(), "", tmp_path, toy=True)(
            data.astronaut(), prompt="a gold star on a navy background", image_resolution=64, steps=3, seed=5)
    finally:
        torch.set_num_threads(threads)
    saved = next(tmp_path.glob("canny-0*.png"))
    assert read_params(saved)["threads"] == 2
    again = tmp_path / "again.png"
    done = run_cli("generate.py", "--reproduce", str(saved), "--out", str(again), env={"CONTROLNET_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "(2 threads)" in done.stdout
    assert np.array_equal(np.asarray(Image.open(again)), gallery[1])


@pytest.mark.parametrize("script,flags,message", [
    ("generate.py", ["--ckpt", "models/no_such_model.ckpt"], "checkpoint models/no_such_model.ckpt not found"),
    ("generate.py", ["--ckpt", "README.md"], "README.md could not be read as a checkpoint"),
    ("generate.py", ["--image", "no_such_photo.jpg"], "picture no_such_photo.jpg not found"),
    ("generate.py", ["--mask", "README.md"], "--mask needs --init-image"),
    ("train.py", ["--data", "no_such_folder"], "--data no_such_folder is not a folder"),
    ("train.py", ["--data", "models", "--resume", "runs/no_such.ckpt"], "checkpoint runs/no_such.ckpt not found"),
])
def test_a_wrong_file_fails_at_once_in_one_line(script, flags, message):
    """Before torch is even imported (so within a second), with one line and no traceback."""
    done = run_cli("-X", "importtime", script, *flags)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.returncode == 2 and lines == [f"error: {lines[0][7:]}"] and message in lines[0]
    assert "torch" not in imported and "Traceback" not in done.stderr
