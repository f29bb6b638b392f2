"""Reading and writing checkpoint files safely.

`.ckpt`/`.pth` are pickles: they load with `weights_only=True`, which refuses anything but tensors and
plain containers, so a checkpoint cannot run code. safetensors is the format we write, atomically.
"""

import os
import pickle
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch

# The file checks need no torch (entry points run them before importing it); they are this module's too.
from ldm.files import (  # noqa: F401
    CONTROL_V10_SOURCE,
    CONTROL_V11_SOURCE,
    KNOWN_SOURCES,
    CheckpointError,
    check_checkpoint_file,
    missing_file_message,
    where_to_get,
)


def read_state_dict(path, location="cpu"):
    """The tensors of a checkpoint file: `.safetensors`, or a `.ckpt`/`.pth` with or without `state_dict`."""
    path = check_checkpoint_file(path)
    try:
        if path.suffix.lower() == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device=str(location))
        else:
            obj = torch.load(path, map_location=location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} is not a plain checkpoint: it holds Python objects other than tensors, which are not loaded "
            f"because unpickling them could run code ({str(e).splitlines()[0][:200]}). Re-save its state_dict, "
            "or convert it to .safetensors") from None
    except Exception as e:  # truncated zip, bad header, text file: all mean the same to the user
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a checkpoint file?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors ({type(obj).__name__}); it is not a model checkpoint")
    return check_finite_weights(tensors, path)


def check_finite_weights(state, where):
    """`state` unchanged, or an error naming the tensors that hold NaN or infinity: such weights load without
    complaint and then make every image black."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{where}: tensor {bad[0]}{more} holds NaN or infinite values, so every image would "
                              "come out black. The file is damaged or comes from a diverged training run: fetch it "
                              "again, or use an earlier checkpoint")
    return state


@contextmanager
def atomic_path(path, commit=True):
    """A temporary path beside `path` to write to; when the block succeeds it replaces `path` in one step, so a
    crash leaves the old file or the new one, never half of one. The name is the same in every process, so
    all ranks of a distributed run can be handed it; only the one with commit=True moves it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if not commit:
        yield tmp
        return
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def save_safetensors(state_dict, path, metadata=None):
    """Write a safetensors file atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)


def cross_attention_width(state, prefix):
    """768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL (the text width a UNet or control attends to), None if
    absent."""
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[1])
    return None


FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def family(width):
    """The model family a cross-attention width means."""
    return FAMILIES.get(width, f"cross-attention width {width}")


def summarize_keys(keys, depth=2, limit=8):
    """'control_model.input_blocks (96), control_model.zero_convs (24)': key groups instead of a dump."""
    groups = Counter(".".join(k.split(".")[:depth]) for k in keys)
    parts = [f"{prefix} ({n})" for prefix, n in sorted(groups.items())[:limit]]
    if len(groups) > limit:
        parts.append(f"... {len(groups) - limit} more groups")
    return ", ".join(parts)
