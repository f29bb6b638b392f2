"""Aspect-ratio buckets: non-square pictures keep their framing instead of being cropped to a square.

Each picture goes to the bucket nearest its aspect ratio (a size with sides that are multiples of 64 and
about resolution² pixels), is scaled to cover it and centre-cropped; every batch holds one bucket only,
so the model sees whole compositions at the shapes it will be asked to generate.
"""

import math
from collections import Counter, defaultdict

import cv2
import numpy as np
import torch
from PIL import Image

from training.sampler import ResumableSampler

MULTIPLE = 64  # the latent's 8x downsampling and the UNet's three further halvings
MAX_RATIO = 2.0
EXIF_ORIENTATION = 0x0112
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def bucket_sizes(resolution, max_ratio=MAX_RATIO):
    """(height, width) pairs, multiples of 64, of resolution²/2 to resolution² pixels, up to max_ratio
    wide or tall."""
    if resolution < MULTIPLE or resolution % MULTIPLE:
        raise ValueError(f"bucket resolution {resolution} must be a positive multiple of {MULTIPLE}")
    area = resolution * resolution
    sizes = set()
    for short in range(MULTIPLE, resolution + 1, MULTIPLE):
        long = min(area // short, int(short * max_ratio)) // MULTIPLE * MULTIPLE
        if 2 * short * long >= area:
            sizes.update({(short, long), (long, short)})
    return sorted(sizes)


def nearest_bucket(height, width, sizes):
    ratio = math.log(width / height)
    return min(sizes, key=lambda size: (abs(math.log(size[1] / size[0]) - ratio), -size[0] * size[1]))


def picture_size(path):
    """(height, width) as read_image will show the picture (EXIF rotation applied), from the header alone."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in ROTATED:
            width, height = height, width
    return height, width


def scale_and_crop(picture, size, smooth=True):
    """Scale the picture to cover `size` (height, width) and crop its centre to exactly that size.

    smooth=False (for condition maps) enlarges bilinearly instead of with Lanczos, which rings around edges.
    """
    height, width = size
    (scaled_h, scaled_w), (top, left) = crop_box(picture.shape[:2], size)
    if max(height / picture.shape[0], width / picture.shape[1]) < 1:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LANCZOS4 if smooth else cv2.INTER_LINEAR
    scaled = cv2.resize(picture, (scaled_w, scaled_h), interpolation=interpolation)
    return scaled[top:top + height, left:left + width]


def crop_box(picture_size, size):
    """((height, width) a picture of `picture_size` is scaled to so that it covers `size`, (top, left) of the
    centre crop of `size` in it)."""
    (h, w), (height, width) = picture_size, size
    scale = max(height / h, width / w)
    scaled_h, scaled_w = max(height, round(h * scale)), max(width, round(w * scale))
    return (scaled_h, scaled_w), ((scaled_h - height) // 2, (scaled_w - width) // 2)


def size_ids(picture_size, size=None):
    """SDXL's six ids of a training picture, as it was trained on them: its original (height, width), the
    (top, left) of the crop `scale_and_crop` takes to `size`, and `size` (None: the picture as it is)."""
    size = tuple(picture_size) if size is None else tuple(size)
    _, crop = crop_box(picture_size, size)
    return np.array([*picture_size, *crop, *size], dtype=np.float32)


class BucketBatchSampler(ResumableSampler):
    """Endless batches of dataset indices, each batch from one bucket; seeded and resumable.

    Pass e shuffles the dataset with seed (seed, e), cuts each bucket's members into batches (the last one of
    a bucket may be smaller) and shuffles the batches. The stream of batches is a ResumableSampler's: `start`
    is the number of batches all processes have consumed; process `rank` of `world` takes batches
    start + rank, start + rank + world, ...
    """

    def __init__(self, sizes, batch_size, seed=0, start=0, rank=0, world=1):
        self.sizes, self.batch_size = sizes, batch_size
        batches_per_pass = sum(math.ceil(n / batch_size) for n in Counter(sizes).values())
        super().__init__(batches_per_pass, seed, start, rank, world)

    def permutation(self, epoch):
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        members = defaultdict(list)
        for i in torch.randperm(len(self.sizes), generator=generator).tolist():
            members[self.sizes[i]].append(i)
        batches = [group[k:k + self.batch_size] for group in members.values()
                   for k in range(0, len(group), self.batch_size)]
        return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
