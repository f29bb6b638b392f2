"""The latent cache: sharded, read lazily, extended when data is added, built once by concurrent processes."""

import json
import multiprocessing
import subprocess
import sys

import numpy as np
import torch

from tests.helpers import ROOT, TINY_V15, tiny_model
from tests.synthetic_cache import SyntheticEncoders, SyntheticPairs
from toy.shapes import write_dataset
from training.cache import CachedPairs, ModelEncoders, build_cache
from training.data import PairDataset


def synthetic(phase, folder, rows):
    result = subprocess.run([sys.executable, "-m", "tests.synthetic_cache", phase, str(folder), str(rows)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_two_million_rows_build_and_are_read_lazily_in_little_memory(tmp_path):
    built = synthetic("build", tmp_path / "cache", 2_000_000)
    assert built["disk_mib"] > 1090  # 512 bytes of moments and 32 of text a row
    assert built["peak_mib"] < 330  # measured 179-256 (the heap's layout varies): a shard at a time (64 MiB), the keys
    read = synthetic("read", tmp_path / "cache", 2_000_000)
    assert read["right"] == read["checked"] == 1000
    assert read["peak_mib"] < 300  # measured 190-213: the keys, sorted, to place 2 million items; rows read alone


def test_added_data_is_encoded_alone_and_read_back_exactly(tmp_path):
    model = tiny_model(TINY_V15).eval()
    root = write_dataset(tmp_path / "data", 9, seed=2, size=64)
    lines = (root / "prompt.json").read_text().splitlines()
    (root / "prompt.json").write_text("\n".join(lines[:6]) + "\n")
    folder = tmp_path / "cache"
    build_cache(ModelEncoders(model), PairDataset(root), folder, batch_size=1)  # as encoded below
    first = {p.name: p.read_bytes() for p in (folder / "part-000000").iterdir()}
    (root / "prompt.json").write_text("\n".join(lines) + "\n")
    dataset = PairDataset(root)
    build_cache(ModelEncoders(model), dataset, folder, batch_size=1)
    assert {p.name: p.read_bytes() for p in (folder / "part-000000").iterdir()} == first
    added = (folder / "part-000001/index.safetensors")
    from safetensors.torch import load_file

    assert len(load_file(added)["item_keys"]) == 3
    cache = CachedPairs(dataset, folder)
    with torch.no_grad():
        for i in (0, 5, 8):
            x = torch.from_numpy(dataset[i]["jpg"])[None].permute(0, 3, 1, 2)
            posterior = model.encode_first_stage(x)
            expected = torch.cat([posterior.mean, posterior.logvar], dim=1)[0]
            assert torch.equal(cache[i]["moments"], expected)
            cached = cache[i]["conditioning"]["crossattn"]
            assert torch.equal(cached, model.get_learned_conditioning([dataset[i]["txt"]])[0])
    build_cache(ModelEncoders(model), dataset, folder)  # nothing new: no part added
    assert sorted(p.name for p in folder.glob("part-*")) == ["part-000000", "part-000001"]


class CountingEncoders(SyntheticEncoders):
    """Writes a line to `log` for every batch it encodes."""

    def __init__(self, log):
        self.log = log

    def images(self, batch):
        with open(self.log, "a") as f:
            f.write(f"{len(batch)}\n")
        return super().images(batch)


def build_in_a_process(folder, log):
    build_cache(CountingEncoders(log), SyntheticPairs(5000), folder, batch_size=1000)


def test_processes_starting_together_build_the_cache_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=build_in_a_process, args=(tmp_path / "cache", tmp_path / "log"))
                 for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert sum(int(n) for n in (tmp_path / "log").read_text().split()) == 5000  # each picture encoded once
    assert [p.name for p in (tmp_path / "cache").glob("part-*")] == ["part-000000"]
    cache = CachedPairs(SyntheticPairs(5000), tmp_path / "cache")
    assert all(cache[i]["moments"].eq(i).all() for i in np.random.default_rng(0).integers(0, 5000, 50).tolist())
