"""What each condition is measured with: the annotator that makes its map from a photo and re-detects it on the
generated images, the score of one case, and the sampling ControlNet++ evaluates it with."""

from dataclasses import dataclass, field

import cv2
import numpy as np

from evaluation import metrics

# ControlNet++'s evaluation sampling (eval/eval.py): UniPC, 20 steps, guidance 7.5, 4 images per condition
CONTROLNET_PP_SAMPLING = dict(sampler="UniPC", steps=20, guidance_scale=7.5, num_samples=4,
                              negative_prompt="worst quality, low quality")
# the shipped toy model's own (bench/controllability.py's figures before real conditions existed)
TOY_SAMPLING = dict(sampler="DDIM", steps=20, guidance_scale=9.0, num_samples=1)


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
    "canny": Condition("canny", "canny", "edge_f1", params=dict(low_threshold=100, high_threshold=200)),
    "hed": Condition("hed", "softedge", "ms_ssim", params=dict(detector="hed")),  # ControlNet++'s: ControlNetHED
    "lineart": Condition("lineart", "lineart", "ms_ssim"),
    "depth": Condition("depth", "depth", "depth_rmse", higher_is_better=False),
    "seg": Condition("seg", "seg", "miou", nearest=True),
    "pose": Condition("pose", "pose", "keypoint_f1", params=dict(detector="auto"), nearest=True),
    "shapes": Condition("shapes", None, "iou", sampling=dict(TOY_SAMPLING)),
}


def detect(condition, picture, weights=None):
    """The condition's map of a picture, at the picture's size."""
    import inspect

    from annotators import ANNOTATORS

    annotate = ANNOTATORS[condition.annotator]
    params = dict(condition.params)
    accepted = inspect.signature(annotate).parameters
    if "detect_resolution" in accepted:
        params["detect_resolution"] = min(picture.shape[:2])
    if "weights" in accepted and weights:
        params["weights"] = weights
    detected = annotate(picture, **params)
    if detected.shape[:2] != picture.shape[:2]:
        interpolation = cv2.INTER_NEAREST if condition.nearest else cv2.INTER_LINEAR
        detected = cv2.resize(detected, picture.shape[1::-1], interpolation=interpolation)
    return detected


def score_case(condition, hint, images, prompt, weights=None, segmentation=None):
    """The scores of one case (a condition map and the images generated from it), and the maps re-detected on
    them. `segmentation` (metrics.SegmentationIoU) accumulates the dataset's mIoU."""
    if condition.annotator is None:
        from training.metrics import score
        from training.shapes import prompt_colors

        colours = prompt_colors(prompt)
        scores = [score(image, hint, *colours) for image in images]
        return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}, [hint] * len(images)
    if condition.name == "pose":
        return pose_scores(condition, hint, images, weights)
    detected = [detect(condition, image, weights) for image in images]
    if condition.name == "canny":
        return {"edge_f1": metrics.edge_f1(hint, detected)}, detected
    if condition.name in ("hed", "lineart"):
        return metrics.edge_ssim(hint, detected), detected
    if condition.name == "depth":
        return {"depth_rmse": metrics.depth_rmse(hint, detected)}, detected
    if condition.name == "seg":
        from annotators.seg import palette

        label = metrics.class_map(hint, palette())
        predicted = [metrics.class_map(d, palette()) for d in detected]
        for p in predicted:
            segmentation.update(label, p)
        return {"miou": float(np.nanmean([metrics.image_miou(label, p) for p in predicted]))}, detected
    raise ValueError(f"no score for condition {condition.name!r}")


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
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}, drawn
