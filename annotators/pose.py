"""Human pose: OpenPose (body, hands, face) through controlnet-aux, or offline the models inside mediapipe's
wheel (annotators.people: everyone in the picture, with hands and face).

Both give controlnet-aux `PoseResult`s with keypoints in [0, 1] image coordinates, in the 18-point OpenPose
(COCO) body order, drawn in the OpenPose colour convention the pose controls were trained on. Poses are
written and read as OpenPose JSON (annotators.pose_json), so a pose can be edited in any OpenPose tool.
"""

import warnings
from typing import Literal

from annotators.people import Thresholds, detect_people, pose_results
from annotators.util import AnnotatorNotice, prepare
from annotators.weights import NEEDS, WeightsError, aux_detector, search_dirs, weights_on_disk

OPENPOSE_FILES = NEEDS["openpose"]


def offline_detectors():
    """What the mediapipe detector runs on, for the notice: with the COCO person detector when it is installed."""
    from annotators.person_detector import person_detector  # not at the top: `python -m` runs that module

    if person_detector():
        return "mediapipe's bundled detectors and CenterNet (no download)"
    return ("mediapipe's bundled detectors (no download; `python -m annotators.person_detector` installs CenterNet, "
            "which finds more people)")


def openpose_detector(location=None):
    return aux_detector("OpenposeDetector", OPENPOSE_FILES, location)


def detect_openpose(image, include_hand=False, include_face=False, detect_resolution=512, weights=None):
    """(poses, (H, W)) of the OpenPose networks on the resized image."""
    img = prepare(image, detect_resolution)
    return openpose_detector(weights).detect_poses(img, include_hand, include_face), img.shape[:2]


def detect_mediapipe(image, min_visibility=0.5, detect_resolution=512, include_hand=False, include_face=False):
    """(poses, (H, W)) of everyone mediapipe's bundled models find (annotators.people): no download; a point is
    drawn when the landmark model is at least `min_visibility` sure it is visible."""
    img = prepare(image, detect_resolution)
    people = detect_people(img, include_hand, include_face, Thresholds(visibility=min_visibility))
    return pose_results(people), img.shape[:2]


def draw(poses, size, hands=True, face=True):
    from controlnet_aux.open_pose import draw_poses

    return draw_poses(poses, size[0], size[1], draw_body=True, draw_hand=hands, draw_face=face)


def openpose(image, include_hand=False, include_face=False, detect_resolution=512, weights=None):
    poses, size = detect_openpose(image, include_hand, include_face, detect_resolution, weights)
    return draw(poses, size, include_hand, include_face)


def mediapipe_openpose(image, min_visibility=0.5, detect_resolution=512, include_hand=False, include_face=False):
    """OpenPose-style skeletons of everyone mediapipe's bundled models find, for when the OpenPose weights are
    not at hand."""
    poses, size = detect_mediapipe(image, min_visibility, detect_resolution, include_hand, include_face)
    return draw(poses, size, include_hand, include_face)


def pose(image, detector: Literal["auto", "openpose", "mediapipe"] = "auto", include_hand=False,
         include_face=False, detect_resolution=512, weights=None):
    """The pose app's detector: OpenPose (the release's; downloads its weights), mediapipe (offline, bundled),
    or auto: OpenPose when its weights are on disk, else mediapipe; an AnnotatorNotice says which ran and how
    many people it found."""
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
        poses, size = detect_mediapipe(image, detect_resolution=detect_resolution, include_hand=include_hand,
                                       include_face=include_face)
        name = offline_detectors()
    elif detector == "openpose":
        try:
            poses, size = detect_openpose(image, include_hand, include_face, detect_resolution, weights)
        except WeightsError as error:
            raise WeightsError(f"{error} Or choose the mediapipe detector, which needs no download.") from error
        name = "OpenPose"
    else:
        raise ValueError(f"pose detector {detector!r} is not 'auto', 'openpose' or 'mediapipe'")
    found = f"{len(poses)} {'person' if len(poses) == 1 else 'people'} found" if poses else "No person found"
    warnings.warn(f"{found} by {name}{why}.", AnnotatorNotice, stacklevel=3)
    return poses, size
