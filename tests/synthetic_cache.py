"""A cache of millions of synthetic rows, built or read in a process of its own so that its memory is its own.

    python -m tests.synthetic_cache build|read FOLDER ROWS   prints JSON: seconds, peak memory over the
                                                            process's start, size on disk / rows checked
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ldm.conditioning import Conditioning
from training.cache import CachedPairs, build_cache

LATENT = (8, 4, 4)  # 512 bytes of moments a row: 2 million rows are a 1 GB cache


class Listing:
    """The items of a dataset, made when asked for: a list of millions of dicts would itself be the memory."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return self.rows

    def __getitem__(self, i):
        if not 0 <= i < self.rows:
            raise IndexError(i)
        return {"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": f"caption number {i}"}


class SyntheticPairs:
    sizes = None

    def __init__(self, rows):
        self.items = Listing(rows)

    def __len__(self):
        return len(self.items)

    def image(self, i):
        return np.full((1, 1, 1), i, np.float32)

    def hint(self, i):
        return np.zeros((8, 8, 3), np.float32)


class SyntheticEncoders:
    """Moments that are the item's number, and a text encoding that is the caption's length."""

    def fingerprint(self):
        return "synthetic"

    def images(self, batch):
        return batch.reshape(-1, 1, 1, 1).expand(-1, *LATENT).contiguous()

    def dropped(self):
        return self.prompts([""])

    def prompts(self, prompts):
        lengths = torch.tensor([float(len(p)) for p in prompts]).reshape(-1, 1, 1)
        return Conditioning(lengths.expand(-1, 2, 4).contiguous())


def status_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


def resident_mib():
    return status_mib("VmRSS")


def peak_mib_since(start_mib):
    # the memory's high-water mark, not getrusage's maxrss: that one keeps the parent's size across exec
    return status_mib("VmHWM") - start_mib


def build(folder, rows):
    before, start = resident_mib(), time.perf_counter()
    build_cache(SyntheticEncoders(), SyntheticPairs(rows), folder, batch_size=512)
    disk = sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors")) / 2**20
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_mib_since(before), "disk_mib": disk}


def read(folder, rows, checked=1000):
    """Open the cache and read random rows; the peak counts the rows' pages of the memory-mapped shards too."""
    before, start = resident_mib(), time.perf_counter()
    cache = CachedPairs(SyntheticPairs(rows), folder)
    right = 0
    for i in np.random.default_rng(0).integers(0, rows, checked).tolist():
        item = cache[i]
        caption = item["conditioning"]["crossattn"]
        right += bool(item["moments"].eq(i).all() and caption.eq(len(f"caption number {i}")).all())
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_mib_since(before), "right": right,
            "checked": checked}


if __name__ == "__main__":
    torch.set_num_threads(1)  # one heap: other threads' arenas make the peak vary from run to run
    print(json.dumps({"build": build, "read": read}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))))
