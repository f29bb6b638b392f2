"""A control's strength over the sampling steps and over the images of a batch.

Keyframes (fraction of the steps -> multiplier of the strength) are held before the first and after the last,
linear or eased (in and out) between them, as ComfyUI-Advanced-ControlNet's timestep keyframes ease them:

    "0:1, 0.4:1, 0.7:0.2"    full strength for the first 40% of the steps, down to a fifth by 70%, then held

Batch strengths give each image of the batch its own multiplier, as its latent keyframes do:

    "1, 0.6, 0.3"            the first image fully controlled, the second at 0.6, the third (and any after) 0.3
"""

import math

SCHEDULE_CURVES = ("linear", "ease")
MAX_MULTIPLIER = 2.0


def keyframes(text):
    """'fraction:multiplier, ...' -> [(fraction, multiplier)] sorted by fraction; empty text: []. A ValueError says
    what is wrong with it."""
    frames = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        fraction, sep, multiplier = part.partition(":")
        try:
            frame = (float(fraction), float(multiplier)) if sep else None
        except ValueError:
            frame = None
        if frame is None or not all(math.isfinite(v) for v in frame):
            raise ValueError(f"strength keyframe {part!r}: write fraction:multiplier, e.g. 0.5:0.3")
        if not 0.0 <= frame[0] <= 1.0 or not 0.0 <= frame[1] <= MAX_MULTIPLIER:
            raise ValueError(f"strength keyframe {part!r}: the fraction of the steps is 0 to 1 and the multiplier "
                             f"0 to {MAX_MULTIPLIER}")
        frames.append(frame)
    if len({f for f, _ in frames}) != len(frames):
        raise ValueError(f"strength keyframes {text!r} give one fraction twice")
    return sorted(frames)


def multiplier(frames, progress, curve="linear"):
    """The strength's multiplier at `progress` (the fraction of the steps done) under keyframes `frames`."""
    if not frames:
        return 1.0
    if progress <= frames[0][0]:
        return frames[0][1]
    for (start, before), (end, after) in zip(frames, frames[1:]):
        if progress <= end:
            x = (progress - start) / (end - start)
            if curve == "ease":
                x = (1 - math.cos(math.pi * x)) / 2
            return before + (after - before) * x
    return frames[-1][1]


def batch_multipliers(text, images=None):
    """'m1, m2, ...' -> one multiplier per image of the batch; an image past the list takes the last (empty text:
    []). `images` given: exactly that many. A ValueError says what is wrong with it."""
    parts = [p.strip() for p in str(text).replace(",", " ").split()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} are not numbers like '1, 0.6, 0.3' (one multiplier per image)") from None
    if not all(math.isfinite(v) and 0.0 <= v <= MAX_MULTIPLIER for v in values):
        raise ValueError(f"{text!r}: each image's multiplier is 0 to {MAX_MULTIPLIER}")
    if images is not None and values:
        if len(values) > images:
            raise ValueError(f"{text!r} gives {len(values)} multipliers for a batch of {images} images: give at "
                             f"most one per image")
        values += [values[-1]] * (images - len(values))
    return values
