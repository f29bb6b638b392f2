"""Conditions that are the picture itself, reshaped: content shuffle (1.1 shuffle), tile resampling (1.1 tile, and
instruct-pix2pix at rate 1), and the reference preprocessors (the picture as it is, which the generation's own
UNet reads: cldm.reference)."""

import cv2
import numpy as np

from annotators.util import prepare, to_rgb_uint8


def shuffle(image, shuffle_seed=0, detect_resolution=512):
    """The picture's content scrambled along a smooth random flow (grid of 256 pixels), reproducibly per seed:
    the shuffle control takes colours and style from it, not layout."""
    from controlnet_aux import ContentShuffleDetector

    img = prepare(image, detect_resolution)
    side = min(img.shape[:2])
    state = np.random.get_state()  # the detector draws from numpy's global generator: seed it, then restore
    try:
        np.random.seed(int(shuffle_seed))
        return ContentShuffleDetector()(img, detect_resolution=side, image_resolution=side, output_type="np")
    finally:
        np.random.set_state(state)


def tile(image, downsample=1.0):
    """The picture, shrunk by `downsample` (>= 1) so that the tile control has to invent the detail back;
    at 1 it is the picture itself, the condition of the tile and instruct-pix2pix controls."""
    image = to_rgb_uint8(image)
    if downsample < 1:
        raise ValueError(f"the downsample rate must be >= 1, got {downsample}")
    if downsample == 1:
        return image
    size = (max(1, round(image.shape[1] / downsample)), max(1, round(image.shape[0] / downsample)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# A1111's reference preprocessors: through the UNet's self-attention, its normalisation statistics, or both
REFERENCE_MODES = ("reference_only", "reference_adain", "reference_adain+attn")


def reference(image):
    """The picture itself: a reference unit's condition is the picture its latent is taken from."""
    return to_rgb_uint8(image)
