"""Controllability metrics, defined as ControlNet++'s evaluation (eval/eval_edge.py, eval_depth.py, mmseg's
IoU metric) defines them, computed with torchmetrics. Each takes the condition map a generation followed and
the maps re-detected on its images (HWC or HW uint8), and returns plain floats.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.classification import binary_f1_score
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

# MS-SSIM's five scales with its 11-pixel window need sides above (11 - 1) * 2**4
MS_SSIM_MIN_SIDE = 161
# a re-detected keypoint agrees with the condition's when nearer than this fraction of the image's longer side
KEYPOINT_TOLERANCE = 0.05
ADE20K_CLASSES = 150
IGNORED = 255  # a segment whose colour is not one of the palette's (unlabelled)


def gray(picture):
    """HW float tensor in [0, 1] of a map (a colour map's mean channel, as PIL's 'L' conversion for gray maps)."""
    picture = np.asarray(picture)
    if picture.ndim == 3:
        picture = picture.astype(np.float32).mean(axis=2)
    return torch.from_numpy(np.asarray(picture, np.float32) / 255.0)


def stacked(condition, detected):
    """(predictions, targets) as (N, 1, H, W) tensors in [0, 1]: the N re-detected maps and the condition
    repeated, as ControlNet++ scores the images of one condition together."""
    preds = torch.stack([gray(d) for d in detected])[:, None]
    return preds, gray(condition)[None, None].expand_as(preds)


def edge_f1(condition, detected):
    """Binary F1 of the edge pixels (white) over all images of a condition together (ControlNet++'s Canny F1)."""
    preds, target = stacked(condition, detected)
    return float(binary_f1_score((preds > 0.5).int().flatten(), (target > 0.5).int().flatten()))


def edge_ssim(condition, detected):
    """{"ms_ssim", "ssim"} of the soft maps (data range 1): MS-SSIM is ControlNet++'s "SSIM" for HED and line
    art; it needs sides of MS_SSIM_MIN_SIDE pixels (NaN below), plain SSIM any size."""
    preds, target = stacked(condition, detected)
    ms_ssim = float("nan")
    if min(preds.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        ms_ssim = float(multiscale_structural_similarity_index_measure(preds, target, data_range=1.0))
    return {"ms_ssim": ms_ssim, "ssim": float(structural_similarity_index_measure(preds, target, data_range=1.0))}


def depth_rmse(condition, detected):
    """Per-image root mean squared difference of the depth maps in 0-255 gray levels, averaged over the images
    (ControlNet++'s depth RMSE)."""
    preds, target = stacked(condition, detected)
    errors = ((preds - target) * 255.0).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return float(errors.mean())


def class_map(picture, palette):
    """A segmentation drawn in `palette`'s colours -> HW class indices (IGNORED where a colour is none of them)."""
    picture = np.asarray(picture)[..., :3].astype(np.int32)
    codes = (picture[..., 0] << 16) | (picture[..., 1] << 8) | picture[..., 2]
    palette = np.asarray(palette, np.int32)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    where = np.searchsorted(palette_codes[order], codes).clip(0, len(order) - 1)
    found = palette_codes[order][where] == codes
    return np.where(found, order[where], IGNORED).astype(np.int64)


class SegmentationIoU:
    """Mean IoU over the classes, intersection and union summed over every image first (mmseg's IoUMetric, which
    ControlNet++ uses): classes absent from both the labels and the predictions do not count."""

    def __init__(self, num_classes=ADE20K_CLASSES):
        self.num_classes = num_classes
        self.intersection = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)

    def update(self, label, predicted):
        """Add one image's class maps (HW ints; IGNORED pixels of the label are left out, IGNORED predictions are
        no class: wrong wherever the label has one)."""
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        none = self.num_classes  # one more column for predictions of no class
        label, predicted = torch.as_tensor(label).flatten(), torch.as_tensor(predicted).flatten()
        predicted = torch.where((predicted >= 0) & (predicted < none), predicted, none)
        counts = multiclass_confusion_matrix(predicted, label, none + 1, ignore_index=IGNORED).numpy()
        intersection = np.diag(counts)[:none]
        self.intersection += intersection
        self.union += counts[:none].sum(axis=1) + counts[:, :none].sum(axis=0) - intersection

    def per_class(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def compute(self):
        return float(np.nanmean(self.per_class())) if (self.union > 0).any() else float("nan")


def image_miou(label, predicted, num_classes=ADE20K_CLASSES):
    """One image's mean IoU (for ranking cases; the reported figure sums over the dataset first)."""
    metric = SegmentationIoU(num_classes)
    metric.update(label, predicted)
    return metric.compute()


def keypoint_agreement(condition_points, detected_points, size, tolerance=KEYPOINT_TOLERANCE):
    """How well re-detected OpenPose body keypoints agree with the condition's: for each of the 18 joints, the
    condition's and the detection's points of that joint (any number of people) are paired to the least total
    distance, and a pair within `tolerance` of the image's longer side agrees. Returns recall (condition points
    found again), precision (detected points that are the condition's) and their F1.

    Points are (joint, x, y) in pixels; `size` is (H, W)."""
    limit = tolerance * max(size)
    matched = 0
    for joint in {j for j, _, _ in condition_points} | {j for j, _, _ in detected_points}:
        wanted = np.array([(x, y) for j, x, y in condition_points if j == joint]).reshape(-1, 2)
        found = np.array([(x, y) for j, x, y in detected_points if j == joint]).reshape(-1, 2)
        if len(wanted) and len(found):
            distance = np.linalg.norm(wanted[:, None] - found[None], axis=2)
            rows, cols = linear_sum_assignment(distance)
            matched += int((distance[rows, cols] <= limit).sum())
    recall = matched / len(condition_points) if condition_points else float(not detected_points)
    precision = matched / len(detected_points) if detected_points else float(not condition_points)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"keypoint_recall": recall, "keypoint_precision": precision, "keypoint_f1": f1}


def body_points(poses, size):
    """controlnet-aux poses (keypoints in [0, 1]) -> [(joint, x, y)] in pixels of an image of `size` (H, W)."""
    height, width = size
    return [(j, k.x * width, k.y * height) for pose in poses for j, k in enumerate(pose.body.keypoints)
            if k is not None]


def points_from_pose_map(picture):
    """The body keypoints drawn in an OpenPose map, [(joint, x, y)] in pixels: each joint is a disc of its own
    colour (limbs are drawn at 60% of theirs), so every disc of a joint's exact colour is one person's joint."""
    import cv2

    picture = np.ascontiguousarray(np.asarray(picture)[..., :3])
    points = []
    for joint, colour in enumerate(JOINT_COLOURS):
        mask = np.all(picture == colour, axis=2).astype(np.uint8)
        count, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
        points += [(joint, float(x), float(y)) for (x, y), area in zip(centroids[1:], stats[1:, cv2.CC_STAT_AREA])
                   if area >= MIN_DISC_AREA]
    return points


# OpenPose's joint colours, in the 18-point body order (controlnet-aux's draw_bodypose draws with them)
JOINT_COLOURS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
                 [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
                 [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
MIN_DISC_AREA = 4  # pixels: a disc of radius 4, partly covered by a neighbour's, still has more
