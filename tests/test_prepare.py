"""training.prepare: pictures (a folder, a list, shards) to training shards with condition maps, on Ray Data and
in a plain loop giving the same bytes; broken pictures skipped and counted; a killed run resumed; train.py reads
the result."""

import csv
import json
import tarfile

import pytest
from PIL import Image

from training.prepare import Options, list_items, prepare


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Generated shapes and real photos with captions, and three broken files: zero bytes, a truncated JPEG, and
    a CMYK JPEG (readable: it is converted)."""
    from skimage import data

    from toy.shapes import make_sample

    folder = tmp_path_factory.mktemp("pictures")
    for i in range(36):
        _, target, prompt, _ = make_sample(0, i, size=96)
        Image.fromarray(target).save(folder / f"shape{i:02d}.png")
        (folder / f"shape{i:02d}.txt").write_text(prompt)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg", quality=90)
    (folder / "zero.jpg").write_bytes(b"")
    whole = (folder / "coffee.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[:len(whole) // 3])
    Image.fromarray(data.coffee()).convert("CMYK").save(folder / "cmyk.jpg")
    return folder


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_the_plain_loop_and_local_ray_write_the_same_shards_and_count_the_broken_files(pictures, tmp_path):
    items = list_items(pictures)
    options = Options(("canny",), resolution=64)
    local = prepare(items, tmp_path / "local", options, per_shard=16, engine="local", progress=False)
    ray = prepare(items, tmp_path / "ray", options, per_shard=16, engine="ray", workers=2, progress=False)
    assert local.read == ray.read == len(items) == 43
    assert local.skipped == ray.skipped == {"unreadable": 2}  # zero bytes, truncated; the CMYK one is converted
    assert local.maps == 41 and local.shards_written == 3
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "ray")
    with tarfile.open(tmp_path / "local/000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[names.index("000000000.json")]).read())
    assert {"000000000.jpg", "000000000.canny.png", "000000000.txt"} <= set(names)
    assert meta["maps"] == ["canny"] and meta["original_size"] == [512, 512] and min(meta["size"]) == 64


def test_a_killed_run_resumes_with_the_missing_shards_only_and_filters_say_why(pictures, tmp_path):
    items = list_items(pictures)
    options = Options(("canny",), resolution=64)
    prepare(items, tmp_path / "out", options, per_shard=16, engine="local", progress=False)
    before = shard_bytes(tmp_path / "out")
    (tmp_path / "out/000001.tar").unlink()  # killed while writing shard 1: its partial file is a hidden temp
    (tmp_path / "out/.000001.tar.tmp").write_bytes(b"partial")
    again = prepare(items, tmp_path / "out", options, per_shard=16, engine="local", progress=False)
    assert (again.shards_kept, again.shards_written, again.read) == (2, 1, 16)
    assert shard_bytes(tmp_path / "out") == before and not list((tmp_path / "out").glob(".*tmp"))
    strict = Options(("canny",), resolution=64, min_size=200, max_aspect=1.2)
    filtered = prepare(items, tmp_path / "filtered", strict, per_shard=64, engine="local", progress=False)
    assert filtered.skipped == {"unreadable": 2, "smaller than 200": 36, "aspect above 1.2": 4}  # 3 photos are 2:3


def test_lists_with_paths_and_captions_and_shards_as_input(pictures, tmp_path):
    rows = [{"path": str(pictures / f"shape{i:02d}.png"), "text": f"caption {i}"} for i in range(3)]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with open(tmp_path / "list.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "text"])
        writer.writeheader()
        writer.writerows(rows)
    for name in ("list.jsonl", "list.csv"):
        items = list_items(tmp_path / name, caption_column="text")
        assert [item["caption"] for item in items] == ["caption 0", "caption 1", "caption 2"]
    prepare(list_items(tmp_path / "list.csv", "text"), tmp_path / "first", Options(("canny",), 64), engine="local",
            progress=False)
    again = prepare(list_items(str(tmp_path / "first/000000.tar")), tmp_path / "second", Options(("invert",), 64),
                    engine="local", progress=False)
    assert again.read == 3 and again.maps == 3 and not again.skipped


def test_train_py_trains_on_prepared_shards(pictures, tmp_path):
    import train
    from ldm.checkpoint import save_safetensors
    from tests.helpers import TINY_V15, tiny_model

    prepare(list_items(pictures), tmp_path / "shards", Options(("canny",), 64), per_shard=16, engine="local",
            progress=False)
    save_safetensors(tiny_model(TINY_V15, skip=("control_model.",)).state_dict(), tmp_path / "init.safetensors")
    train.main(["--config", str(TINY_V15), "--data", str(tmp_path / "shards/{000000..000002}.tar"), "--resolution",
                "64", "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--ckpt-every", "2",
                "--resume", str(tmp_path / "init.safetensors")])
    assert (tmp_path / "run/checkpoints/step-000002.ckpt").is_file()
