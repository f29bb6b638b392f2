"""Training pairs from plain pictures, at scale: pictures in, WebDataset shards out, each sample holding the
picture, its condition map for every chosen annotator, its caption and its metadata, ready for train.py.

    python -m training.prepare --input photos/ --out shards/ --annotators canny openpose_mediapipe
    python -m training.prepare --input list.parquet --caption-column text --out shards/ --annotators canny \\
        --address auto                     # on a running Ray cluster (ray start --head, then ray start --address)

The input is a folder of pictures (captions in sidecar .txt files), a list (.parquet, .csv, .jsonl) with a path
or URL column and a caption column, or WebDataset shards (a picture and an optional .txt a sample). Each picture
is resized so its shorter side is --resolution and annotated at that size; a sample is `KEY.jpg` (the picture),
`KEY.<annotator>.png` (each map), `KEY.txt` and `KEY.json` (its source, original size, size and maps).

It runs on Ray Data where Ray is installed: decoding and the cheap annotators (canny, ...) as tasks, the network
detectors as actor pools that load their weights once (on GPUs when the cluster has them), streamed, the shards
written in input order by the driver; `--engine local` (or no Ray) runs the same stages in one loop and writes the
same bytes. Shard k holds items k * per_shard ... (k + 1) * per_shard - 1 of the input: finished shards are kept
and a rerun makes only the missing ones. Pictures that cannot be read, or fail --min-size / --max-aspect, are
skipped and counted by reason.

With --latents (and the --config/--checkpoint train.py will --resume), the same pass also writes what the VAE and
the text encoders make of each sample into OUT/cache, in training.cache's format (shard k's encodings are its part
k, keyed by the sample's source, size and crop), computed from the shard's own bytes as train.py crops them;
`train.py --data 'OUT/{...}.tar' --cache` then starts training at once. An actor pool holds the encoders.
"""

import argparse
import io
import json
import os
import shutil
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from training.data import caption

CHEAP = ("canny", "invert", "scribble", "shuffle", "tile")  # no weights: tasks; the others are actor pools
JPEG_QUALITY = 95
BLOCKS_PER_WORKER = 4  # tasks of a pipeline per worker: enough to balance them, few enough to start cheaply


@dataclass(frozen=True)
class Latents:
    """What the latent cache written beside the shards is made with: the model train.py will train (its --config
    and --resume), the precision its frozen encoders will be held in, and the crops it will take (--resolution
    squares, or aspect buckets)."""
    config: str
    checkpoints: tuple
    precision: str = "32"
    buckets: bool = False
    actors: int = 1  # on Ray: how many hold the encoders


@dataclass(frozen=True)
class Options:
    annotators: tuple
    resolution: int = 512
    min_size: int = 0  # the shorter side, in the original picture
    max_aspect: float = 0.0  # longer side / shorter side; 0: any
    weights: str | None = None  # the annotators' weights folder
    latents: Latents | None = None


# -- the inputs, as items {"index", "source", "caption"} ----------------------------------------------------------

def list_items(source, caption_column="caption", path_column=None):
    """The items of an input: a folder, a list file or shards (see the module's note)."""
    source = str(source)
    if source.endswith(".tar") or "{" in source:
        return shard_items(source)
    path = Path(source)
    if path.is_dir():
        from annotators import list_pictures

        pictures = list_pictures(path)
        return [{"index": i, "source": str(p), "caption": caption(p)} for i, p in enumerate(pictures)]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    elif suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"--input {source}: give a folder of pictures, a .parquet/.csv/.jsonl list or .tar shards")
    column = path_column or next((c for c in ("path", "url", "image", "file") if rows and c in rows[0]), None)
    if not rows or column is None:
        raise ValueError(f"--input {source} has no rows with a path or url column (give --path-column)")
    base = path.parent
    return [{"index": i, "source": resolved(str(row[column]), base), "caption": str(row.get(caption_column) or "")}
            for i, row in enumerate(rows)]


def resolved(location, base):
    return location if "://" in location or Path(location).is_absolute() else str(base / location)


def shard_items(pattern):
    """Items of WebDataset shards, from their headers (shards.samples_in): each sample's picture is read from its
    tar where `load` needs it (`tar`, `offset`, `length`); only the captions are read now."""
    import braceexpand

    from training.shards import IMAGE_EXTENSIONS, open_tar, read_member, samples_in

    items = []
    for shard in braceexpand.braceexpand(pattern):
        with open_tar(shard) as tar:
            for key, members in samples_in(tar):
                picture = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
                text = read_member(tar, members["txt"]).decode("utf-8", "replace").strip() if "txt" in members else ""
                item = {"index": len(items), "source": f"{shard}:{key}", "caption": text}
                if picture is not None:
                    item.update(tar=shard, offset=picture.offset_data, length=picture.size)
                items.append(item)
    return items


def picture_bytes(row):
    """A row's picture file: from its tar (shard inputs), else from its path or URL."""
    if row.get("tar"):
        with open(row["tar"], "rb") as f:
            f.seek(row["offset"])
            return f.read(row["length"])
    return fetched(row["source"])


# -- the stages: each takes a row and returns a row; a skipped row keeps its reason ---------------------------

def load(row, options):
    """Read and check the picture; its pixels at --resolution (shorter side) in `picture`."""
    from annotators import ImageError, read_image, resize_image

    row = dict(row)
    try:
        picture = read_image(picture_bytes(row))
    except FileNotFoundError:
        return {**row, "skipped": "missing"}
    except (ImageError, OSError, ValueError):
        return {**row, "skipped": "unreadable"}
    height, width = picture.shape[:2]
    if min(height, width) < options.min_size:
        return {**row, "skipped": f"smaller than {options.min_size}"}
    if options.max_aspect and max(height, width) / min(height, width) > options.max_aspect:
        return {**row, "skipped": f"aspect above {options.max_aspect}"}
    return {**row, "original_size": [height, width], "picture": resize_image(picture, options.resolution)}


def fetched(location):
    """A picture's bytes from a path or URL."""
    if "://" in location:
        import urllib.request

        with urllib.request.urlopen(location, timeout=30) as response:
            return response.read()
    return Path(location).read_bytes()


def annotate(row, annotator, options, detect=None):
    """The row with the map of `annotator` as PNG bytes (`detect`: a detector already holding its weights)."""
    if row.get("skipped"):  # Ray Data gives every row every column: None where a row has no value
        return row
    from annotators import condition_map

    picture = row["picture"]
    condition = condition_map(picture, detect or annotator, options.resolution, weights=options.weights,
                              nearest=annotator in ("openpose", "openpose_mediapipe", "pose", "seg"))
    return {**row, f"map_{annotator}": png(condition)}


class Annotator:
    """An actor's annotator: the detector made once, its weights loaded on the first picture and kept."""

    def __init__(self, annotator, options):
        from annotators import ANNOTATORS

        self.annotator, self.options, self.detect = annotator, options, ANNOTATORS[annotator]

    def __call__(self, row):
        return annotate(row, self.annotator, self.options, self.detect)


class LatentEncoder:
    """An actor's VAE and text encoders, loaded once: each finished sample's VAE moments and caption encoding,
    computed from the sample's own files as train.py reads them (the JPEG decoded, cropped as it will crop)."""

    def __init__(self, options):
        import torch

        from training.cache import ModelEncoders
        from training.module import COMPUTE_DTYPES

        latents = options.latents
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoders = ModelEncoders.load(latents.config, latents.checkpoints,
                                           COMPUTE_DTYPES.get(latents.precision), device)
        self.buckets = None
        if latents.buckets:
            from training.buckets import bucket_sizes

            self.buckets = bucket_sizes(options.resolution)
        self.resolution = options.resolution

    def __call__(self, row):
        if row.get("skipped"):
            return row
        import torch

        from training.buckets import scale_and_crop
        from training.cache import keys_of
        from training.data import as_image
        from training.shards import cache_key, crop_size, picture

        files, meta = row["files"], json.loads(row["files"]["json"])
        image = picture(files["jpg"], row["source"])
        size = crop_size(image.shape[:2], self.resolution, self.buckets)
        with torch.no_grad():
            moments = self.encoders.images(torch.from_numpy(as_image(scale_and_crop(image, size))[None]))[0]
        caption = files["txt"].decode("utf-8").strip()  # as train.py reads it
        text = self.encoders.prompts([caption]).rows()[0]
        # float32 in the row (NumPy has no bf16), cast back when written: exact for bf16 and fp16 values
        encodings = {"item_key": int(keys_of([cache_key(meta, size)])[0]), "prompt_key": int(keys_of([caption])[0]),
                     "moments": moments.float().numpy(), "text": text.float().numpy(), "dtype": str(moments.dtype)}
        return {**row, "encodings": encodings}


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def finish(row, annotators):
    """A row made into what the driver writes: its index, and its sample's files or why it was skipped."""
    if row.get("skipped"):
        return {"index": row["index"], "skipped": row["skipped"], "files": None, "encodings": None}
    return {"index": row["index"], "skipped": None, "files": sample_files(row, annotators), "encodings": None,
            "source": row["source"]}


def sample_files(row, annotators):
    """A finished row -> the files of its sample (name suffix -> bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(row["picture"]).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    height, width = row["picture"].shape[:2]
    meta = {"source": row["source"], "original_size": [int(v) for v in row["original_size"]],
            "size": [height, width], "maps": list(annotators)}
    files = {"jpg": buffer.getvalue(), "txt": row["caption"].encode("utf-8"),
             "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
    files.update({f"{name}.png": row[f"map_{name}"] for name in annotators})
    return files


# -- writing: shards in input order, each atomically ------------------------------------------------------------

def shard_name(number):
    return f"{number:06d}.tar"


def write_shard(out, number, samples):
    """Write shard `number` (samples: (key, files)) atomically, with fixed tar metadata: the same samples give the
    same bytes."""
    tmp = out / f".{shard_name(number)}.tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for suffix, data in sorted(files.items()):  # Ray's rows may give a dict's keys in another order
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out / shard_name(number))


@dataclass
class Summary:
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    maps: int = 0
    latents: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    seconds: float = 0.0

    def line(self):
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        rate = self.read / self.seconds if self.seconds else 0.0
        latents = f" and {self.latents} latents" if self.latents else ""
        return (f"{self.read} pictures read, skipped: {skipped}; {self.maps} maps{latents} written in "
                f"{self.shards_written} shards ({self.shards_kept} finished before, kept); {rate:.2f} pictures/s")


class CacheParts:
    """The latent cache beside the shards (OUT/cache, training.cache's format): shard k's encodings are part k,
    written before the shard; the manifest lists the parts of finished shards."""

    def __init__(self, out, options, encoders):
        from training.cache import FORMAT, read_manifest, write_empty

        self.out, self.folder = out, out / "cache"
        self.folder.mkdir(exist_ok=True)
        made_with = {"resolution": options.resolution, "buckets": options.latents.buckets,
                     "precision": options.latents.precision}
        self.manifest = {"format": FORMAT, "fingerprint": encoders.fingerprint(), "prepared": made_with, "parts": []}
        before = read_manifest(self.folder)
        if before and any(before.get(k) != self.manifest[k] for k in ("format", "fingerprint", "prepared")):
            raise ValueError(f"{self.folder} holds latents made with other encoders or settings "
                             f"({before.get('prepared')}): give another --out, or delete that folder")
        write_empty(encoders, self.folder)
        self.writer, self.prompts = None, set()

    def part(self, number):
        return self.folder / f"part-{number:06d}"

    def finished(self, number):
        return (self.part(number) / "index.safetensors").is_file()

    def start(self, number):
        from training.cache import PartWriter

        folder = self.part(number)
        if folder.exists():  # a run stopped before this shard was written
            shutil.rmtree(folder)
        self.writer, self.prompts = PartWriter(folder), set()

    def add(self, encodings):
        import torch

        dtype = getattr(torch, encodings["dtype"].removeprefix("torch."))
        self.writer.add("item", [encodings["item_key"]], torch.from_numpy(encodings["moments"])[None].to(dtype))
        if encodings["prompt_key"] not in self.prompts:
            self.prompts.add(encodings["prompt_key"])
            self.writer.add("prompt", [encodings["prompt_key"]], torch.from_numpy(encodings["text"])[None].to(dtype))

    def close(self):
        """The part's index (its shard is written next, then list_finished)."""
        self.writer.close()

    def list_finished(self):
        from training.cache import write_manifest

        numbers = sorted(int(p.name.removeprefix("part-")) for p in self.folder.glob("part-*"))
        parts = [self.part(k).name for k in numbers if self.finished(k) and (self.out / shard_name(k)).is_file()]
        write_manifest(self.folder, {**self.manifest, "parts": parts})


def prepare(items, out, options, per_shard=1000, engine="auto", address=None, workers=None, gpus_per_actor=0,
            progress=True):
    """Make the shards of `items` that `out` lacks (and with options.latents their encodings); returns the
    Summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, summary = time.perf_counter(), Summary()
    encoder = LatentEncoder(options) if options.latents else None  # also the local loop's
    cache = CacheParts(out, options, encoder.encoders) if encoder else None
    shards = range((len(items) + per_shard - 1) // per_shard)
    todo = {k for k in shards if not (out / shard_name(k)).is_file() or (cache and not cache.finished(k))}
    summary.shards_kept = len(shards) - len(todo)
    wanted = [item for item in items if item["index"] // per_shard in todo]
    if use_ray(engine):
        encoder = None  # the actors load their own
        rows = run_ray(wanted, options, address, workers, gpus_per_actor)
    else:
        rows = run_local(wanted, options, encoder)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(wanted), desc="pictures", unit="picture")
    pending, current = [], None

    def write(number):
        if cache:
            cache.close()
        write_shard(out, number, pending)
        if cache:
            cache.list_finished()
        summary.shards_written += 1

    for row in rows:
        number = row["index"] // per_shard
        if number != current:
            if current is not None:
                write(current)
                pending = []
            if cache:
                cache.start(number)
            current = number
        summary.read += 1
        if row["skipped"]:
            summary.skipped[row["skipped"]] += 1
            continue
        pending.append((f"{row['index']:09d}", row["files"]))
        if cache:
            cache.add(row["encodings"])
            summary.latents += 1
        summary.maps += len(options.annotators)
    if current is not None:
        write(current)
    summary.seconds = time.perf_counter() - start
    return summary


def use_ray(engine):
    if engine == "local":
        return False
    try:
        import ray.data  # noqa: F401
    except ImportError:
        if engine == "ray":
            raise RuntimeError("--engine ray needs Ray Data: pip install 'ray[data]'") from None
        return False
    return True


def run_local(items, options, encoder=None):
    """The stages in one loop, one picture at a time (`encoder`: the LatentEncoder, with options.latents)."""
    from annotators import ANNOTATORS

    detectors = {name: ANNOTATORS[name] for name in options.annotators}
    for item in items:
        row = load(item, options)
        for name in options.annotators:
            row = annotate(row, name, options, detectors[name])
        row = finish(row, options.annotators)
        yield encoder(row) if encoder else row


def start_ray(address=None, workers=None):
    """Join the Ray cluster at `address`, or start a local one of `workers` CPUs."""
    import ray

    ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "training.prepare.one_thread"})


def one_thread():
    """A Ray worker computes on one thread (OpenCV's and torch's pools too): the workers are the parallelism,
    and threads of their own would only contend for the same cores."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def run_ray(items, options, address=None, workers=None, gpus_per_actor=0):
    """The stages on Ray Data, rows streamed back in input order."""
    import ray
    import ray.data

    if not ray.is_initialized():
        start_ray(address, workers)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the driver writes shards in input order
    context.enable_progress_bars = False
    workers = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), workers * BLOCKS_PER_WORKER)))
    dataset = dataset.map(load, fn_kwargs={"options": options})
    for name in options.annotators:
        if name in CHEAP:
            dataset = dataset.map(annotate, fn_args=(name, options))
        else:
            dataset = dataset.map(Annotator, fn_constructor_args=(name, options), compute=pool(workers),
                                  num_gpus=gpus_per_actor)
    # the samples are encoded on the workers: the driver receives their bytes and only writes
    dataset = dataset.map(finish, fn_args=(options.annotators,))
    if options.latents:
        dataset = dataset.map(LatentEncoder, fn_constructor_args=(options,), compute=pool(options.latents.actors),
                              num_gpus=gpus_per_actor)
    yield from dataset.iter_rows()


def pool(actors):
    """Ray Data's fixed pool of `actors` actors, each holding a detector's or the encoders' weights."""
    import ray.data

    return ray.data.ActorPoolStrategy(size=actors)


def main(argv=None):
    from annotators import ANNOTATORS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="a folder of pictures, a .parquet/.csv/.jsonl list, or .tar shards")
    p.add_argument("--out", required=True, help="the folder of the shards")
    p.add_argument("--annotators", nargs="+", required=True, choices=sorted(ANNOTATORS))
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--path-column", help="a list's column of paths or URLs (default: path, url, image or file)")
    p.add_argument("--resolution", type=int, default=512, help="the pictures' shorter side in the shards")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--min-size", type=int, default=0, help="skip pictures whose shorter side is below this")
    p.add_argument("--max-aspect", type=float, default=0.0, help="skip pictures longer than this times their width")
    p.add_argument("--engine", choices=["auto", "ray", "local"], default="auto")
    p.add_argument("--address", help="a Ray cluster's address (auto: the one this machine belongs to)")
    p.add_argument("--workers", type=int, help="CPUs (local Ray) and actors per network annotator")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--weights", help="the annotators' weights folder")
    latents = p.add_argument_group("latents", "also write the VAE latents and text encodings train.py would compute "
                                   "into OUT/cache, so that training on the shards with --cache starts at once")
    latents.add_argument("--latents", action="store_true")
    latents.add_argument("--config", help="the model's yaml, as train.py's --config (default: the checkpoint's family)")
    latents.add_argument("--checkpoint", nargs="+", default=[], help="its weights, as train.py's --resume")
    latents.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"],
                         help="the --precision training will use (its encoders are held in that dtype)")
    latents.add_argument("--buckets", action="store_true", help="training will use --buckets (at --resolution)")
    latents.add_argument("--latent-actors", type=int, default=1, help="on Ray: actors holding the encoders")
    args = p.parse_args(argv)
    if args.latents and not args.checkpoint:
        raise ValueError("--latents encodes with the model training will use: give its --checkpoint (and --config)")
    items = list_items(args.input, args.caption_column, args.path_column)
    latents = Latents(args.config, tuple(args.checkpoint), args.precision, args.buckets, args.latent_actors) \
        if args.latents else None
    options = Options(tuple(args.annotators), args.resolution, args.min_size, args.max_aspect, args.weights, latents)
    summary = prepare(items, args.out, options, args.per_shard, args.engine, args.address, args.workers,
                      args.gpus_per_actor)
    print(summary.line())
    return summary


if __name__ == "__main__":
    from ldm.errors import run_main

    run_main(main)
