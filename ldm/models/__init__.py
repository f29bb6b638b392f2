"""The release's module paths, for scripts written against it (`ldm.models.diffusion.ddim`)."""
