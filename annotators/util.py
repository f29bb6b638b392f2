"""Image plumbing shared by the annotators: any picture a user gives -> RGB uint8, and the release's resizing."""

import io
import os
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 8192 * 8192  # larger images are refused before decoding (decompression bombs)
MAX_SIDE = 2048  # the longest side a condition map or a generation has
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class AnnotatorNotice(UserWarning):
    """What an annotator tells the user about how it ran (a fallback it took); the apps show it on the page."""


class ImageError(ValueError):
    """An input picture that cannot be used; the message says why and what to give instead."""


def HWC3(image):
    """Any (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array -> (H, W, 3) uint8; alpha composited on white."""
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got {image.dtype}; convert it with to_rgb_uint8 first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    color, alpha = image[:, :, :3].astype(np.float32), image[:, :, 3:].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).round().astype(np.uint8)


def to_rgb_uint8(image):
    """Whatever an app or a user hands over (PIL image, 8/16-bit, float in [0, 1], bool, gray, RGBA) -> HWC3 uint8."""
    if image is None:
        raise ImageError("no image was given: upload or draw one")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if "A" in image.getbands() else image.convert("RGB"))
    image = np.asarray(image)
    if image.size == 0:
        raise ImageError(f"the image is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ImageError("the image holds NaN or infinite values")
        image = (image.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype}: give 8-bit or 16-bit RGB(A) or grayscale")
    return HWC3(image)


def read_image(source):
    """A file path or bytes -> HWC uint8 RGB; a corrupt, truncated or enormous file is refused clearly."""
    name = Path(source).name if isinstance(source, (str, Path)) else "the uploaded file"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name} is {image.width}x{image.height}; "
                                 f"images above {MAX_PIXELS} pixels are refused")
            image.load()
            image = ImageOps.exif_transpose(image)  # phones store portraits as rotated landscapes
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb_uint8(np.asarray(image).astype(np.uint16))
            return to_rgb_uint8(image)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{name} is not a readable image ({error}); give a PNG, JPEG or WebP file") from error


def resize_image(image, resolution, max_side=MAX_SIDE):
    """Scale so the shorter side is `resolution`, then round both sides to multiples of 64 (the release's rule).

    Unlike the release, a very elongated picture is scaled down further so its longer side stays within
    `max_side`, instead of asking for a gigantic canvas.
    """
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"the image has no pixels (shape {image.shape})")
    height, width = image.shape[:2]
    scale = min(float(resolution) / min(height, width), float(max_side) / max(height, width))
    new_h, new_w = (max(64, int(np.round(side * scale / 64.0)) * 64) for side in (height, width))
    interpolation = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


RESIZE_MODES = ("just_resize", "crop_and_resize", "resize_and_fill")


def fit(image, size, mode="just_resize", nearest=False):
    """A picture (or mask, map) brought to size (H, W), the A1111 extension's three ways when the shapes differ:
    stretch it ("just_resize"); scale it to cover and cut the overflow evenly ("crop_and_resize"); or scale it
    to fit inside and fill the rest with black, which no control reads as structure ("resize_and_fill")."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    image = np.asarray(image)
    height, width = size
    h, w = image.shape[:2]
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if h * w > height * width else cv2.INTER_LINEAR
    if mode == "just_resize" or (h, w) == (height, width):
        return cv2.resize(image, (width, height), interpolation=interpolation)
    scale = (max if mode == "crop_and_resize" else min)(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if mode == "crop_and_resize":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return scaled[top:top + height, left:left + width]
    out = np.zeros((height, width, *image.shape[2:]), image.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = scaled
    return out


def prepare(image, detect_resolution):
    """Any picture -> RGB uint8 at the detect resolution (shorter side, sides multiples of 64)."""
    return resize_image(to_rgb_uint8(image), detect_resolution)


def as_map(gray):
    """A one-channel detector output -> the (H, W, 3) map the controls take."""
    return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=2) if gray.ndim == 2 else gray


def device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def list_pictures(folder):
    """The pictures in a folder (by suffix), sorted; an empty or missing folder is an ImageError."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise ImageError(f"{folder} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
    return paths


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
