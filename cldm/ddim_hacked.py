"""The release's import path for its DDIM sampler: `from cldm.ddim_hacked import DDIMSampler`."""

from ldm.ddim import DDIMSampler

__all__ = ["DDIMSampler"]
