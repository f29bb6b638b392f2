"""How training checkpoints reach the disk: straight into their folder (Lightning's default writes a copy under
the system's temporary folder first and moves it over, which doubles the writing and needs room in two
places), after checking there is room, and without leaving a partial file behind when the disk fills."""

import errno
import shutil
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

SPACE_MARGIN = 1.05  # pickling adds a little to the tensors' bytes


class CheckpointSpaceError(OSError):
    """A checkpoint that does not fit on its disk; the message says how much room it needs and where."""


def tensor_bytes(value):
    """The bytes of every tensor in a (nested) checkpoint."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def gib(n):
    return f"{n / 2**30:.2f} GiB"


class DirectCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing in place (callers make the write atomic: training.callbacks)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        needed = tensor_bytes(checkpoint) * SPACE_MARGIN
        free = shutil.disk_usage(path.parent).free
        if needed > free:
            raise CheckpointSpaceError(errno.ENOSPC, f"the checkpoint needs about {gib(needed)} but {path.parent} "
                                       f"has {gib(free)} free: free some space or train with --out on a larger "
                                       "disk; the checkpoints already written are intact")
        try:
            torch.save(checkpoint, path)
        except OSError as error:
            path.unlink(missing_ok=True)
            if error.errno != errno.ENOSPC:
                raise
            raise CheckpointSpaceError(errno.ENOSPC, f"the disk of {path.parent} filled up while a checkpoint "
                                       f"of about {gib(needed)} was written; nothing of it is left behind and "
                                       "the checkpoints already written are intact: free some space or train "
                                       "with --out on a larger disk") from error
