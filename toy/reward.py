"""The toy's shapes as a differentiable detector, for ControlNet++'s consistency reward (training/reward.py)."""

import numpy as np
import torch
import torch.nn.functional as F

from toy.metrics import outline_interior
from toy.shapes import prompt_colors

# how sharply a pixel's soft membership of the shape follows "nearer the shape's colour than the background's":
# in units of the [-1, 1] pixel range, where the dataset's colours are at least 0.94 apart
SHAPE_REGION_SOFTNESS = 0.1


def shape_region_loss(images, batch):
    """The toy's shapes: bench/controllability.py finds the shape as the pixels nearer the prompt's shape colour
    than its background's; softened, that region is scored against the outline's interior by cross-entropy."""
    try:
        colours = [prompt_colors(prompt) for prompt in batch["txt"]]
    except ValueError as error:
        raise ValueError(f"the shapes reward reads the colours from the prompt: {error}") from None
    shape, background = (torch.tensor(np.array(c), dtype=torch.float32, device=images.device) / 127.5 - 1
                         for c in zip(*colours))
    pixels = images.float()
    to_shape = (pixels - shape[:, :, None, None]).norm(dim=1)
    to_background = (pixels - background[:, :, None, None]).norm(dim=1)
    hints = batch["hint"].cpu().numpy()
    inside = torch.from_numpy(np.stack([outline_interior(h * 255) for h in hints]))
    logits = (to_background - to_shape) / SHAPE_REGION_SOFTNESS
    return F.binary_cross_entropy_with_logits(logits, inside.to(logits), reduction="none").mean(dim=(1, 2))
