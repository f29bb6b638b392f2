"""A procedural paired dataset in the spirit of the release tutorial's Fill50K.

Each sample is a filled shape in a named colour on a background of another named colour; the hint is the
shape's white outline on black; the prompt names both colours and the shape, e.g. "a crimson circle on a
light sky blue background". Sample i depends only on (seed, i), so any subset is reproducible.
"""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "crimson": (220, 20, 60), "dark orange": (255, 140, 0), "gold": (255, 215, 0), "forest green": (34, 139, 34),
    "lime green": (50, 205, 50), "teal": (0, 128, 128), "royal blue": (65, 105, 225), "navy": (0, 0, 128),
    "purple": (128, 0, 128), "hot pink": (255, 105, 180), "chocolate": (210, 105, 30), "black": (0, 0, 0),
    "light sky blue": (135, 206, 250), "lavender": (230, 230, 250), "beige": (245, 245, 220),
    "pale green": (152, 251, 152), "light yellow": (255, 255, 224), "light gray": (211, 211, 211),
    "misty rose": (255, 228, 225), "white": (255, 255, 255), "salmon": (250, 128, 114), "khaki": (240, 230, 140),
}
SHAPES = ("circle", "square", "triangle")
# never trained on: held-out tests of whether a control follows the outline itself rather than recalling the
# three shapes it learnt (bench/controllability.py --shapes)
NOVEL_SHAPES = ("star", "ellipse", "blob")
MIN_COLOR_DISTANCE = 120.0  # shape and background must be told apart by eye and by the benchmark


PROMPT = re.compile(r"a (?P<color>.+) (?P<shape>\w+) on a (?P<background>.+) background")


def prompt_colors(prompt):
    """("a crimson circle on a light sky blue background") -> (shape RGB, background RGB)."""
    match = PROMPT.fullmatch(prompt)
    if not match or match["color"] not in COLORS or match["background"] not in COLORS:
        raise ValueError(f"prompt {prompt!r} does not name two known colours ({sorted(COLORS)})")
    return COLORS[match["color"]], COLORS[match["background"]]


def pick_colors(rng):
    names = list(COLORS)
    while True:
        fg, bg = rng.choice(names, size=2, replace=False)
        if np.linalg.norm(np.subtract(COLORS[fg], COLORS[bg])) >= MIN_COLOR_DISTANCE:
            return str(fg), str(bg)


def shape_polygon(shape, cx, cy, r, angle, rng=None):
    """The corners of a polygonal shape of radius r about (cx, cy), turned by `angle`; a blob's wobble is drawn
    from `rng`."""
    if shape == "square":
        corners, radii = angle + np.pi / 4 + np.arange(4) * np.pi / 2, np.full(4, r)
    elif shape == "triangle":
        corners, radii = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3, np.full(3, r)
    elif shape == "star":  # five points, the inner corners at 0.45 of the outer radius
        corners, radii = angle - np.pi / 2 + np.arange(10) * np.pi / 5, np.tile([r, 0.45 * r], 5)
    else:
        around = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        if shape == "ellipse":  # the minor axis 0.45-0.8 of the major
            minor = 0.45 + 0.35 * rng.random()
            x, y = r * np.cos(around), minor * r * np.sin(around)
            corners, radii = angle + np.arctan2(y, x), np.hypot(x, y)
        elif shape == "blob":  # a smooth random closed curve: low harmonics of the radius
            wobble = sum(a * np.cos(k * around + phase)
                         for k, a, phase in zip((2, 3, 4), rng.uniform(0.05, 0.2, 3), rng.uniform(0, 2 * np.pi, 3)))
            corners, radii = angle + around, r * (1 + wobble) / (1 + wobble).max()
        else:
            raise ValueError(f"unknown shape {shape!r}: one of {SHAPES + NOVEL_SHAPES}")
    return [(cx + d * np.cos(a), cy + d * np.sin(a)) for a, d in zip(corners, radii)]


def draw(shape, size, cx, cy, r, angle, fill, outline_width, rng=None):
    """(filled RGB image on black, outline mask) for one shape; the outline is drawn on the same geometry."""
    image = Image.new("RGB", (size, size))
    outline = Image.new("L", (size, size))
    d, o = ImageDraw.Draw(image), ImageDraw.Draw(outline)
    if shape == "circle":
        box = (cx - r, cy - r, cx + r, cy + r)
        d.ellipse(box, fill=fill)
        o.ellipse(box, outline=255, width=outline_width)
    else:
        points = shape_polygon(shape, cx, cy, r, angle, rng)
        d.polygon(points, fill=fill)
        o.polygon(points, outline=255, width=outline_width)
    return image, outline


def make_sample(seed, index, size=64, shapes=SHAPES):
    """(hint HWC uint8, target HWC uint8, prompt, metadata) for sample `index` of the dataset `seed`."""
    rng = np.random.default_rng([seed, index])
    shape = str(rng.choice(shapes))
    fg, bg = pick_colors(rng)
    r = rng.uniform(0.15, 0.35) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    outline_width = max(1, size // 64)
    # a novel shape's own numbers come from a stream of their own: the three shapes' samples stay as they were
    drawn = [shape, size, cx, cy, r, angle]
    filled, outline = draw(*drawn, COLORS[fg], outline_width, np.random.default_rng([seed, index, 1]))
    mask, _ = draw(*drawn, (255, 255, 255), outline_width, np.random.default_rng([seed, index, 1]))
    inside = np.asarray(mask)[..., 0] > 127
    target = np.where(inside[..., None], np.asarray(filled), np.array(COLORS[bg], dtype=np.uint8))
    hint = np.repeat(np.asarray(outline)[..., None], 3, axis=2)
    prompt = f"a {fg} {shape} on a {bg} background"
    meta = {"shape": shape, "color": fg, "background": bg}
    return hint, target.astype(np.uint8), prompt, meta


def write_dataset(root, count, seed=0, size=64, shapes=SHAPES, start=0):
    """Write samples [start, start+count) in the release's layout: prompt.json, source/, target/."""
    root = Path(root)
    (root / "source").mkdir(parents=True, exist_ok=True)
    (root / "target").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + count):
        hint, target, prompt, meta = make_sample(seed, i, size, shapes)
        name = f"{i:06d}.png"
        Image.fromarray(hint).save(root / "source" / name)
        Image.fromarray(target).save(root / "target" / name)
        lines.append(json.dumps({"source": f"source/{name}", "target": f"target/{name}", "prompt": prompt, **meta}))
    (root / "prompt.json").write_text("\n".join(lines) + "\n")
    return root


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Write a shapes dataset in the release's layout.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES + NOVEL_SHAPES)
    args = parser.parse_args(argv)
    root = write_dataset(args.out, args.count, args.seed, args.size, tuple(args.shapes))
    print(f"wrote {args.count} samples to {root}")


if __name__ == "__main__":
    main()
