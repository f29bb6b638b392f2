"""Reading and writing checkpoint files safely.

`.ckpt`/`.pth` are pickles: they load with `weights_only=True`, which refuses anything but tensors and
plain containers, so a checkpoint cannot run code. safetensors is the format we write, atomically.
"""

import json
import os
import pickle
import struct
from collections import Counter
from collections.abc import Mapping
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
    if isinstance(obj, dict):  # parts saved as dicts of their own ({"image_proj": {...}, ...}): prefix.key
        obj = {**obj, **{f"{part}.{k}": v for part, inner in obj.items() if isinstance(inner, dict)
                         for k, v in inner.items()}}
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors ({type(obj).__name__}); it is not a model checkpoint")
    return check_finite_weights(tensors, path)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}


class LazyTensors(Mapping):
    """A .safetensors file's tensors by name, each read from the file when it is asked for (with plain reads,
    not a memory map, so the file's pages never count as the process's memory): a model as large as the
    machine's memory loads one tensor at a time. Names and shapes are known without reading (`shape`);
    `renamed` gives the same tensors under other names, still unread."""

    def __init__(self, path, names=None, entries=None, start=None):
        self.path = Path(path)
        if entries is None:
            with open(self.path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            entries, start = header, 8 + size
        self.entries, self.start = entries, start
        self.names = names if names is not None else {k: k for k in entries}

    def __getitem__(self, key):
        entry = self.entries[self.names[key]]
        dtype, shape = SAFETENSORS_DTYPES.get(entry["dtype"]), entry["shape"]
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key} has dtype {entry['dtype']}, which torch cannot hold")
        begin, end = entry["data_offsets"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        data = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self.start + begin)
            if f.readinto(data) != len(data):
                raise CheckpointError(f"{self.path} is truncated: tensor {key} runs past its end")
        return torch.frombuffer(data, dtype=dtype).reshape(shape)

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def shape(self, key):
        return tuple(self.entries[self.names[key]]["shape"])

    def renamed(self, names):
        """The tensors under new names: {new name: a name here}."""
        return LazyTensors(self.path, {new: self.names[old] for new, old in names.items()}, self.entries, self.start)


def renamed(state, names):
    """A state dict's tensors under new names ({new name: a name in it}), unread if it is a LazyTensors."""
    if isinstance(state, LazyTensors):
        return state.renamed(names)
    return {new: state[old] for new, old in names.items()}


def shape_of(state, key):
    """A tensor's shape without reading it from its file."""
    return state.shape(key) if isinstance(state, LazyTensors) else tuple(state[key].shape)


def read_lazily(path):
    """A checkpoint's tensors as `read_state_dict` gives them, but a .safetensors file's read only as they are
    used (LazyTensors; their finiteness is then checked as they are read)."""
    path = check_checkpoint_file(path)
    if path.suffix.lower() != ".safetensors":
        return read_state_dict(path)
    try:
        tensors = LazyTensors(path)
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a checkpoint file?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors; it is not a model checkpoint")
    end = tensors.start + max(e["data_offsets"][1] for e in tensors.entries.values())
    if path.stat().st_size < end:
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a checkpoint file?): "
                              f"it has {path.stat().st_size} bytes, its header describes {end}")
    return tensors


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
    for key in state:
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight"):
            return int(shape_of(state, key)[1])
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
