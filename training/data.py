"""Paired training data in the release's layout: `prompt.json` lines with source, target and prompt.

The source (hint) is fed in [0, 1], the target (image) in [-1, 1], both HWC as in the release.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from training.buckets import nearest_bucket, picture_size, scale_and_crop, size_ids


class DataError(ValueError):
    """A dataset problem; the message names the file (and prompt.json line) at fault."""


def unreadable(path, error):
    return DataError(f"{path} could not be read as an image ({type(error).__name__}: {error}); replace or remove it")


def read_rgb(path):
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise unreadable(path, e) from None


def as_hint(source):
    return source.astype(np.float32) / 255.0


def as_image(target):
    return target.astype(np.float32) / 127.5 - 1.0


def bucket_of_each(paths, buckets, known=None):
    """The aspect bucket of each picture (training.buckets), or None without buckets. `known`: (height, width)
    or None per picture, for sizes a listing states; the others are read from the pictures' headers."""
    if buckets is None:
        return None
    sizes = []
    for i, path in enumerate(paths):
        try:
            size = known[i] if known is not None and known[i] is not None else picture_size(path)
        except (UnidentifiedImageError, OSError) as e:
            raise unreadable(path, e) from None
        sizes.append(nearest_bucket(*size, buckets))
    return sizes


def stated_size(item):
    """(height, width) of a prompt.json line that states the target's "width" and "height", else None."""
    return (item["height"], item["width"]) if "width" in item and "height" in item else None


FILES_CHECKED_AT_START = 1000


class PairDataset(Dataset):
    """Items are dicts: jpg (H, W, 3) float32 in [-1, 1], txt (str), hint (H, W, 3) float32 in [0, 1], size_ids
    (6,) float32: SDXL's ids of the picture's original size and the crop it went through (buckets.size_ids).

    With `buckets` (training.buckets.bucket_sizes), each pair is scaled and centre-cropped to the bucket
    nearest its aspect ratio, listed in `sizes`; without, pairs keep their size and `sizes` is None.
    """

    def __init__(self, root, buckets=None, check_all=False):
        self.root = Path(root)
        index = self.root / "prompt.json"
        if not index.is_file():
            raise DataError(f"{index} not found: a dataset folder needs prompt.json with one JSON object per line "
                            '({"source": "source/0.png", "target": "target/0.png", "prompt": "..."})')
        self.items = []
        for number, line in enumerate(index.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{index} line {number} is not JSON: {e}") from None
            missing = [k for k in ("source", "target", "prompt") if k not in item]
            if missing:
                raise DataError(f"{index} line {number} lacks {missing}")
            self.items.append({**item, "line": number})
        if not self.items:
            raise DataError(f"{index} lists no samples")
        # a spread of the listed files is looked for now (all of them with check_all); the others say which
        # file and line when a step reads them: listing millions of files costs minutes before the first step
        step = 1 if check_all else max(1, len(self.items) // FILES_CHECKED_AT_START)
        for item in self.items[::step]:
            for key in ("source", "target"):
                if not (self.root / item[key]).is_file():
                    raise DataError(f"{index} line {item['line']}: {key} file {self.root / item[key]} does not exist")
        # lines may state "width" and "height": millions of pictures then need not be opened for their buckets
        self.sizes = bucket_of_each([self.root / item["target"] for item in self.items], buckets,
                                    [stated_size(item) for item in self.items])

    def __len__(self):
        return len(self.items)

    def hint(self, i):
        source = read_rgb(self.root / self.items[i]["source"])
        return as_hint(source if self.sizes is None else scale_and_crop(source, self.sizes[i], smooth=False))

    def size_ids(self, i):
        """The item's size_ids, from its target's header (what the latent cache reads beside its encodings)."""
        with Image.open(self.root / self.items[i]["target"]) as image:
            width, height = image.size
        return size_ids((height, width), None if self.sizes is None else self.sizes[i])

    def image(self, i):
        """The target alone, as the item's jpg (what the latent cache encodes)."""
        target = read_rgb(self.root / self.items[i]["target"])
        return as_image(target if self.sizes is None else scale_and_crop(target, self.sizes[i]))

    def __getitem__(self, i):
        item = self.items[i]
        source_path, target_path = self.root / item["source"], self.root / item["target"]
        try:
            source, target = read_rgb(source_path), read_rgb(target_path)
        except DataError:
            for key, path in (("source", source_path), ("target", target_path)):
                if not path.is_file():  # most files are not checked at start: say which line lists it
                    raise DataError(f"{self.root / 'prompt.json'} line {item['line']}: {key} file {path} does "
                                    "not exist") from None
            raise
        if source.shape != target.shape:
            raise DataError(f"{source_path} is {source.shape[1]}x{source.shape[0]} but {target_path} is "
                            f"{target.shape[1]}x{target.shape[0]}: a hint and its target must have the same size")
        ids = size_ids(target.shape[:2], None if self.sizes is None else self.sizes[i])
        if self.sizes is not None:
            source, target = scale_and_crop(source, self.sizes[i], smooth=False), scale_and_crop(target, self.sizes[i])
        return {"jpg": as_image(target), "txt": item["prompt"], "hint": as_hint(source), "size_ids": ids}


def require_one_size(pictures):
    """Raise a DataError unless the (H, W, C) arrays, about to become one batch, share a size."""
    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in pictures})
    if len(sizes) > 1:
        raise DataError(f"a batch would mix pictures of sizes {', '.join(sizes)}: train with --buckets (aspect "
                        "buckets), or --batch-size 1, or resize the dataset to one size")


def collate(items):
    require_one_size([item["hint"] for item in items])
    return default_collate(items)


class AnnotatedFolder(Dataset):
    """A folder of plain pictures made into training pairs by an annotator (annotators.ANNOTATORS).

    Each picture is centre-cropped to a square of `size` (with `buckets`: scaled and cropped to the bucket
    nearest its aspect ratio); its hint is the annotator's map of that crop, and its prompt the text of a
    sidecar file with the same stem (photo.jpg + photo.txt), else empty. Items are those of PairDataset.
    """

    def __init__(self, root, annotator, size=512, buckets=None, **annotator_params):
        from annotators import ANNOTATORS, ImageError, list_pictures

        if annotator not in ANNOTATORS:
            raise DataError(f"unknown annotator {annotator!r}; choose one of {sorted(ANNOTATORS)}")
        self.root, self.size, self.params = Path(root), size, annotator_params
        self.annotate = ANNOTATORS[annotator]
        try:
            self.paths = list_pictures(self.root)
        except ImageError as e:
            raise DataError(str(e)) from None
        # the listing PairDataset has, which the latent cache fingerprints and reads prompts from
        self.items = [{"source": f"{annotator}:{p.name}", "target": p.name, "prompt": caption(p)} for p in self.paths]
        self.sizes = bucket_of_each(self.paths, buckets)

    def __len__(self):
        return len(self.paths)

    def picture(self, i):
        from annotators import ImageError, read_image

        try:
            return read_image(str(self.paths[i]))
        except ImageError as e:
            raise DataError(f"{self.paths[i]}: {e}; replace or remove it") from None

    def crop_size(self, i):
        return (self.size, self.size) if self.sizes is None else self.sizes[i]

    def size_ids(self, i):
        return size_ids(picture_size(self.paths[i]), self.crop_size(i))

    def target(self, i):
        return scale_and_crop(self.picture(i), self.crop_size(i))

    def image(self, i):
        return as_image(self.target(i))

    def hint(self, i, target=None):
        target = self.target(i) if target is None else target
        hint = self.annotate(target, detect_resolution=min(target.shape[:2]), **self.params)
        if hint.shape != target.shape:
            import cv2

            hint = cv2.resize(hint, target.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        return as_hint(hint)

    def __getitem__(self, i):
        picture = self.picture(i)
        target = scale_and_crop(picture, self.crop_size(i))
        return {"jpg": as_image(target), "txt": self.items[i]["prompt"], "hint": self.hint(i, target),
                "size_ids": size_ids(picture.shape[:2], self.crop_size(i))}


def caption(path):
    text = path.with_suffix(".txt")
    return text.read_text().strip() if text.is_file() else ""
