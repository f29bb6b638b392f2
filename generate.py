"""Generate images from a condition image and a prompt on the command line.

    python generate.py --prompt "a house" --hint edges.png --config models/cldm_v15.yaml \
        --ckpt models/v1-5-pruned.ckpt models/control_sd15_canny.pth --out outputs/house.png

With no checkpoint given, the project's shipped default model (a small SD trained on generated shapes,
with a shape-outline ControlNet) is used, so the whole path runs offline.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cldm.defaults import load_default_model
from cldm.model import create_model, load_checkpoint
from cldm.pipeline import generate


def circle_outline(size=128):
    """A white circle outline on black: the kind of hint the default model is trained on."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    ring = (np.abs(r - 0.3 * size) <= max(1, size // 64) / 2).astype(np.uint8) * 255
    return np.repeat(ring[..., None], 3, axis=2)


def read_hint(path, size):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    w, h = (int(round(w * scale / 64)) * 64 or 64, int(round(h * scale / 64)) * 64 or 64)
    return np.asarray(image.resize((w, h), Image.LANCZOS))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--hint", help="condition image (already an edge/pose/... map); default: a circle outline")
    parser.add_argument("--config", default="models/cldm_v15.yaml", help="model yaml, used with --ckpt")
    parser.add_argument("--ckpt", nargs="*", default=[], help="checkpoints to load in order (base, then control)")
    parser.add_argument("--resolution", type=int, default=128, help="shorter side, rounded to a multiple of 64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=9.0)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--guess-mode", action="store_true")
    parser.add_argument("--seed", type=int, default=-1)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--out", default="outputs/sample.png")
    args = parser.parse_args(argv)

    if args.ckpt:
        model = create_model(args.config).eval()
        load_checkpoint(model, *args.ckpt)
    else:
        model = load_default_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    hint = read_hint(args.hint, args.resolution) if args.hint else circle_outline(args.resolution)
    images, seed = generate(model, hint, args.prompt, negative_prompt=args.negative_prompt, num_samples=args.samples,
                            steps=args.steps, guidance_scale=args.guidance, strength=args.strength,
                            guess_mode=args.guess_mode, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = out if len(images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        Image.fromarray(image).save(path)
        print(f"wrote {path} (seed {seed})")


if __name__ == "__main__":
    main()
