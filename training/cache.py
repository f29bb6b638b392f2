"""A cache of VAE encodings and text encodings on disk, in shards, read lazily: for training with both frozen.

It stores the VAE posterior's moments (so each step still samples the latent, as without the cache) and one
text encoding per distinct prompt, plus the empty prompt's for prompt dropout. Its layout:

    cache/manifest.json               the encoders' fingerprint and the parts, written last
    cache/empty.safetensors           the empty prompt's encoding (its Conditioning's parts, one sample)
    cache/part-000000/index.safetensors
                                      what each build added: item keys -> (moments shard, row),
                                      prompt keys -> (text shard, row); 64-bit hashes, so no header limit
    cache/part-000000/moments-000000.safetensors   (rows, 8, h/8, w/8), one latent size per shard
    cache/part-000000/text-000000.safetensors      (rows, n): a prompt's Conditioning, its parts flattened and
                                                   joined (ldm.conditioning; their shapes: the empty one's)

Building adds a part holding only what the cache lacks, so data added to a dataset is encoded alone; new
encoders (their weights' fingerprint) start the cache anew. A file lock makes the first process build while
the others of a distributed run wait for it and then read what it wrote. Items are found by a hash of what was
encoded (the target's path and the size it is cropped to; the prompt's text): a picture changed in place
keeps its old encoding (delete the folder to re-encode).
"""

import hashlib
import json
import os
import shutil
import struct
from itertools import islice
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from ldm.checkpoint import atomic_path, save_safetensors
from ldm.conditioning import Conditioning
from ldm.sdxl import Conditioner

FORMAT = 3  # 3: a prompt's row is its whole Conditioning, flattened
SHARD_BYTES = 64 * 2**20  # a shard's size: few files for millions of rows; a build holds one in memory


def keys_of(texts):
    """A signed 64-bit hash of each text (collisions among 2 million keys: about 1 in 10 million)."""
    digests = b"".join(hashlib.blake2b(text.encode(), digest_size=8).digest() for text in texts)
    return np.frombuffer(digests, dtype="<i8").astype(np.int64)


def item_keys(dataset, chunk=1 << 14):
    """The keys of each item's VAE encoding (its target file and the size it is cropped to) and text encoding,
    made a chunk of items at a time: millions of small strings at once would hold hundreds of MB."""
    sizes = getattr(dataset, "sizes", None)
    crop = getattr(dataset, "size", None)  # an annotated folder's square crop; None: the picture's own size
    targets, prompts, items = [], [], iter(dataset.items)
    for start in range(0, len(dataset), chunk):
        batch = list(islice(items, chunk))
        targets.append(keys_of(f"{item['target']}|{sizes[start + k] if sizes else crop}"
                               for k, item in enumerate(batch)))
        prompts.append(keys_of(item["prompt"] for item in batch))
    empty = [np.zeros(0, np.int64)]
    return np.concatenate(targets or empty), np.concatenate(prompts or empty)


class ModelEncoders:
    """The frozen VAE encoder and text encoder of a latent diffusion model, as build_cache uses them."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, config, checkpoints, dtype=None, device="cpu"):
        """The encoders of the model that `config` and `checkpoints` make (train.py's --config and --resume), the
        rest of it freed once loaded."""
        from cldm.model import load_model

        model = load_model(config, *checkpoints, dtype=dtype, device=device)
        model.model = None
        if hasattr(model, "control_model"):
            model.control_model = None
        return cls(model)

    def fingerprint(self):
        """Changes when the encoders' weights change (a sample of every tensor, not the whole tensor)."""
        h = hashlib.sha256()
        for module in (self.model.first_stage_model, self.model.cond_stage_model):
            for name, value in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(value.detach().flatten()[:1024].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def images(self, batch):
        """(B, H, W, 3) float32 in [-1, 1] -> the posterior's moments (B, 2 * latent channels, H/8, W/8)."""
        x = batch.permute(0, 3, 1, 2).to(next(self.model.first_stage_model.parameters()).device)
        posterior = self.model.encode_first_stage(x)
        return torch.cat([posterior.mean, posterior.logvar], dim=1).cpu()

    @torch.no_grad()
    def prompts(self, prompts):
        """The prompts' Conditioning (ldm.conditioning), on the CPU; SDXL's text part alone (its vector the pooled
        embedding), which each picture's size ids complete when read (DiffusionEngine.with_size_ids)."""
        encoder = self.model.cond_stage_model
        if isinstance(encoder, Conditioner):
            return encoder.text(prompts).to("cpu")
        return self.model.condition(prompts).to("cpu")

    @torch.no_grad()
    def dropped(self):
        """A dropped prompt's encoding, for prompt dropout: the empty prompt's (SD 1.x/2.x, as the release
        trained), zero text features (SDXL, as sgm trained)."""
        encoder = self.model.cond_stage_model
        if isinstance(encoder, Conditioner):
            return encoder.text([""], zero_text=True).to("cpu")
        return self.prompts([""])


def read_manifest(folder):
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


class ShardWriter:
    """Appends rows to `prefix-NNNNNN.safetensors` files (one tensor, `rows`), each about SHARD_BYTES."""

    def __init__(self, folder, prefix):
        self.folder, self.prefix = folder, prefix
        self.shards, self.buffer, self.count = 0, None, 0

    def add(self, rows):
        """Append rows (N, ...); returns the (shard, row) of each, (N, 2). A shard holds rows of one shape."""
        places, start = [], 0
        while start < len(rows):
            if self.buffer is not None and (self.count == len(self.buffer) or self.buffer.shape[1:] != rows.shape[1:]):
                self.flush()
            if self.buffer is None:  # one block a shard: many small blocks would fragment the heap
                capacity = max(1, SHARD_BYTES // (rows[0].numel() * rows.element_size()))
                self.buffer = torch.empty((capacity, *rows.shape[1:]), dtype=rows.dtype)
            take = min(len(rows) - start, len(self.buffer) - self.count)
            self.buffer[self.count:self.count + take] = rows[start:start + take]
            places.append(np.stack([np.full(take, self.shards), np.arange(self.count, self.count + take)], axis=1))
            self.count, start = self.count + take, start + take
        return np.concatenate(places).astype(np.int32)

    def flush(self):
        """Write the rows waiting as a shard."""
        if self.count:
            save_safetensors({"rows": self.buffer[:self.count]},
                             self.folder / f"{self.prefix}-{self.shards:06d}.safetensors")
            self.shards += 1
        self.buffer, self.count = None, 0


TABLES = {"item": "moments", "prompt": "text"}  # what a key finds -> the shards holding it


class CacheIndex:
    """One kind of key ("item": the moments' keys, "prompt": the text encodings') of every part, sorted, to find
    where each encoding lies."""

    def __init__(self, folder, manifest, kind):
        self.kind, keys, places = kind, [np.zeros(0, np.int64)], [np.zeros((0, 3), np.int32)]
        for number, part in enumerate(manifest["parts"]):
            with safetensors.safe_open(str(folder / part / "index.safetensors"), "np") as index:
                keys.append(index.get_tensor(f"{kind}_keys"))
                shard, row = index.get_tensor(f"{kind}_shard"), index.get_tensor(f"{kind}_row")
                places.append(np.stack([np.full(len(shard), number, np.int32), shard, row], axis=1))
        keys = np.concatenate(keys)
        order = np.argsort(keys)
        self.keys, self.places = keys[order], np.concatenate(places)[order]

    def contains(self, keys):
        return np.isin(keys, self.keys)

    def locate(self, keys):
        """(part, shard, row) of each key, (N, 3) int32; a KeyError says how many the cache lacks."""
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = self.keys[at] == keys if len(self.keys) else np.zeros(len(keys), bool)
        if not found.all():
            raise KeyError(f"the cache lacks {int((~found).sum())} of {len(keys)} {self.kind} encodings: "
                           "build_cache adds them")
        return self.places[at]


def new_indices(keys, known):
    """Indices of the first item of each key the cache does not have."""
    missing = np.flatnonzero(~known)
    _, first = np.unique(keys[missing], return_index=True)
    return missing[np.sort(first)]


def remove_unlisted(folder, manifest):
    """Parts the manifest does not list: those of a build that stopped half way, or of other encoders."""
    for path in folder.glob("part-*"):
        if path.name not in manifest["parts"]:
            shutil.rmtree(path)


def write_empty(encoders, folder):
    """The dropped prompt's encoding (its parts' shapes lay out the text rows)."""
    save_safetensors(encoders.dropped()[0].tensors(), Path(folder) / "empty.safetensors")


def write_manifest(folder, manifest):
    with atomic_path(Path(folder) / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))


class PartWriter:
    """Writes one part of a cache: rows of moments and text encodings into their shards, then (close) the index
    that finds them by key, last, so that a part without an index is one that did not finish."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writers = {kind: ShardWriter(self.folder, table) for kind, table in TABLES.items()}
        self.keys = {kind: [] for kind in TABLES}
        self.places = {kind: [] for kind in TABLES}

    def add(self, kind, keys, rows):
        """Append the rows (N, ...) of `keys` (N int64) to the "item" (moments) or "prompt" (text) table."""
        self.keys[kind].append(np.asarray(keys, np.int64))
        self.places[kind].append(self.writers[kind].add(rows))

    def close(self):
        index = {}
        for kind, writer in self.writers.items():
            writer.flush()
            at = np.concatenate(self.places[kind]) if self.places[kind] else np.zeros((0, 2), np.int32)
            index[f"{kind}_keys"] = torch.from_numpy(np.concatenate(self.keys[kind] or [np.zeros(0, np.int64)]))
            index.update(places(kind, at))
        save_safetensors(index, self.folder / "index.safetensors")


@torch.no_grad()
def build_cache(encoders, dataset, folder, with_text=True, batch_size=16):
    """Encode what the cache in `folder` lacks of the dataset (everything, the first time); returns `folder`.

    encoders: ModelEncoders (or any object with fingerprint(), images(batch), prompts(list)). with_text=False
    skips the text encodings (when the text encoder is trained).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        fingerprint = encoders.fingerprint()
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("format") != FORMAT or manifest.get("fingerprint") != fingerprint:
            manifest = {"format": FORMAT, "fingerprint": fingerprint, "parts": []}
        remove_unlisted(folder, manifest)
        targets, texts = item_keys(dataset)
        images = by_size(dataset, new_indices(targets, CacheIndex(folder, manifest, "item").contains(targets)))
        texts = texts if with_text else texts[:0]
        prompts = new_indices(texts, CacheIndex(folder, manifest, "prompt").contains(texts))
        if with_text and not (manifest["parts"] and (folder / "empty.safetensors").is_file()):
            write_empty(encoders, folder)
        if len(images) or len(prompts):
            part = PartWriter(folder / f"part-{len(manifest['parts']):06d}")
            for at, rows in encoded(encoders.images, (dataset.image(i) for i in images), batch_size):
                part.add("item", targets[images[at]], rows)
            for at, rows in encoded(lambda texts: encoders.prompts(texts).rows(),
                                    (dataset.items[i]["prompt"] for i in prompts), batch_size):
                part.add("prompt", texts[prompts[at]], rows)
            part.close()
            manifest["parts"].append(part.folder.name)
        write_manifest(folder, manifest)
    return folder


def by_size(dataset, indices):
    """The indices with those of one (bucket) size together, so that they are encoded in batches."""
    sizes = getattr(dataset, "sizes", None)
    return indices if sizes is None else np.array(sorted(indices, key=lambda i: sizes[i]), dtype=np.int64)


def encoded(function, inputs, batch_size):
    """(positions, function(batch)) for batches of the inputs, an iterable read as batches are made (pictures of
    one size go in one batch)."""
    batch, start = [], 0
    for value in inputs:
        if batch and (len(batch) == batch_size or getattr(value, "shape", None) != getattr(batch[0], "shape", None)):
            yield np.arange(start, start + len(batch)), function(stacked(batch))
            start, batch = start + len(batch), []
        batch.append(value)
    if batch:
        yield np.arange(start, start + len(batch)), function(stacked(batch))


def stacked(batch):
    return torch.from_numpy(np.stack(batch)) if isinstance(batch[0], np.ndarray) else batch


def places(kind, at):
    return {f"{kind}_shard": torch.from_numpy(at[:, 0].copy()), f"{kind}_row": torch.from_numpy(at[:, 1].copy())}


DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class Shard:
    """The rows of a shard, each read alone from the offsets in its header. Neither safetensors' reader nor a
    memory map reads one row: the first pulls in much of the file, the second maps the multi-MB page-cache
    blocks around each row into the process, so a few thousand rows would hold gigabytes."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            header_size = struct.unpack("<Q", f.read(8))[0]
            entry = json.loads(f.read(header_size))["rows"]
        self.dtype, self.shape = DTYPES[entry["dtype"]], entry["shape"][1:]
        self.start = 8 + header_size + entry["data_offsets"][0]
        self.row_bytes = (entry["data_offsets"][1] - entry["data_offsets"][0]) // entry["shape"][0]
        self.file = None

    def __getitem__(self, row):
        if self.file is None:  # opened in the process that reads (a DataLoader worker), not the one that made it
            self.file = open(self.path, "rb", buffering=0)
        data = bytearray(os.pread(self.file.fileno(), self.row_bytes, self.start + row * self.row_bytes))
        return torch.frombuffer(data, dtype=self.dtype).reshape(self.shape)


class LatentCache:
    """A cache's encodings, read row by row as they are asked for: the moments of an item, and (with_text) a
    prompt's Conditioning parts with the dropped prompt's beside them."""

    def __init__(self, folder, with_text=True):
        self.folder, self.with_text = Path(folder), with_text
        self.manifest = read_manifest(self.folder)
        if self.manifest is None:
            raise FileNotFoundError(f"{self.folder} holds no cache: train.py --cache builds one for a dataset folder, "
                                    "python -m training.prepare --latents for shards")
        self.parts = self.manifest["parts"]
        kinds = TABLES if with_text else ["item"]
        self.index = {kind: CacheIndex(self.folder, self.manifest, kind) for kind in kinds}
        if with_text:
            self.empty = Conditioning.from_tensors(safetensors.torch.load_file(str(self.folder / "empty.safetensors")))
        self.shards = {}  # the shards this process has opened, by path

    def __getstate__(self):  # a DataLoader worker opens its own
        return {**self.__dict__, "shards": {}}

    def locate(self, kind, keys):
        """Where each key's row lies, (N, 3); a KeyError says how many the cache lacks."""
        return self.index[kind].locate(keys)

    def row(self, kind, at):
        part, shard, row = (int(v) for v in at)
        path = self.folder / self.parts[part] / f"{TABLES[kind]}-{shard:06d}.safetensors"
        if path not in self.shards:
            self.shards[path] = Shard(path)
        return self.shards[path][row]

    def encodings(self, moments_at, prompt_at=None):
        """A sample's `moments`, and with the text its `conditioning` and `empty_conditioning` ({part: tensor})."""
        out = {"moments": self.row("item", moments_at)}
        if self.with_text:
            cached = Conditioning.from_row(self.row("prompt", prompt_at), like=self.empty)
            out["conditioning"], out["empty_conditioning"] = cached.tensors(), self.empty.tensors()
        return out


class CachedPairs(Dataset):
    """The items of a PairDataset with `moments` in place of the image, and unless the text encoder is
    being trained (with_text=False), the prompt's and the empty prompt's Conditioning parts (`conditioning`,
    `empty_conditioning`: {part: tensor}) beside the prompt; read from the cache's
    shards as they are asked for."""

    def __init__(self, dataset, folder, with_text=True, with_size_ids=False):
        self.dataset, self.with_size_ids = dataset, with_size_ids  # SDXL's, from the picture's header and its crop
        self.sizes = getattr(dataset, "sizes", None)
        self.cache = LatentCache(folder, with_text)
        targets, prompts = item_keys(dataset)
        self.moments_at = self.cache.locate("item", targets)
        self.prompt_at = self.cache.locate("prompt", prompts) if with_text else [None] * len(targets)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        out = {"txt": self.dataset.items[i]["prompt"], "hint": self.dataset.hint(i),
               **self.cache.encodings(self.moments_at[i], self.prompt_at[i])}
        if self.with_size_ids:
            out["size_ids"] = self.dataset.size_ids(i)
        return out
