"""SDXL's conditioning beyond the text: the conditioning's vector part is the pooled text embedding (OpenCLIP
bigG's projection) followed by six size and crop ids, each through the timesteps' sinusoidal (Fourier)
features: the picture's original size (h, w), the crop's top-left corner (top, left) and the target size
(h, w), as SDXL was trained on them (sgm's ConcatTimestepEmbedderND; diffusers' add_time_ids). The UNet and
its ControlNets take that vector through their label embedding (ldm.unet.embed).
"""

from dataclasses import dataclass

import torch

from ldm.unet import timestep_embedding

ID_FEATURES = 256  # Fourier features per id in SDXL's released models (sgm's outdim, diffusers' addition_time_embed_dim)


@dataclass(frozen=True)
class SizeIds:
    """The six ids of one picture: what SDXL is told of its size and crop. A generation's defaults are those
    of an uncropped picture of the generated size (`SizeIds.of(height, width)`)."""

    original: tuple  # (height, width) of the picture before it was resized and cropped
    crop: tuple = (0, 0)  # (top, left) of the crop in the resized picture
    target: tuple | None = None  # (height, width) generated; None: the original size

    @classmethod
    def of(cls, height, width):
        return cls((height, width), (0, 0), (height, width))

    def values(self):
        return [*self.original, *self.crop, *(self.target or self.original)]

    def tensor(self, batch=1, device=None):
        """(batch, 6) float ids, in sgm's and diffusers' order."""
        return torch.tensor([self.values()] * batch, dtype=torch.float32, device=device)


def id_features(ids, width=ID_FEATURES):
    """(B, n) ids -> (B, n * width): each id through `width` sinusoidal features, cosines first."""
    batch, n = ids.shape
    return timestep_embedding(ids.flatten(), width).reshape(batch, n * width)


def vector(pooled, ids, width=ID_FEATURES):
    """SDXL's vector conditioning: the pooled text embedding (B, P) then the ids' features (B, 6 * width)."""
    return torch.cat([pooled.float(), id_features(ids.to(pooled.device), width)], dim=-1)
