"""The release's import path for DDIM: `from ldm.models.diffusion.ddim import DDIMSampler`."""

from ldm.ddim import DDIMSampler

__all__ = ["DDIMSampler"]
