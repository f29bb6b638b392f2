"""Aspect buckets: the sizes, the cropping, the batch order, and train.py on pictures of several shapes."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

import train
from annotators import read_image
from ldm.checkpoint import save_safetensors
from tests.helpers import TINY_V15, tiny_model
from toy.shapes import write_dataset
from training.buckets import BucketBatchSampler, bucket_sizes, nearest_bucket, picture_size, scale_and_crop
from training.data import AnnotatedFolder, DataError, PairDataset


def test_bucket_sizes_are_multiples_of_64_with_bounded_area_and_ratio():
    for resolution in (128, 512, 768):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        for h, w in sizes:
            assert h % 64 == 0 and w % 64 == 0
            assert resolution**2 / 2 <= h * w <= resolution**2
            assert max(h / w, w / h) <= 2.0
            assert (w, h) in sizes
    assert nearest_bucket(1080, 1920, bucket_sizes(512)) == (384, 640)
    assert nearest_bucket(1920, 1080, bucket_sizes(512)) == (640, 384)
    assert nearest_bucket(30, 31, bucket_sizes(512)) == (512, 512)
    with pytest.raises(ValueError, match="multiple of 64"):
        bucket_sizes(500)


def test_fit_covers_the_bucket_and_crops_the_centre():
    picture = np.zeros((100, 300, 3), np.uint8)
    picture[:, 140:160] = 255  # a bar in the middle stays in the middle
    out = scale_and_crop(picture, (64, 128))
    assert out.shape == (64, 128, 3)
    middle = np.flatnonzero(out[32, :, 0] > 127)
    assert abs((middle.min() + middle.max()) / 2 - 63.5) <= 1
    assert np.array_equal(scale_and_crop(out, (64, 128)), out)
    assert scale_and_crop(np.zeros((10, 10, 3), np.uint8), (128, 64), smooth=False).shape == (128, 64, 3)


def test_picture_size_reads_the_header_with_exif_rotation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert picture_size(path) == (40, 20) == read_image(str(path)).shape[:2]


def test_bucket_batches_hold_one_bucket_cover_each_pass_and_resume():
    sizes = [(64, 64)] * 7 + [(64, 128)] * 5 + [(128, 64)] * 2
    sampler = BucketBatchSampler(sizes, batch_size=3, seed=5)
    stream = iter(sampler)
    first_pass = [next(stream) for _ in range(sampler.size)]
    assert sorted(i for batch in first_pass for i in batch) == list(range(len(sizes)))
    assert all(len({sizes[i] for i in batch}) == 1 for batch in first_pass)
    assert len(first_pass) == 3 + 2 + 1  # 7 -> 3+3+1, 5 -> 3+2, 2 -> 2
    later = [next(stream) for _ in range(10)]
    resumed = iter(BucketBatchSampler(sizes, batch_size=3, seed=5, start=len(first_pass) + 4))
    assert [next(resumed) for _ in range(6)] == later[4:]
    ranks = [iter(BucketBatchSampler(sizes, 3, seed=5, rank=r, world=2)) for r in (0, 1)]
    interleaved = [next(ranks[k % 2]) for k in range(8)]
    assert interleaved == (first_pass + later)[:8]


@pytest.fixture(scope="module")
def mixed_shapes(tmp_path_factory):
    """Square 64x64 pairs plus wide 128x64 ones (the square pairs, stretched)."""
    root = write_dataset(tmp_path_factory.mktemp("mixed"), 6, seed=2, size=64)
    lines = (root / "prompt.json").read_text().splitlines()
    for line in lines[:4]:
        item = json.loads(line)
        for key in ("source", "target"):
            name = item[key].replace(".png", "-wide.png")
            Image.open(root / item[key]).resize((128, 64)).save(root / name)
            item[key] = name
        lines.append(json.dumps(item))
    (root / "prompt.json").write_text("\n".join(lines) + "\n")
    return root


def test_train_on_mixed_shapes_with_buckets_and_a_clear_error_without(mixed_shapes, tmp_path):
    model = tiny_model(TINY_V15, skip=("control_model.",))
    weights = tmp_path / "init.safetensors"
    save_safetensors(model.state_dict(), weights)
    dataset = PairDataset(mixed_shapes, buckets=bucket_sizes(128))
    assert sorted(set(dataset.sizes)) == [(64, 128), (128, 128)]
    assert dataset[7]["jpg"].shape == dataset[7]["hint"].shape == (64, 128, 3)
    common = ["--config", str(TINY_V15), "--data", str(mixed_shapes), "--max-steps", "4", "--batch-size", "2",
              "--resume", str(weights), "--ckpt-every", "4", "--log-every", "1"]
    for cached in ((), ("--cache",)):
        out = tmp_path / f"buckets{len(cached)}"
        trainee = train.main([*common, "--out", str(out), "--buckets", "--resolution", "128", *cached])
        assert trainee.micro_steps == 4 and (out / "checkpoints/step-000004.ckpt").is_file()
        assert all(math.isfinite(p.float().sum().item()) for p in trainee.model.control_model.parameters())
    with pytest.raises(DataError, match="mix pictures of sizes 128x64, 64x64: train with --buckets"):
        train.main([*common, "--out", str(tmp_path / "plain"), "--batch-size", "10"])


def test_annotated_pictures_keep_their_framing_in_buckets(tmp_path):
    from skimage import data as photos

    Image.fromarray(photos.chelsea()).save(tmp_path / "cat.jpg")  # 451x300
    Image.fromarray(photos.chelsea()).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tall.png")
    dataset = AnnotatedFolder(tmp_path, "canny", 128, buckets=bucket_sizes(128))
    assert dataset.sizes == [(64, 128), (128, 64)]
    for i, size in enumerate(dataset.sizes):
        item = dataset[i]
        assert item["jpg"].shape == item["hint"].shape == (*size, 3)
        assert item["hint"].max() == 1.0  # the cat's edges were found in the bucket's crop


def test_sizes_a_listing_states_are_not_read_from_the_pictures(mixed_shapes, tmp_path, monkeypatch):
    import training.data

    read = PairDataset(mixed_shapes, buckets=bucket_sizes(128)).sizes
    stated = tmp_path / "stated"
    shutil.copytree(mixed_shapes, stated)
    lines = [json.loads(line) for line in (stated / "prompt.json").read_text().splitlines()]
    for item in lines:
        height, width = Image.open(stated / item["target"]).size[::-1]
        item.update(width=width, height=height)
    (stated / "prompt.json").write_text("\n".join(json.dumps(item) for item in lines) + "\n")
    monkeypatch.setattr(training.data, "picture_size", lambda path: pytest.fail(f"{path} was opened"))
    assert PairDataset(stated, buckets=bucket_sizes(128)).sizes == read
