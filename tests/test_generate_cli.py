"""generate.py: a photo through an annotator, a folder, extra ControlNets, and reproducing a saved result."""

import numpy as np
from PIL import Image
from skimage import data

import generate as cli
from cldm.defaults import TOY_CONTROL
from cldm.outputs import read_params


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
    assert written == ["a-map.png", "a_0.png", "a_1.png", "b-map.png", "b_0.png", "b_1.png"]
