"""What each condition is measured with: the annotator that makes its map from a photo and re-detects it on the
generated images, the score of one case, and the sampling ControlNet++ evaluates it with."""

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from evaluation import metrics
from toy.model import TOY_SAMPLING

# ControlNet++'s evaluation sampling (eval/eval.py): UniPC, 20 steps, guidance 7.5, 4 images per condition
CONTROLNET_PP_SAMPLING = dict(sampler="UniPC", steps=20, guidance_scale=7.5, num_samples=4,
                              negative_prompt="worst quality, low quality")
# the shipped toy model's own, one image a case
TOY_EVALUATION = dict(TOY_SAMPLING, num_samples=1)


@dataclass(frozen=True)
class Condition:
    name: str
    annotator: str | None  # annotators.ANNOTATORS key; None: the shapes' own outlines
    headline: str  # the figure reported for the dataset
    higher_is_better: bool = True
    params: dict = field(default_factory=dict)  # the annotator's parameters
    sampling: dict = field(default_factory=lambda: dict(CONTROLNET_PP_SAMPLING))
    nearest: bool = False  # maps whose exact colours matter (segments, skeletons)


CONDITIONS = {
    # ControlNet++'s Canny: kornia's, thresholds 0.1 and 0.2 of the [0, 1] range; canny_cv2 is the release's
    # annotator (OpenCV, 100 and 200 of 255), their canny_cv2 task
    "canny": Condition("canny", "kornia_canny", "edge_f1", params=dict(low_threshold=0.1, high_threshold=0.2)),
    "canny_cv2": Condition("canny_cv2", "canny", "edge_f1", params=dict(low_threshold=100, high_threshold=200)),
    "hed": Condition("hed", "softedge", "ms_ssim", params=dict(detector="hed")),  # ControlNet++'s: ControlNetHED
    "lineart": Condition("lineart", "lineart", "ms_ssim"),
    # ControlNet++'s depth RMSE re-detects with DPT-Large; depth with the release's annotator (MiDaS DPT-Hybrid)
    "depth": Condition("depth", "depth", "depth_rmse", higher_is_better=False),
    "depth_dpt": Condition("depth_dpt", "dpt_depth", "depth_rmse", higher_is_better=False),
    "seg": Condition("seg", "seg", "miou", nearest=True),
    "pose": Condition("pose", "pose", "keypoint_f1", params=dict(detector="auto"), nearest=True),
    "shapes": Condition("shapes", None, "iou", sampling=dict(TOY_EVALUATION)),
}


def kornia_canny(image, low_threshold=0.1, high_threshold=0.2):
    """Canny edges as ControlNet++ detects them (kornia, on the RGB picture in [0, 1]): white on black."""
    import torch
    from kornia.filters import canny

    pixels = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)[None].float() / 255.0
    edges = canny(pixels, low_threshold, high_threshold)[1][0, 0]
    return np.repeat((edges.numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=2)


DPT_REPO = "Intel/dpt-large"


@lru_cache(maxsize=2)
def dpt_model(location=None):
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    from annotators.weights import transformers_dir

    folder = transformers_dir(DPT_REPO, "DPT-Large", "1.4 GB", location)
    return DPTImageProcessor.from_pretrained(folder), DPTForDepthEstimation.from_pretrained(folder).eval()


def dpt_depth(image, weights=None):
    """Depth as ControlNet++ re-detects it: DPT-Large (transformers), the map divided by its maximum, in 0-255
    levels (truncated, as torchvision's to_pil_image does), resized to the picture by PIL's bilinear filter."""
    import torch

    processor, model = dpt_model(weights)
    with torch.no_grad():
        depth = model(**processor(images=image[..., :3], return_tensors="pt")).predicted_depth[0]
    from PIL import Image

    levels = Image.fromarray((depth / depth.max()).clamp(0, 1).mul(255).to(torch.uint8).numpy())
    levels = np.asarray(levels.resize(image.shape[1::-1], Image.Resampling.BILINEAR))
    return np.repeat(levels[..., None], 3, axis=2)


DETECTORS = {"kornia_canny": kornia_canny, "dpt_depth": dpt_depth}  # beside annotators.ANNOTATORS


def detect(condition, picture, weights=None):
    """The condition's map of a picture (sides multiples of 64), at the picture's size."""
    from annotators import condition_map

    detector = DETECTORS.get(condition.annotator) or condition.annotator
    return condition_map(picture, detector, min(picture.shape[:2]), nearest=condition.nearest, weights=weights,
                         **condition.params)


# how re-detected maps are compared with the condition's, by the figure a condition reports
MAP_SCORES = {"edge_f1": lambda hint, detected: {"edge_f1": metrics.edge_f1(hint, detected)},
              "ms_ssim": metrics.edge_ssim,
              "depth_rmse": lambda hint, detected: {"depth_rmse": metrics.depth_rmse(hint, detected)}}


def score_case(condition, hint, images, prompt, weights=None, segmentation=None):
    """The scores of one case (a condition map and the images generated from it), and the maps re-detected on
    them. `segmentation` (metrics.SegmentationIoU) accumulates the dataset's mIoU."""
    if condition.annotator is None:
        return shape_scores(hint, images, prompt)
    if condition.headline == "keypoint_f1":
        return pose_scores(condition, hint, images, weights)
    detected = [detect(condition, image, weights) for image in images]
    if condition.headline == "miou":
        from annotators.seg import palette

        label = metrics.class_map(hint, palette())
        predicted = [metrics.class_map(d, palette()) for d in detected]
        for p in predicted:
            segmentation.update(label, p)
        return {"miou": float(np.nanmean([metrics.image_miou(label, p) for p in predicted]))}, detected
    return MAP_SCORES[condition.headline](hint, detected), detected


def mean_scores(scores):
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def shape_scores(hint, images, prompt):
    """The toy's shapes: the region nearer the prompt's shape colour than its background's is found."""
    from toy.metrics import score, shape_region
    from toy.shapes import prompt_colors

    colours = prompt_colors(prompt)
    found = [np.repeat(shape_region(image, *colours)[..., None], 3, axis=2).astype(np.uint8) * 255 for image in images]
    return mean_scores([score(image, hint, *colours) for image in images]), found


def pose_scores(condition, hint, images, weights):
    """Keypoint agreement between the skeleton drawn in the condition and the poses detected on each image."""
    from annotators.pose import detect_poses, draw

    wanted = metrics.points_from_pose_map(hint)
    scores, drawn = [], []
    for image in images:
        poses, size = detect_poses(image, condition.params.get("detector", "auto"),
                                   detect_resolution=min(image.shape[:2]), weights=weights)
        found = metrics.body_points(poses, image.shape[:2])
        scores.append(metrics.keypoint_agreement(wanted, found, image.shape[:2]))
        drawn.append(cv2.resize(draw(poses, size), image.shape[1::-1], interpolation=cv2.INTER_NEAREST))
    return mean_scores(scores), drawn
