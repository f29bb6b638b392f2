"""The controllability harness: each metric on inputs with a known answer and against ControlNet++'s own
definition, then the whole path (generate, re-detect, score, files) on the toy and on a tiny real-format
model with random annotator weights, for every condition."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from evaluation import metrics
from tests.helpers import TINY_V15, tiny_model

RNG = np.random.default_rng(0)


def edges(density, size=(64, 64)):
    return np.where(RNG.random(size) < density, 255, 0).astype(np.uint8)


def test_edge_f1_is_controlnet_pp_binary_f1_over_the_images_of_a_condition():
    from torchmetrics.classification import BinaryF1Score

    target = np.zeros((8, 8), np.uint8)
    target[:, :2] = 255  # 16 edge pixels
    half = np.zeros((8, 8), np.uint8)
    half[:, 1:3] = 255  # 8 of them found, 8 elsewhere: precision = recall = 0.5
    assert metrics.edge_f1(target, [target]) == 1.0 and metrics.edge_f1(target, [255 - target]) == 0.0
    assert metrics.edge_f1(target, [half]) == pytest.approx(0.5)
    # ControlNet++'s eval_edge.py: the condition repeated, 255 -> 1, BinaryF1Score over the flattened batch
    condition, detected = edges(0.1), [edges(0.1) for _ in range(4)]
    gt = torch.from_numpy(condition)[None, None].repeat(4, 1, 1, 1)
    pred = torch.stack([torch.from_numpy(d) for d in detected])[:, None]
    gt[gt == 255], pred[pred == 255] = 1, 1
    theirs = BinaryF1Score()(pred.flatten(), gt.flatten())
    assert metrics.edge_f1(np.stack([condition] * 3, axis=2), detected) == pytest.approx(float(theirs))


def test_canny_as_controlnet_pp_detects_it():
    from evaluation.conditions import kornia_canny

    square = np.zeros((32, 32, 3), np.uint8)
    square[8:24, 8:24] = 255
    edges = kornia_canny(square)[..., 0] > 0
    inside, outside = np.zeros_like(edges), np.ones_like(edges)
    inside[11:21, 11:21], outside[4:28, 4:28] = True, False
    assert edges[7:25, 7:25].any(axis=0)[1:-1].all() and not edges[inside].any() and not edges[outside].any()
    assert set(np.unique(kornia_canny(square))) == {0, 255}


def test_depth_as_controlnet_pp_redetects_it(annotator_weights):
    """DPT depth divided by its maximum, to 8 bits and resized as eval.py does with torchvision and PIL."""
    from torchvision.transforms.functional import to_pil_image

    from evaluation.conditions import dpt_depth, dpt_model

    folder = str(annotator_weights("dpt"))
    photo = np.asarray(Image.fromarray(data.coffee()).resize((128, 96)))
    processor, model = dpt_model(folder)
    with torch.no_grad():
        depth = model(**processor(images=[photo], return_tensors="pt")).predicted_depth[0]
    theirs = to_pil_image(depth / depth.max()).convert("RGB").resize((128, 96), Image.Resampling.BILINEAR)
    assert np.array_equal(dpt_depth(photo, folder), np.asarray(theirs))


def test_ssim_is_ms_ssim_at_evaluation_size_and_ssim_below():
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    soft = (RNG.random((192, 192)) * 255).astype(np.uint8)
    same = metrics.edge_ssim(soft, [soft, soft])
    assert same["ms_ssim"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    blurred = [np.asarray(Image.fromarray(soft).resize((96, 96)).resize((192, 192))) for _ in range(2)]
    ours = metrics.edge_ssim(soft, blurred)
    pred = torch.stack([torch.from_numpy(b) for b in blurred])[:, None] / 255.0
    gt = torch.from_numpy(soft)[None, None].repeat(2, 1, 1, 1) / 255.0
    theirs = MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0)(pred.clip(0, 1), gt.clip(0, 1))
    assert ours["ms_ssim"] == pytest.approx(float(theirs), abs=1e-6) and ours["ms_ssim"] < 0.95
    small = metrics.edge_ssim(soft[:64, :64], [soft[:64, :64]])
    assert np.isnan(small["ms_ssim"]) and small["ssim"] == pytest.approx(1.0)


def test_depth_rmse_is_per_image_then_averaged():
    depth = (RNG.random((32, 32)) * 200).astype(np.uint8)
    assert metrics.depth_rmse(depth, [depth + 10]) == pytest.approx(10.0)
    # 0 and 20 levels off: the mean of the images' RMSE is 10 (pooling the squares would give 14.1)
    assert metrics.depth_rmse(depth, [depth, depth + 20]) == pytest.approx(10.0)


def test_segmentation_miou_sums_over_the_dataset_then_averages_the_classes():
    from annotators.seg import palette

    colours = palette()
    label = np.full((2, 2), 3)
    predicted = np.array([[3, 3], [5, 5]])
    metric = metrics.SegmentationIoU()
    metric.update(colours_to_classes(colours[label], colours), colours_to_classes(colours[predicted], colours))
    metric.update(np.full((2, 2), 5), np.full((2, 2), 5))
    # class 3: 2 of 4 pixels; class 5: intersection 4, union 4 + 6 - 4; other classes absent: not counted
    assert metric.per_class()[3] == pytest.approx(0.5) and metric.per_class()[5] == pytest.approx(4 / 6)
    assert metric.compute() == pytest.approx((0.5 + 4 / 6) / 2)
    unlabelled = np.full((2, 2, 3), 1, np.uint8)  # a colour of no class: left out of the label
    assert (metrics.class_map(unlabelled, colours) == metrics.IGNORED).all()
    metric = metrics.SegmentationIoU()
    metric.update(np.array([[3, metrics.IGNORED]]), np.array([[metrics.IGNORED, 7]]))
    assert metric.per_class()[3] == 0.0 and np.isnan(metric.per_class()[7])  # no class predicted: wrong


def colours_to_classes(picture, colours):
    classes = metrics.class_map(picture, colours)
    assert (classes != metrics.IGNORED).all()
    return classes


def test_keypoints_are_read_back_from_a_drawn_pose_and_compared():
    from annotators.pose import detect_mediapipe, draw

    poses, size = detect_mediapipe(data.astronaut(), detect_resolution=512)
    drawn = draw(poses, size)
    wanted = metrics.body_points(poses, size)
    recovered = metrics.points_from_pose_map(drawn)
    assert len(recovered) == len(wanted) >= 6
    agreement = metrics.keypoint_agreement(wanted, recovered, size, tolerance=2 / 512)  # within 2 pixels
    assert agreement == {"keypoint_recall": 1.0, "keypoint_precision": 1.0, "keypoint_f1": 1.0}
    moved = [(j, x + 40, y) if j == 0 else (j, x, y) for j, x, y in wanted]  # the nose 40 px off (> 5% of 512)
    agreement = metrics.keypoint_agreement(wanted, moved[1:], size)  # ... and one point less detected
    n = len(wanted)
    assert agreement["keypoint_recall"] == pytest.approx((n - 1) / n) and agreement["keypoint_precision"] == 1.0
    assert metrics.keypoint_agreement(wanted, moved, size)["keypoint_precision"] == pytest.approx((n - 1) / n)
    assert metrics.keypoint_agreement([], [], size)["keypoint_f1"] == 1.0  # no one asked, no one drawn


def test_the_toy_on_held_out_outlines_writes_every_result(tmp_path):
    import bench.controllability as bench

    # fp32: with bf16 (the auto choice on a CPU that has it) the bench adds a row in fp32 beside it
    results = bench.main(["--count", "2", "--steps", "2", "--out", str(tmp_path), "--no-progress", "--precision",
                          "fp32"])
    assert set(results) == {"control", "strength 0"}
    for run in results.values():
        assert len(run["cases"]) == 2 and set(run["summary"]) == {"iou", "color_ok", "background_ok", "outline_f1"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["condition"] == "shapes" and saved["settings"]["sampler"] == "UniPC"  # the toy's own sampling
    assert saved["runs"]["control"]["summary"] == pytest.approx(results["control"]["summary"])
    assert len((tmp_path / "results.csv").read_text().strip().splitlines()) == 1 + 2 * 2
    assert Image.open(tmp_path / "grid.png").size == (3 * 128, 2 * 128)  # best and worst: map, image, re-detected


def test_outlines_of_shapes_never_trained_on(tmp_path):
    import bench.controllability as bench
    from evaluation.conditions import CONDITIONS
    from training.cases import cases_from

    cases = cases_from(CONDITIONS["shapes"], count=6, size=128, shapes=("star", "blob"))
    assert {c.prompt.split(" on a ")[0].rsplit(" ", 1)[1] for c in cases} == {"star", "blob"}
    results = bench.main(["--shapes", "ellipse", "--count", "1", "--steps", "2", "--out", str(tmp_path),
                          "--no-progress"])
    assert len(results["control"]["cases"]) == 1
    with pytest.raises(SystemExit, match="--shapes chooses the generated outlines"):
        bench.main(["--shapes", "star", "--data", str(tmp_path), "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from ldm.checkpoint import save_safetensors

    path = tmp_path_factory.mktemp("model") / "control_tiny.safetensors"
    save_safetensors(tiny_model(TINY_V15).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A transformers CLIP folder of random weights (the real tokenizer), as CLIPScore loads a hub model."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from ldm.text_encoders import clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), clip_tokenizer())
    processor.save_pretrained(folder)
    return folder


WEIGHTS = {"canny": (), "canny_cv2": (), "hed": ("hed",), "lineart": ("lineart",), "depth": ("midas",),
           "depth_dpt": ("dpt",), "seg": ("upernet",), "pose": ()}


@pytest.mark.parametrize("condition", sorted(WEIGHTS))
def test_every_condition_end_to_end_on_random_weights(condition, tiny_checkpoint, tiny_clip, annotator_weights,
                                                       tmp_path):
    """Photos with captions made into cases by the condition's annotator, generated by a tiny real-format model,
    re-detected and scored; the CLIP score from a CLIP folder; every file written."""
    import bench.controllability as bench

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.png")
        (photos / f"{name}.txt").write_text(f"a photo of {name}")
    weights = str(annotator_weights(*WEIGHTS[condition]))
    out = tmp_path / "out"
    results = bench.main(["--condition", condition, "--control", str(tiny_checkpoint), "--config", str(TINY_V15),
                          "--data", str(photos), "--size", "64", "--images", "2", "--steps", "1",
                          "--annotator-ckpts", weights, "--clip", str(tiny_clip), "--out", str(out),
                          "--no-progress"])
    headline = bench.CONDITIONS[condition].headline
    for run in ("control", "strength 0"):
        summary = results[run]["summary"]
        assert len(results[run]["cases"]) == 2 and headline in summary and "clip_score" in summary
        value = summary["ssim" if headline == "ms_ssim" else headline]  # MS-SSIM needs larger maps than 64
        assert np.isfinite(value) and (value >= 0 if headline == "depth_rmse" else -1 <= value <= 1)
        assert np.isfinite(summary["clip_score"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["sampler"] == "UniPC" and saved["settings"]["num_samples"] == 2
    assert (out / "grid.png").is_file()


def test_a_dataset_in_the_release_layout_and_a_condition_without_data(tmp_path, tiny_checkpoint, annotator_weights):
    """prompt.json's sources are the maps (a segmentation drawn in ADE20K's colours, scored as classes);
    a real condition without --data stops with a message."""
    import bench.controllability as bench
    from annotators.seg import palette

    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    segments = palette()[np.repeat(np.arange(4), 16)[None].repeat(64, axis=0)]  # four class bands
    Image.fromarray(segments).save(tmp_path / "source/0.png")
    Image.fromarray(data.rocket()[:64, :64]).save(tmp_path / "target/0.png")
    (tmp_path / "prompt.json").write_text(json.dumps({"source": "source/0.png", "target": "target/0.png",
                                                      "prompt": "a rocket"}) + "\n")
    results = bench.main(["--condition", "seg", "--control", str(tiny_checkpoint), "--config", str(TINY_V15),
                          "--data", str(tmp_path), "--size", "64", "--images", "1", "--steps", "1",
                          "--annotator-ckpts", str(annotator_weights("upernet")), "--out", str(tmp_path / "out"),
                          "--no-progress"])
    assert 0 <= results["control"]["summary"]["miou"] <= 1
    with pytest.raises(SystemExit, match="the depth condition needs --data"):
        bench.main(["--condition", "depth", "--control", str(tiny_checkpoint), "--config", str(TINY_V15)])


def test_hub_test_sets_are_written_as_folders_the_harness_reads(tmp_path):
    """Rows as a `datasets` split yields them (PIL pictures, captions, maps): without a condition column they
    become photos with captions, with one the release's layout."""
    from evaluation.conditions import CONDITIONS
    from evaluation.export import export, main
    from training.cases import cases_from

    rows = [{"image": Image.fromarray(getattr(data, name)()), "text": f"a photo of {name}",
             "control_depth": Image.fromarray(data.camera()).convert("L")} for name in ("astronaut", "coffee")]
    assert export(rows, tmp_path / "photos", count=1) == 1
    cases = cases_from(CONDITIONS["canny"], tmp_path / "photos", size=64)
    assert [c.prompt for c in cases] == ["a photo of astronaut"] and cases[0].hint.max() == 255
    assert export(rows, tmp_path / "maps", condition_column="control_depth") == 2
    cases = cases_from(CONDITIONS["depth"], tmp_path / "maps", size=64)
    camera = cv2.resize(data.camera(), (64, 64), interpolation=cv2.INTER_AREA)
    assert len(cases) == 2 and cases[1].prompt == "a photo of coffee"
    assert np.array_equal(cases[0].hint[..., 0], camera)  # the dataset's map, resized
    with pytest.raises(KeyError, match="no column 'prompt'"):
        export(rows, tmp_path / "bad", prompt_column="prompt")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install datasets"):
            main(["limingcv/MultiGen-20M_canny_eval", "--out", str(tmp_path / "hub")])
