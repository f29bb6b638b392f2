"""Condition detectors: each maps an RGB uint8 image (H, W, 3) to a uint8 condition map (h, w, 3), for the
1.0 controls (canny ... seg) and the 1.1 ones (lineart ... tile).

Parameters and their defaults are in each function's signature (the apps build their sliders from them).
Network weights load lazily, on first use, from annotators/ckpts/, a folder given as `weights=`, or the
model hub (see annotators.weights). This package imports nothing from ldm/ or cldm/.
"""

import warnings

from annotators.depth import depth, depth_leres, depth_zoe, normal, normalbae
from annotators.edges import canny, fake_scribble, hed, mlsd, scribble
from annotators.lines import invert, lineart, lineart_anime, scribble_from_photo, softedge
from annotators.picture import REFERENCE_MODES, reference, shuffle, tile
from annotators.pose import mediapipe_openpose, openpose, pose
from annotators.seg import seg
from annotators.util import (
    HWC3,
    RESIZE_MODES,
    AnnotatorNotice,
    ImageError,
    fit,
    list_pictures,
    read_image,
    resize_image,
    to_rgb_uint8,
)
from annotators.weights import WeightsError

# controlnet-aux's import (and the detectors it builds) warn about its own dependencies: timm's moved modules
# and renamed models, its own re-registration of timm's tiny ViTs, torch.jit.script's deprecation. None of it is
# the user's to act on, and a dozen such lines on first use read as something gone wrong.
for message in (r"Importing from timm\.models\.", r"Overwriting tiny_vit_", r"`torch\.jit\.script` is deprecated",
                r"Mapping deprecated model name"):
    warnings.filterwarnings("ignore", message=message)

ANNOTATORS = {
    "canny": canny,
    "scribble": scribble,
    "fake_scribble": fake_scribble,
    "hed": hed,
    "mlsd": mlsd,
    "openpose": openpose,
    "openpose_mediapipe": mediapipe_openpose,
    "pose": pose,
    "depth": depth,
    "normal": normal,
    "seg": seg,
    "lineart": lineart,
    "lineart_anime": lineart_anime,
    "softedge": softedge,
    "scribble_from_photo": scribble_from_photo,
    "invert": invert,
    "depth_leres": depth_leres,
    "depth_zoe": depth_zoe,
    "normalbae": normalbae,
    "shuffle": shuffle,
    "tile": tile,
    **dict.fromkeys(REFERENCE_MODES, reference),
}



def condition_map(image, annotator, resolution, detect_resolution=None, nearest=False, weights=None, **params):
    """A picture -> the condition map at the generation size: the picture's `resize_image` grid at
    `resolution`, the annotator (a name of ANNOTATORS, or a detector function of the same form) run at
    `detect_resolution` (default: the same; annotators without that parameter see the picture as it is), with
    its weights from the folder `weights` when it takes any, and its map resized to that grid (`nearest` for
    maps whose exact colours matter: pose skeletons, segments). annotator=None: the picture is the map."""
    import inspect

    import cv2

    image = to_rgb_uint8(image)
    target = resize_image(image, resolution)
    if annotator is None:
        detected = image
    else:
        detect = ANNOTATORS[annotator] if isinstance(annotator, str) else annotator
        accepted = inspect.signature(detect).parameters
        if "detect_resolution" in accepted:
            params["detect_resolution"] = detect_resolution or resolution
        if weights and "weights" in accepted:
            params["weights"] = weights
        detected = detect(image, **params)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(detected, (target.shape[1], target.shape[0]), interpolation=interpolation)


__all__ = ["ANNOTATORS", "AnnotatorNotice", "HWC3", "ImageError", "REFERENCE_MODES", "RESIZE_MODES", "WeightsError",
           "condition_map", "fit", "list_pictures", "read_image", "resize_image", "to_rgb_uint8",
           *dict.fromkeys(f.__name__ for f in ANNOTATORS.values())]
