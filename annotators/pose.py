"""Human pose: OpenPose (body, hands, face) through controlnet-aux, or mediapipe's bundled model offline.

Both give controlnet-aux `PoseResult`s with keypoints in [0, 1] image coordinates, in the 18-point OpenPose
(COCO) body order, drawn in the OpenPose colour convention the pose controls were trained on. Poses are
written and read as OpenPose JSON (annotators.pose_json), so a pose can be edited in any OpenPose tool.
"""

import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

from annotators.util import AnnotatorNotice, prepare
from annotators.weights import NEEDS, WeightsError, aux_detector, search_dirs, weights_on_disk

OPENPOSE_FILES = NEEDS["openpose"]

# BlazePose's 33 landmarks -> the 18 OpenPose body points (the neck, index 1, is the shoulders' midpoint):
# nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle,
# left hip/knee/ankle, right eye, left eye, right ear, left ear.
BLAZEPOSE_TO_OPENPOSE = [0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
SHOULDERS = (11, 12)
MIN_KEYPOINTS = 6  # a head and shoulders, or a torso: less is no person to draw


def openpose_detector(location=None):
    return aux_detector("OpenposeDetector", OPENPOSE_FILES, location)


def detect_openpose(image, include_hand=False, include_face=False, detect_resolution=512, weights=None):
    """(poses, (H, W)) of the OpenPose networks on the resized image."""
    img = prepare(image, detect_resolution)
    return openpose_detector(weights).detect_poses(img, include_hand, include_face), img.shape[:2]


@lru_cache(maxsize=1)
def mediapipe_pose():
    try:
        import mediapipe as mp
    except ImportError as error:
        raise ImportError("the offline pose detector needs mediapipe: pip install -e '.[pose]'") from error
    with stderr_silenced():
        return mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1)


@contextmanager
def stderr_silenced():
    """mediapipe's C++ side prints its TensorFlow Lite set-up (delegates, feedback tensors, a note on the region
    of interest) straight to file descriptor 2, past Python's warnings and logging, when it builds its graph and
    first finds a person: noise a user can do nothing about, so the descriptor points elsewhere meanwhile."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def detect_mediapipe(image, min_visibility=0.5, detect_resolution=512, min_keypoints=MIN_KEYPOINTS):
    """(poses, (H, W)) from mediapipe's bundled BlazePose model: one person, body only, no download. A person
    with fewer than `min_keypoints` of the 18 points visible counts as no person: BlazePose always returns a
    full skeleton once its detector fires, and its visibility scores are what tell a body from a shadow."""
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    img = prepare(image, detect_resolution)
    detector = mediapipe_pose()
    with stderr_silenced():
        result = detector.process(img)
    if result.pose_landmarks is None:
        return [], img.shape[:2]
    marks = result.pose_landmarks.landmark
    visible = [m.visibility >= min_visibility and 0 <= m.x <= 1 and 0 <= m.y <= 1 for m in marks]
    keypoints = []
    for i, index in enumerate(BLAZEPOSE_TO_OPENPOSE):
        if index is None:
            left, right = SHOULDERS
            ok = visible[left] and visible[right]
            x, y = (marks[left].x + marks[right].x) / 2, (marks[left].y + marks[right].y) / 2
        else:
            ok, x, y = visible[index], marks[index].x, marks[index].y
        keypoints.append(Keypoint(x, y, 1.0, i) if ok else None)
    found = [k for k in keypoints if k is not None]
    if len(found) < min_keypoints:
        return [], img.shape[:2]
    return [PoseResult(BodyResult(keypoints, float(len(found)), len(found)), None, None, None)], img.shape[:2]


def draw(poses, size, hands=True, face=True):
    from controlnet_aux.open_pose import draw_poses

    return draw_poses(poses, size[0], size[1], draw_body=True, draw_hand=hands, draw_face=face)


def openpose(image, include_hand=False, include_face=False, detect_resolution=512, weights=None):
    poses, size = detect_openpose(image, include_hand, include_face, detect_resolution, weights)
    return draw(poses, size, include_hand, include_face)


def mediapipe_openpose(image, min_visibility=0.5, detect_resolution=512):
    """OpenPose-style body skeleton from mediapipe, for when the OpenPose weights are not at hand."""
    poses, size = detect_mediapipe(image, min_visibility, detect_resolution)
    return draw(poses, size)


def pose(image, detector: Literal["auto", "openpose", "mediapipe"] = "auto", include_hand=False,
         include_face=False, detect_resolution=512, weights=None):
    """The pose app's detector: OpenPose (the release's; downloads its weights), mediapipe (offline, body
    only), or auto: OpenPose when its weights are on disk, else mediapipe; an AnnotatorNotice says which ran."""
    poses, size = detect_poses(image, detector, include_hand, include_face, detect_resolution, weights)
    return draw(poses, size, include_hand, include_face)


def detect_poses(image, detector="auto", include_hand=False, include_face=False, detect_resolution=512,
                 weights=None):
    """(poses, (H, W)) of `pose`'s detector, for drawing or editing, with an AnnotatorNotice saying which
    detector ran (the apps show it on the page)."""
    why = ""
    if detector == "auto":
        found = weights_on_disk(OPENPOSE_FILES, weights)
        detector = "openpose" if found else "mediapipe"
        places = ", ".join(str(folder) for folder in search_dirs(weights))
        why = (f" (its weights are in {found})" if found else
               f" (OpenPose weights not found in {places}; choose the openpose detector to download them)")
    if detector == "mediapipe":
        poses, size = detect_mediapipe(image, detect_resolution=detect_resolution)
        name = "mediapipe's bundled detector, body only"
    elif detector == "openpose":
        try:
            poses, size = detect_openpose(image, include_hand, include_face, detect_resolution, weights)
        except WeightsError as error:
            raise WeightsError(f"{error} Or choose the mediapipe detector, which needs no download.") from error
        name = "OpenPose"
    else:
        raise ValueError(f"pose detector {detector!r} is not 'auto', 'openpose' or 'mediapipe'")
    warnings.warn(f"{'Pose detected' if poses else 'No person found'} by {name}{why}.", AnnotatorNotice,
                  stacklevel=3)
    return poses, size
