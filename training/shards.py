"""WebDataset tar shards as training data, streamed: for datasets of millions of pairs that do not fit a folder.

    python train.py --data 'shards/{000000..000099}.tar' ...
    python -m training.shards DATASET_FOLDER shards/ --per-shard 1000     (a release-layout folder into shards)

A sample is the files of one key in a tar: the image (`KEY.jpg`, `.jpeg`, `.png` or `.webp`), its condition
(`KEY.hint.png`; also `source.*`, `control.*`, `conditioning.*`, as other writers name it; or the one map of
training.prepare's samples, which `KEY.json` lists with the picture's original size) and its caption
(`KEY.txt`, optional). Pairs are scaled and centre-cropped to `size` (with aspect buckets, to the bucket
nearest their shape).

The order is a stream, as training.sampler's: each pass reads the shards in a permutation seeded by (seed, pass)
and each shard in its own order; process `rank` of `world` takes positions start + rank, start + rank + world,
..., so a resumed run continues from the samples all processes consumed, whatever their number now. Each
process, and each DataLoader worker of it, reads the files of its own samples only: it walks a shard's tar headers
(seeking past the files of others) and does not open a shard that holds none of its samples, so a pass reads the
dataset once in all. The shards' sample counts, read from their tar headers at start, let a resume skip whole
shards without reading them.
"""

import argparse
import io
import json
import re
import tarfile
from contextlib import contextmanager
from pathlib import Path

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from training.buckets import nearest_bucket, scale_and_crop, size_ids
from training.data import DataError, as_hint, as_image, collate

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CONDITION_NAMES = ("hint", "source", "control", "conditioning")


def is_shards(data):
    """Whether --data names tar shards (a path or brace pattern ending in .tar) rather than a folder."""
    return str(data).endswith(".tar")


def shard_paths(pattern):
    paths = [Path(p) for p in braceexpand.braceexpand(str(pattern))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(paths)} shards {pattern} names do not exist, e.g. {missing[0]}")
    return paths


META = re.compile(r"__[^/]*__($|/)")  # names webdataset skips


@contextmanager
def open_tar(path):
    """An uncompressed tar for random access; a small buffer, as reading a header should not read the data after it."""
    with open(path, "rb", buffering=512) as file, tarfile.open(fileobj=file, mode="r:") as tar:
        yield tar


def samples_in(tar):
    """The samples webdataset makes of a tar, from its headers alone: (key, {extension: member}) for each run of
    consecutive files sharing a key (a repeated extension starts another), their data not read."""
    key, members = None, {}
    for member in tar:
        if not member.isfile() or META.match(member.name):
            continue
        prefix, suffix = wds.tariterators.base_plus_ext(member.name)
        if prefix is None:
            continue
        suffix = suffix.lower()
        if members and (prefix != key or suffix in members):
            yield key, members
            members = {}
        key, members[suffix] = prefix, member
    if members:
        yield key, members


def read_member(tar, member):
    """The bytes of one file of a tar: the only place a shard's data is read."""
    return tar.extractfile(member).read()


def count_samples(path):
    """The samples webdataset makes of a tar (consecutive files sharing a key), from its headers alone."""
    with open_tar(path) as tar:
        return sum(1 for _ in samples_in(tar))


def crop_size(shape, size, buckets=None):
    """The (height, width) a picture of `shape` is cropped to: size x size, or the nearest of the buckets."""
    return (size, size) if buckets is None else nearest_bucket(*shape, buckets)


def cache_key(meta, size):
    """The latent cache's key of a training.prepare sample (its KEY.json) cropped to `size` (height, width): the
    picture it was made from, the size it was prepared at and the crop."""
    return f"{meta['source']}|{meta['size'][0]}x{meta['size'][1]}|{size[0]}x{size[1]}"


def picture(data, where):
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as e:
        raise DataError(f"{where} could not be read as an image ({e}); rewrite that shard") from None


def first_of(sample, names):
    return next((sample[n] for n in names if n in sample), None)


class ShardStream(IterableDataset):
    """Endless batches of the release's dict(jpg, txt, hint) from tar shards; see the module's text.

    Call `place(start, rank, world)` before iterating: `start` is the number of samples all processes consumed.
    With several DataLoader workers, worker w of W makes the process's batches w, w + W, ...
    """

    def __init__(self, pattern, size=512, batch_size=1, seed=0, buckets=None, maps=None):
        """`maps`: [(map name, control type index)] for a ControlNet-Union: each sample's `hint` is then those
        maps stacked (K, H, W, 3), its `control_types` their types (training.prepare writes such shards).
        Setting `cache` (a training.cache.LatentCache of training.prepare --latents) gives each sample its cached
        encodings in place of the picture."""
        self.maps, self.cache = maps, None
        if buckets is not None and batch_size != 1:
            raise DataError("aspect buckets from a stream need --batch-size 1 (a batch would mix buckets): use "
                            "--batch-size 1 with --accumulate for larger batches, or shards of one size")
        self.paths = shard_paths(pattern)
        self.counts = [count_samples(p) for p in self.paths]
        self.total = sum(self.counts)
        if not self.total:
            raise DataError(f"the shards {pattern} hold no samples")
        self.size, self.batch_size, self.seed, self.buckets = size, batch_size, seed, buckets
        self.place(0)

    def place(self, start, rank=0, world=1):
        self.start, self.rank, self.world = start, rank, world

    def shard_order(self, epoch):
        return torch.randperm(len(self.paths), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))

    def raw_samples(self, position, mine=None):
        """(position, undecoded sample) for the stream positions from `position` on that `mine` accepts (all when
        None), endlessly. Only their files are read; a shard holding none of them is not opened."""
        epoch, offset = divmod(position, self.total)
        while True:
            first = epoch * self.total
            for shard in self.shard_order(epoch).tolist():
                count = self.counts[shard]
                wanted = {p for p in range(first + offset, first + count) if mine is None or mine(p)}
                if wanted:  # offset >= count (all of it consumed) leaves none
                    yield from self.read_shard(shard, first, wanted)
                offset, first = max(offset - count, 0), first + count
            epoch, offset = epoch + 1, 0

    def read_shard(self, shard, first, wanted):
        """(position, sample) for the positions in `wanted` of shard `shard`, whose first sample is at `first`."""
        path, read = self.paths[shard], 0
        with open_tar(path) as tar:
            for read, (key, members) in enumerate(samples_in(tar), start=1):
                if first + read - 1 in wanted:
                    sample = {"__key__": key, "__url__": str(path)}
                    sample.update((suffix, read_member(tar, member)) for suffix, member in members.items())
                    yield first + read - 1, sample
        if read != self.counts[shard]:
            raise DataError(f"{path} holds {read} samples now but held {self.counts[shard]} when training began: "
                            "was it rewritten?")

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)

        def mine(position):  # this process's, in a batch of this worker's
            taken, rest = divmod(position - self.start - self.rank, self.world)
            return not rest and (taken // self.batch_size) % workers == worker_id

        batch = []
        for _, sample in self.raw_samples(self.start + self.rank, mine):
            batch.append(self.decode(sample))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []

    def decode(self, sample):
        where = f"{sample['__url__']} sample {sample['__key__']}"
        meta = json.loads(sample["json"]) if "json" in sample else {}
        image, conditions = first_of(sample, IMAGE_EXTENSIONS), self.condition_files(sample, meta, where)
        if image is None or conditions is None:
            raise DataError(f"{where} has files {sorted(k for k in sample if not k.startswith('__'))}: a sample "
                            f"needs an image ({'/'.join(IMAGE_EXTENSIONS)}) and a condition (hint.png)")
        conditions = [picture(c, where) for c in conditions]
        if self.cache is None:
            image = picture(image, where)
            shape = image.shape[:2]
        else:  # the latents are cached: the picture is not decoded
            shape = tuple(meta.get("size") or conditions[0].shape[:2])
        for condition in conditions:
            if condition.shape[:2] != shape:
                raise DataError(f"{where}: the image is {shape[1]}x{shape[0]} but the condition "
                                f"{condition.shape[1]}x{condition.shape[0]}")
        size = crop_size(shape, self.size, self.buckets)
        ids = size_ids(shape, size)
        if "original_size" in meta:  # the picture before training.prepare resized it
            ids[:2] = meta["original_size"]
        hints = [as_hint(scale_and_crop(condition, size, smooth=False)) for condition in conditions]
        item = {"txt": sample.get("txt", b"").decode("utf-8").strip(), "hint": np.stack(hints) if self.maps else
                hints[0], "size_ids": ids}
        if self.cache is None:
            item["jpg"] = as_image(scale_and_crop(image, size))
        else:
            item.update(self.cached(meta, size, item["txt"], where))
        if self.maps:
            item["control_types"] = np.array([kind for _, kind in self.maps])
        return item

    def cached(self, meta, size, caption, where):
        """A sample's encodings from the latent cache training.prepare wrote with its shards."""
        from training.cache import keys_of

        try:
            moments_at = self.cache.locate("item", keys_of([cache_key(meta, size)]))[0]
            prompt_at = self.cache.locate("prompt", keys_of([caption]))[0] if self.cache.with_text else None
        except (KeyError, TypeError):
            raise DataError(f"{where} has no encodings in {self.cache.folder} for a {size[1]}x{size[0]} crop: the "
                            "shards' latents were prepared for another --resolution or --buckets (train with those "
                            "python -m training.prepare --latents was given), or not prepared at all") from None
        return self.cache.encodings(moments_at, prompt_at)

    def condition_files(self, sample, meta, where):
        """The condition files of a sample: the one hint (None if it has none), or with `maps` each named map
        stacked in their order."""
        if self.maps:
            missing = [name for name, _ in self.maps if f"{name}.png" not in sample]
            if missing:
                raise DataError(f"{where} has no map {missing[0]}.png (it has {meta.get('maps')}): prepare the "
                                "shards with those annotators, or name the maps they hold in --control-types")
            return [sample[f"{name}.png"] for name, _ in self.maps]
        hint = first_of(sample, [f"{name}.{ext}" for name in CONDITION_NAMES for ext in IMAGE_EXTENSIONS])
        maps = meta.get("maps") or []  # training.prepare's samples: one map per annotator
        if hint is None and len(maps) == 1:
            hint = sample.get(f"{maps[0]}.png")
        return None if hint is None else [hint]

    def first(self, n):
        """The first n samples of the stream, decoded (for image logs)."""
        items = []
        for _, sample in self.raw_samples(0):
            if len(items) == n:
                break
            items.append(self.decode(sample))
        return items


def write_shards(folder, out, per_shard=1000):
    """A release-layout dataset folder (prompt.json, source/, target/) as tar shards of `per_shard` samples."""
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(line) for line in (folder / "prompt.json").read_text().splitlines() if line.strip()]
    with wds.ShardWriter(str(out / "%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for number, item in enumerate(lines):
            target, source = Path(item["target"]), Path(item["source"])
            sink.write({"__key__": f"{number:09d}", target.suffix.lstrip(".").lower(): (folder / target).read_bytes(),
                        f"hint{source.suffix.lower()}": (folder / source).read_bytes(), "txt": item["prompt"]})
    return sorted(out.glob("*.tar"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a dataset folder with prompt.json, source/, target/")
    parser.add_argument("out", help="the folder the shards are written to (000000.tar, 000001.tar, ...)")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    args = parser.parse_args(argv)
    shards = write_shards(args.folder, args.out, args.per_shard)
    print(f"wrote {len(shards)} shards: --data '{args.out}/{{{0:06d}..{len(shards) - 1:06d}}}.tar'")


if __name__ == "__main__":
    main()
