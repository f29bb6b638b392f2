"""The project's shipped default ("toy") models: a small SD-shaped base and a shape-outline ControlNet.

They are trained on the generated shapes data (models/TOY_MODEL.md says how) so that every demo, the CLI
and the tests run offline; with real SD weights the same code runs on those instead.
"""


import numpy as np

from cldm.model import ModelOptions, load_model
from ldm.files import MODELS

TOY_CONFIG = MODELS / "toy_cldm.yaml"
TOY_BASE = MODELS / "toy_sd.safetensors"
TOY_CONTROL = MODELS / "toy_control.safetensors"
TOY_PROMPT = "a crimson circle on a light sky blue background"
# how the toy samples by default: UniPC's 4 steps at guidance 2 follow unseen outlines as closely as DDIM's 20 at
# guidance 9 (IoU 0.899 against 0.877 on 200 held-out outlines) in a fifth of the steps (README: Controllability)
TOY_SAMPLING = dict(sampler="UniPC", steps=4, guidance_scale=2.0)
TOY_PHOTO_NOTE = ("This looks like a photo: the shipped toy model only draws flat shapes on plain backgrounds, so "
                  "photos come out as blobs. Try the examples, an outline, or a real control file in models/.")


def load_default_model(device="cpu", dtype=None, options=ModelOptions()):
    """The toy ControlLDM with its trained weights, in eval mode, in `dtype` (None: fp32) on `device`, built with
    `options` (cldm.model.ModelOptions)."""
    missing = [p for p in (TOY_BASE, TOY_CONTROL) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the default model files {[str(p) for p in missing]} are missing; they ship with "
                                "the repository (git checkout models/), or rebuild them as models/TOY_MODEL.md says")
    return load_model(TOY_CONFIG, TOY_BASE, TOY_CONTROL, dtype=dtype, device=device, options=options)


def circle_outline(size=128):
    """A white circle outline on black: the kind of hint the default model is trained on."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    ring = (np.abs(r - 0.3 * size) <= max(1, size // 64) / 2).astype(np.uint8) * 255
    return np.repeat(ring[..., None], 3, axis=2)


def star_outline(size=128, points=5):
    """A white star outline on black, drawn as a user would draw one."""
    import cv2

    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 0.38, 0.16) * size
    corners = np.stack([size / 2 + radii * np.cos(angles), size / 2 - radii * np.sin(angles)], axis=1)
    star = np.zeros((size, size, 3), np.uint8)
    cv2.polylines(star, [corners.round().astype(np.int32)], True, (255, 255, 255), max(1, size // 64))
    return star


def scribble_outline(size=128, seed=0):
    """A wobbly closed loop, white on black: a quick scribble of a blob."""
    import cv2

    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = size * (0.3 + 0.05 * rng.standard_normal(len(angles)))
    loop = np.stack([size / 2 + radii * np.cos(angles), size / 2 + radii * np.sin(angles)], axis=1)
    scribble = np.zeros((size, size, 3), np.uint8)
    cv2.polylines(scribble, [loop.round().astype(np.int32)], True, (255, 255, 255), max(1, size // 48))
    return scribble


def looks_like_a_photo(picture):
    """Whether a picture (HW or HWC uint8) has a photo's many grey levels: outlines, drawings and flat shapes,
    JPEG-compressed or not, use a dozen at most (at 128 px, levels covering 0.2% of the pixels each); the
    scikit-image photos use 30 to 200."""
    import cv2

    grey = picture if picture.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(picture[..., :3]), cv2.COLOR_RGB2GRAY)
    scale = 128 / max(grey.shape)
    small = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    counts = np.bincount(small.ravel(), minlength=256)
    return int((counts >= 0.002 * small.size).sum()) > 24
