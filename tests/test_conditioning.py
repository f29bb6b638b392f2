"""One conditioning value from the text encoders to the networks: batched, sliced, dropped and cached whole,
a vector part (SDXL's) included, without anything between opening it."""

import torch
from torch.utils.data import DataLoader

from cldm.loss import text_context
from ldm.conditioning import Conditioning
from tests.synthetic_cache import SyntheticEncoders, SyntheticPairs
from training.cache import CachedPairs, build_cache
from training.data import collate


def sample(batch, tokens=3, width=4, vector=5):
    return Conditioning(torch.randn(batch, tokens, width), torch.randn(batch, vector))


def test_batching_slicing_and_dropout_keep_every_part():
    a, b = sample(2), sample(3)
    both = Conditioning.cat([a, b])
    assert len(both) == 5 and torch.equal(both[2:].crossattn, b.crossattn) and torch.equal(both[:2].vector, a.vector)
    empty = sample(1)[0]  # one sample, no batch dimension: broadcast over the batch
    dropped = b.where(torch.tensor([True, False, True]), empty)
    assert torch.equal(dropped.vector[0], empty.vector) and torch.equal(dropped.vector[1], b.vector[1])
    assert torch.equal(dropped.crossattn[2], empty.crossattn) and torch.equal(dropped.crossattn[1], b.crossattn[1])
    row = b.rows()[1]
    again = Conditioning.from_row(row, like=empty)
    assert torch.equal(again.crossattn, b.crossattn[1]) and torch.equal(again.vector, b.vector[1])


def test_the_release_conditioning_reads_as_it_did():
    first, second = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    assert torch.equal(Conditioning.of([first]).crossattn, first) and Conditioning.of(first).vector is None
    assert torch.equal(Conditioning.of([first, second]).crossattn, torch.cat([first, second], 1))


class WithVector(SyntheticEncoders):
    """Text encodings with a vector part too, as SDXL's encoders give them."""

    def fingerprint(self):
        return "synthetic-with-vector"

    def prompts(self, prompts):
        lengths = super().prompts(prompts).crossattn[:, 0, :1]
        return Conditioning(super().prompts(prompts).crossattn, lengths.expand(-1, 6) + 0.5)


def test_a_cache_stores_and_gives_back_every_part(tmp_path):
    pairs = SyntheticPairs(6)
    build_cache(WithVector(), pairs, tmp_path / "cache")
    cache = CachedPairs(pairs, tmp_path / "cache")
    batch = next(iter(DataLoader(cache, batch_size=3, collate_fn=collate)))
    gen = torch.Generator().manual_seed(0)
    kept = text_context(None, batch, gen, prompt_dropout=0.0)
    lengths = torch.tensor([float(len(t)) for t in batch["txt"]])
    assert torch.equal(kept.crossattn[:, 0, 0], lengths) and torch.equal(kept.vector[:, 0], lengths + 0.5)
    dropped = text_context(None, batch, gen, prompt_dropout=1.0)  # every prompt the empty one
    assert (dropped.crossattn == 0).all() and (dropped.vector == 0.5).all()
