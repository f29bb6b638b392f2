"""What image-to-image and inpainting start from: the picture's latent, the mask at pixel and latent size,
the inpaint control's condition, and the final composite (the scheme of the ControlNet 1.1 inpaint app).

A mask is white (or True, or 1.0) where the picture is to be repainted. Blurring it softens the seam: the
blurred mask weighs the new pixels against the picture's in the final composite, and its average over each
8x8 pixel block says how much of that latent is repainted at every step.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ldm.precision import check_finite, weights_dtype


def mask_array(mask, size):
    """A mask (H, W) or (H, W, C), uint8 / bool / float in [0, 1], white = repaint -> float32 (H, W) in [0, 1]."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.ndim != 2 or mask.shape != tuple(size):
        raise ValueError(f"the mask must be {size[1]}x{size[0]} pixels like the picture, got shape {mask.shape}")
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255.0
    if mask.dtype == np.bool_:
        return mask.astype(np.float32)
    if np.issubdtype(mask.dtype, np.floating) and np.isfinite(mask).all() and 0 <= mask.min() <= mask.max() <= 1:
        return mask.astype(np.float32)
    raise ValueError(f"the mask must be uint8, bool or float in [0, 1] (white = repaint), got {mask.dtype}")


def blurred(mask, blur):
    """The mask softened by a Gaussian of `blur` pixels (0: unchanged)."""
    if blur < 0:
        raise ValueError(f"mask blur must be >= 0 pixels, got {blur}")
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur > 0 else mask


def inpaint_condition(image, mask, blur=0.0):
    """The inpaint control's condition: the picture in [0, 1] with the repainted pixels set to -1 (float32 HWC).

    A pixel counts as repainted where the (blurred) mask is above one half, as in the 1.1 inpaint app.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the picture must be HxWx3 uint8, got {image.shape} {image.dtype}")
    condition = image.astype(np.float32) / 255.0
    condition[blurred(mask_array(mask, image.shape[:2]), blur) > 0.5] = -1.0
    return condition


def condition_picture(condition):
    """A float condition in [-1, 1] as the picture to show and save: the repainted (-1) pixels black."""
    return (np.asarray(condition).clip(0, 1) * 255).round().astype(np.uint8)


@dataclass
class Start:
    """A generation's starting picture: its latent, and where a mask says to repaint it."""

    pixels: torch.Tensor  # (N, 3, H, W) in [-1, 1], fp32
    latent: torch.Tensor  # (N, 4, H/8, W/8), fp32
    repaint: torch.Tensor | None = None  # (N, 1, H, W) in [0, 1]: how much of each pixel is new
    keep: torch.Tensor | None = None  # (N, 1, H/8, W/8): the latents the sampler keeps, 1 - repaint averaged

    def composite(self, images):
        """Decoded images in [-1, 1] -> the picture where nothing is repainted, the images where all is."""
        if self.repaint is None:
            return images
        return images * self.repaint + self.pixels * (1.0 - self.repaint)


@torch.no_grad()
def start_from(model, image, num_samples, mask=None, blur=0.0):
    """The `Start` of a generation from `image` (HWC uint8, sides multiples of 64), repainting `mask` if given.

    The latent is the VAE posterior's mean: the picture's most faithful latent, so that denoise=0 gives back
    exactly the picture through the VAE.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the starting picture must be HxWx3 uint8, got {image.shape} {image.dtype}")
    device = model.betas.device
    pixels = torch.from_numpy(image.copy()).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    pixels = pixels.repeat(num_samples, 1, 1, 1)
    dtype = weights_dtype(model.first_stage_model)
    latent = model.get_first_stage_encoding(model.encode_first_stage(pixels.to(dtype)).mode()).float()
    latent = check_finite(latent, "VAE encoder", dtype)
    if mask is None:
        return Start(pixels, latent)
    repaint = blurred(mask_array(mask, image.shape[:2]), blur)
    h, w = latent.shape[2:]
    latent_repaint = cv2.resize(repaint, (w, h), interpolation=cv2.INTER_AREA)
    as_tensor = lambda m: torch.from_numpy(m)[None, None].to(device).repeat(num_samples, 1, 1, 1)  # noqa: E731
    return Start(pixels, latent, as_tensor(repaint), 1.0 - as_tensor(latent_repaint))
