"""WebDataset tar shards: streamed in a seeded order, split across processes and workers, resumed exactly."""

import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

import train
import training.shards
from tests.helpers import TINY_V15
from tests.test_training import initial_weights, losses  # noqa: F401 (a fixture)
from toy.shapes import write_dataset
from training.data import DataError
from training.shards import ShardStream, count_samples, write_shards


def png(value, size=8):
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """23 samples in 4 shards (6, 6, 6, 5), each captioned with its number."""
    folder = tmp_path_factory.mktemp("numbered")
    with wds.ShardWriter(str(folder / "%06d.tar"), maxcount=6, verbose=0) as sink:
        for i in range(23):
            sink.write({"__key__": f"{i:04d}", "png": png(i), "hint.png": png(255 - i), "txt": f"sample {i}"})
    return str(folder / "{000000..000003}.tar")


def captions(batches):
    return [t for batch in batches for t in batch["txt"]]


def take(stream, n):
    iterator = iter(stream)
    return [next(iterator) for _ in range(n)]


def test_the_counts_from_the_headers_are_those_webdataset_reads(numbered):
    stream = ShardStream(numbered, size=8, batch_size=2)
    assert stream.counts == [6, 6, 6, 5] and stream.total == 23
    assert count_samples(stream.paths[0]) == len(list(wds.DataPipeline(wds.SimpleShardList([str(stream.paths[0])]),
                                                                        wds.tarfile_to_samples())))


def test_a_pass_resumed_on_another_number_of_processes_sees_each_sample_once(numbered):
    ranks = [ShardStream(numbered, size=8, batch_size=2, seed=5) for _ in range(2)]
    for rank, stream in enumerate(ranks):
        stream.place(0, rank, 2)
    seen = captions(take(ranks[0], 3) + take(ranks[1], 3))  # 3 steps of 2 processes: 12 samples
    alone = ShardStream(numbered, size=8, batch_size=1, seed=5)
    alone.place(12)
    seen += captions(take(alone, 11))
    assert sorted(seen) == sorted(f"sample {i}" for i in range(23))
    whole = ShardStream(numbered, size=8, batch_size=1, seed=5)
    assert captions(take(whole, 23))[12:] == seen[12:]  # and in the order of an uninterrupted run
    assert captions(take(whole, 23)) != [f"sample {i}" for i in range(23)]  # shards shuffled


def test_workers_make_the_batches_of_one_process_in_order(numbered):
    stream = ShardStream(numbered, size=8, batch_size=2, seed=1)
    stream.place(4, 1, 2)
    plain = captions(take(stream, 7))
    loaded = captions(take(DataLoader(stream, batch_size=None, num_workers=2), 7))
    assert loaded == plain and len(plain) == 14  # into the second pass


def numbers(captions):
    return [int(caption.split()[1]) for caption in captions]


def test_each_process_and_worker_reads_the_files_of_its_own_samples_only(numbered, tmp_path, monkeypatch):
    log, read_member = tmp_path / "reads", training.shards.read_member

    def logged(tar, member):  # DataLoader workers are forked: they log too
        worker = get_worker_info()
        with open(log, "a") as out:
            out.write(f"{worker.id if worker else '-'} {member.name}\n")
        return read_member(tar, member)

    def reads():  # the samples read (by the number in their keys) by each worker, in order, each file once
        by_worker = {}
        for line in log.read_text().splitlines():
            worker, name = line.split()
            by_worker.setdefault(worker, []).append(name)
        log.unlink()
        for names in by_worker.values():
            assert len(set(names)) == len(names) and len(names) % 3 == 0  # png, hint.png, txt
        return {worker: [int(name[:4]) for name in names[::3]] for worker, names in by_worker.items()}

    monkeypatch.setattr(training.shards, "read_member", logged)
    used = []
    for rank, n in [(0, 12), (1, 11)]:  # a pass of 23 samples between two processes
        stream = ShardStream(numbered, size=8, batch_size=1, seed=5)
        stream.place(0, rank, 2)
        used.append(numbers(captions(take(stream, n))))
        assert reads() == {"-": used[rank]}  # 12 and 11 of the 23, not all 23 each
    assert sorted(used[0] + used[1]) == list(range(23))

    for rank in range(2):  # two workers each: worker w reads the samples of the process's batches w, w + 2, ...
        stream = ShardStream(numbered, size=8, batch_size=2, seed=5)
        stream.place(0, rank, 2)
        batches = [numbers(batch["txt"]) for batch in take(stream, 8)]
        reads()
        loaded = [numbers(batch["txt"]) for batch in take(DataLoader(stream, batch_size=None, num_workers=2,
                                                                     multiprocessing_context="fork"), 3)]
        assert loaded == batches[:3]
        by_worker = reads()  # the loader is shut down: its workers read ahead, but only their own batches
        for worker in range(2):
            own = [n for batch in batches[worker::2] for n in batch]
            made = [n for batch in loaded[worker::2] for n in batch]
            read = by_worker[str(worker)]
            assert read == own[:len(read)] and len(read) >= len(made)


def test_a_sample_without_a_condition_is_named(tmp_path):
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "cat-01", "jpg": png(3), "txt": "a cat"})
    with pytest.raises(DataError, match=r"bad.tar sample cat-01 has files \['jpg', 'txt'\].*hint.png"):
        take(ShardStream(tmp_path / "bad.tar", size=8), 1)


def test_training_on_shards_resumes_exactly(initial_weights, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path / "shapes", 10, seed=4, size=64)
    shards = write_shards(data, tmp_path / "shards", per_shard=4)
    assert len(shards) == 3
    pattern = str(tmp_path / "shards/{000000..000002}.tar")

    def run(out, steps, *extra):
        train.main(["--config", str(TINY_V15), "--data", pattern, "--resolution", "64", "--out", str(out),
                    "--max-steps", str(steps), "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "4",
                    "--log-every", "1", "--log-images-every", "4", "--log-images", "2", *extra])

    run(tmp_path / "full", 8, "--resume", str(initial_weights))
    run(tmp_path / "second", 8, "--resume", str(tmp_path / "full/checkpoints/step-000004.ckpt"))
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert sorted(second) == [4, 5, 6, 7]
    assert [second[s] for s in sorted(second)] == [full[s] for s in sorted(second)]
    assert (tmp_path / "full/images/step-000004.png").is_file()
