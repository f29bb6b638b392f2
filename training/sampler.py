"""Endless, seeded, resumable data order, sharded across processes."""

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Indices of a stream that shuffles the dataset anew each pass: pass e is a permutation seeded by (seed, e).

    `start` is the stream position to begin at (samples consumed by all processes so far); process `rank`
    of `world` takes positions start + rank, start + rank + world, ...
    """

    def __init__(self, size, seed=0, start=0, rank=0, world=1):
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world

    def permutation(self, epoch):
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()

    def __iter__(self):
        position = self.start + self.rank
        epoch, perm = None, None
        while True:
            e, offset = divmod(position, self.size)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield perm[offset]
            position += self.world
