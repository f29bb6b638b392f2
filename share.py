"""The release's training scripts begin with `from share import *`. Here that imports config.py and changes
nothing else: the release used it to quiet transformers and to slice attention when saving memory, and
attention here already runs through PyTorch's memory-efficient kernels."""

import config  # noqa: F401
