"""train.py on generated shapes: learning, locked weights, exact resume, caching, DDP, and bad data."""

import csv
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from ldm.checkpoint import save_safetensors
from tests.helpers import ROOT, TINY_V15, tiny_model
from toy.shapes import make_sample, write_dataset
from training.data import AnnotatedFolder, DataError, PairDataset
from training.sampler import ResumableSampler


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shapes"), 24, seed=3, size=64)


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
    """A random (not zero-output) SD with a fresh control, as tool_add_control would give."""
    model = tiny_model(TINY_V15, skip=("control_model.",))
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    save_safetensors(model.state_dict(), path)
    return path


def run(shapes, initial_weights, out, *extra, steps=8):
    args = ["--config", str(TINY_V15), "--data", str(shapes), "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "4", "--resume", str(initial_weights),
            "--log-every", "1", *extra]
    return train.main(args)


def losses(out):
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    return {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss")}


@torch.no_grad()
def held_out_loss(model, shapes):
    """The loss on fixed items, timesteps and noise: comparable before and after training."""
    items = [PairDataset(shapes)[i] for i in range(8)]
    image = torch.stack([torch.from_numpy(it["jpg"]) for it in items]).permute(0, 3, 1, 2)
    hint = torch.stack([torch.from_numpy(it["hint"]) for it in items]).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(0)
    x0 = model.get_first_stage_encoding(model.encode_first_stage(image), generator=gen)
    cond = {"c_concat": [hint], "c_crossattn": [model.get_learned_conditioning([it["txt"] for it in items])]}
    t = torch.linspace(50, 950, 8).long()
    loss, _ = model.p_losses(x0, cond, t, noise=torch.randn(x0.shape, generator=gen))
    return loss.item()


def test_training_lowers_loss_moves_zero_convs_and_keeps_locked_weights(shapes, initial_weights, tmp_path):
    from safetensors.torch import load_file

    before = load_file(initial_weights)
    trainee = run(shapes, initial_weights, tmp_path / "run", steps=30)
    model = trainee.model.eval()
    after = model.state_dict()
    locked = [k for k in before if not k.startswith("control_model.")]
    assert all(torch.equal(before[k], after[k]) for k in locked)
    assert all(after[f"control_model.zero_convs.{i}.0.weight"].abs().max() > 0 for i in range(4))
    trained_loss = held_out_loss(model, shapes)
    model.load_state_dict(before)
    assert trained_loss < 0.9 * held_out_loss(model, shapes)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())[-2:] == [
        "step-000028.ckpt", "step-000030.ckpt"]


def test_resume_reproduces_the_uninterrupted_run(shapes, initial_weights, tmp_path):
    run(shapes, initial_weights, tmp_path / "full", steps=8)
    run(shapes, initial_weights, tmp_path / "first", steps=4)
    train.main(["--config", str(TINY_V15), "--data", str(shapes), "--out", str(tmp_path / "second"),
                "--max-steps", "8", "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "4",
                "--log-every", "1", "--resume", str(tmp_path / "first/checkpoints/step-000004.ckpt")])
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert sorted(second) == [4, 5, 6, 7]
    assert [second[s] for s in sorted(second)] == [full[s] for s in sorted(second)]


def test_cached_latents_and_text_give_the_same_losses(shapes, initial_weights, tmp_path):
    run(shapes, initial_weights, tmp_path / "plain", steps=4)
    run(shapes, initial_weights, tmp_path / "cached", "--cache", steps=4)
    plain, cached = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert (tmp_path / "cached/cache/manifest.json").is_file()
    np.testing.assert_allclose([cached[s] for s in sorted(plain)], [plain[s] for s in sorted(plain)], rtol=1e-4)


def test_two_process_ddp_on_cpu(shapes, initial_weights, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(TINY_V15), "--data", str(shapes),
         "--out", str(tmp_path / "ddp"), "--max-steps", "2", "--batch-size", "2", "--ckpt-every", "2",
         "--resume", str(initial_weights), "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
         "--log-images-every", "2", "--log-images", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp/checkpoints/step-000002.ckpt").is_file()
    assert (tmp_path / "ddp/images/step-000002.png").is_file()  # every process samples, the first writes
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "ddp/checkpoints/control-000002.safetensors")
    assert exported and all(k.startswith("control_model.") for k in exported)


def test_decoder_stage_trains_the_vae_decoder_alone(shapes, initial_weights, tmp_path):
    from safetensors.torch import load_file

    before = load_file(initial_weights)
    after = run(shapes, initial_weights, tmp_path / "decoder", "--stage", "decoder", steps=3).model.state_dict()
    decoder = ("first_stage_model.decoder.", "first_stage_model.post_quant_conv.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(decoder) for k in changed)
    assert "first_stage_model.post_quant_conv.weight" in changed
    assert (tmp_path / "decoder/checkpoints/decoder-000003.safetensors").is_file()


def test_generator_is_deterministic_and_seeds_differ(tmp_path):
    a, b = write_dataset(tmp_path / "a", 5, seed=7), write_dataset(tmp_path / "b", 5, seed=7)
    for name in ("source/000004.png", "target/000004.png", "prompt.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    hint, target, prompt, meta = make_sample(7, 4)
    assert prompt == f"a {meta['color']} {meta['shape']} on a {meta['background']} background"
    assert make_sample(8, 4)[2] != prompt or not np.array_equal(make_sample(8, 4)[1], target)
    assert hint.shape == target.shape == (64, 64, 3) and set(np.unique(hint)) <= {0, 255}


def test_bad_datasets_name_the_file(tmp_path):
    root = write_dataset(tmp_path / "d", 3, seed=1)
    lines = (root / "prompt.json").read_text().splitlines()
    (root / "prompt.json").write_text("\n".join(lines[:2] + [json.dumps({"source": "source/nope.png",
                                                                        "target": "target/000002.png",
                                                                        "prompt": "x"})]))
    with pytest.raises(DataError, match=r"line 3: source file .*source/nope.png does not exist"):
        PairDataset(root)

    (root / "prompt.json").write_text("\n".join(lines))
    (root / "target/000001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"target/000001.png could not be read as an image"):
        PairDataset(root)[1]

    Image.new("RGB", (32, 32)).save(root / "source/000002.png")
    with pytest.raises(DataError, match=r"source/000002.png is 32x32 but .*target/000002.png is 64x64"):
        PairDataset(root)[2]

    (root / "prompt.json").write_text('{"source": "source/000000.png"}\n')
    with pytest.raises(DataError, match=r"line 1 lacks \['target', 'prompt'\]"):
        PairDataset(root)


def test_a_large_listing_is_not_checked_file_by_file_at_start(tmp_path, monkeypatch):
    """3000 listed pairs: a spread of 1000 is looked for before training, not every file; a missing file
    outside that spread is reported with its line when read; check_all looks for every one first."""
    from pathlib import Path

    root = write_dataset(tmp_path / "d", 1, seed=1)
    pair = json.loads((root / "prompt.json").read_text())
    lines = [json.dumps(pair)] * 3000
    lines[1501] = json.dumps({**pair, "source": "source/gone.png"})
    (root / "prompt.json").write_text("\n".join(lines))
    looked = []
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: looked.append(self) or is_file(self))
    dataset = PairDataset(root)
    assert len(dataset) == 3000 and len(looked) <= 2 * 1000 + 1
    with pytest.raises(DataError, match=r"line 1502: source file .*source/gone.png does not exist"):
        dataset[1501]
    with pytest.raises(DataError, match=r"line 1502: source file .*source/gone.png does not exist"):
        PairDataset(root, check_all=True)


def test_plain_pictures_through_an_annotator_with_validation_prompts(initial_weights, tmp_path):
    from skimage import data as photos

    folder = tmp_path / "pictures"
    folder.mkdir()
    for name, picture in (("cat", photos.chelsea()), ("coffee", photos.coffee()), ("rocket", photos.rocket())):
        Image.fromarray(picture).save(folder / f"{name}.jpg")
    (folder / "cat.txt").write_text("a cat\n")
    dataset = AnnotatedFolder(folder, "canny", 64)
    item = dataset[0]
    assert item["txt"] == "a cat" and dataset[1]["txt"] == ""
    assert item["jpg"].shape == item["hint"].shape == (64, 64, 3) and set(np.unique(item["hint"])) <= {0.0, 1.0}
    hint = tmp_path / "outline.png"
    Image.fromarray(make_sample(0, 0, 64)[0]).save(hint)
    for cached in ((), ("--cache",)):
        out = tmp_path / f"run{len(cached)}"
        train.main(["--config", str(TINY_V15), "--data", str(folder), "--annotator", "canny", "--resolution", "64",
                    "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--resume", str(initial_weights),
                    "--log-images-every", "1", "--validation-prompt", "a circle", "--validation-hint", str(hint),
                    *cached])
        grid = np.asarray(Image.open(out / "images/step-000001.png"))
        assert grid.shape == (64, 128, 3)  # one validation row: hint | sample
        assert (out / "checkpoints/step-000002.ckpt").is_file()


def test_outline_evaluation_every_n_steps(shapes, initial_weights, tmp_path):
    run(shapes, initial_weights, tmp_path / "eval", "--eval-every", "2", "--eval-count", "2", "--eval-steps", "2",
        steps=4)
    rows = list(csv.DictReader(open(next((tmp_path / "eval").glob("logs/version_*/metrics.csv")))))
    evaluated = {int(r["step"]): float(r["eval/iou"]) for r in rows if r.get("eval/iou")}
    assert sorted(evaluated) == [2, 4] and all(0.0 <= v <= 1.0 for v in evaluated.values())


def test_evaluation_of_another_condition_while_training(shapes, initial_weights, tmp_path):
    """--eval-condition canny on photos with captions: the held-out maps are made once by the annotator, and
    each evaluation re-detects Canny edges on the images and logs their F1."""
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.png")
        (photos / f"{name}.txt").write_text(f"a photo of {name}")
    run(shapes, initial_weights, tmp_path / "canny", "--eval-every", "2", "--eval-condition", "canny", "--eval-data",
        str(photos), "--eval-count", "2", "--eval-steps", "1", steps=2)
    rows = list(csv.DictReader(open(next((tmp_path / "canny").glob("logs/version_*/metrics.csv")))))
    evaluated = [float(r["eval/edge_f1"]) for r in rows if r.get("eval/edge_f1")]
    assert len(evaluated) == 1 and 0.0 <= evaluated[0] <= 1.0
    with pytest.raises(SystemExit, match="--eval-condition depth: the depth condition needs --data"):
        run(shapes, initial_weights, tmp_path / "depth", "--eval-every", "2", "--eval-condition", "depth", steps=2)


def test_the_progress_bar_counts_steps_out_of_max_steps(shapes, initial_weights, tmp_path, capsys):
    """Training by steps shows step k/--max-steps, the loss and the rate, and a resumed run starts at its step."""
    run(shapes, initial_weights, tmp_path / "bar", steps=4)
    shown = capsys.readouterr().err
    assert "4/4" in shown and "loss=" in shown and ("step/s" in shown or "s/step" in shown)
    assert "Epoch" not in shown
    run(shapes, tmp_path / "bar/checkpoints/step-000004.ckpt", tmp_path / "bar", steps=6)
    shown = capsys.readouterr().err
    assert "4/6" in shown and "6/6" in shown and "0/6" not in shown


def test_a_full_disk_stops_training_with_a_message_and_keeps_the_last_checkpoint(shapes, initial_weights,
                                                                                  tmp_path, monkeypatch):
    """Checked before writing: too little room stops the run with what is needed and free; a disk that fills
    during the write leaves no partial file. Either way the previous checkpoint loads, and nothing is written
    under the system's temporary folder."""
    import errno
    import shutil
    from collections import namedtuple

    import lightning_fabric.plugins.io.torch_io as lightning_io

    import training.checkpoint_io as checkpoint_io

    def through_temp(*args):  # Lightning's own writer: a copy under the temporary folder, then moved
        raise AssertionError("the checkpoint went through Lightning's temporary copy")

    monkeypatch.setattr(lightning_io, "_atomic_save", through_temp)
    out = tmp_path / "full"
    run(shapes, initial_weights, out, steps=4)  # step-000004.ckpt
    first = (out / "checkpoints/step-000004.ckpt").read_bytes()
    usage = namedtuple("usage", "total used free")
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SystemExit, match=r"stopped at step 8: the checkpoint needs about .* GiB but .* has 0.00 GiB "
                                         r"free"):
        run(shapes, out / "checkpoints/step-000004.ckpt", out, steps=8)
    monkeypatch.setattr(shutil, "disk_usage", real_disk_usage)

    def fills_up(checkpoint, path):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", fills_up)
    with pytest.raises(SystemExit, match="filled up while a checkpoint of about .* was written; nothing of it is left"):
        run(shapes, out / "checkpoints/step-000004.ckpt", out, steps=8)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.suffix == ".ckpt" or ".tmp" in p.name) == [
        "step-000004.ckpt"]
    assert (out / "checkpoints/step-000004.ckpt").read_bytes() == first
    torch.load(out / "checkpoints/step-000004.ckpt", weights_only=False)


def test_a_resume_onto_another_process_count_sees_each_sample_once_per_pass():
    """Two processes take alternate positions of the stream; one process resumed at the position they reached
    (batches seen by all of them, as checkpoints save it) takes the rest: each sample once per pass."""
    size, batch, steps = 24, 2, 3
    seen = []
    for rank in range(2):
        stream = iter(ResumableSampler(size, seed=5, start=0, rank=rank, world=2))
        seen += [next(stream) for _ in range(steps * batch)]
    batches_seen = steps * 2  # each of the 2 processes trained `steps` batches
    stream = iter(ResumableSampler(size, seed=5, start=batches_seen * batch, rank=0, world=1))
    seen += [next(stream) for _ in range(size - len(seen))]
    assert sorted(seen) == list(range(size))


def torchrun_two_processes(args):
    """train.py with `args` as 2 processes (DDP, gloo, CPU) launched by torchrun, as multi-machine runs are (one
    node of two here; `--nnodes N` with a rendezvous address for N machines)."""
    with socket.socket() as free:  # a port no other test's run listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
              "--master-port", str(port)]
    done = subprocess.run([*launch, str(ROOT / "train.py"), *args, "--devices", "2", "--num-nodes", "1",
                           "--accelerator", "cpu", "--strategy", "ddp", "--workers", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_two_processes_through_torchrun_then_one_continue_the_data_stream(shapes, initial_weights, tmp_path):
    """A 2-process run saves the batches both processes consumed; resumed on one process the stream continues
    from there, and the count goes on in that process's units."""
    out = tmp_path / "ddp"
    torchrun_two_processes(["--config", str(TINY_V15), "--data", str(shapes), "--out", str(out), "--max-steps", "2",
                            "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "2", "--resume",
                            str(initial_weights)])
    saved = torch.load(out / "checkpoints/step-000002.ckpt", weights_only=False)
    assert saved["batches_seen"] == 4  # 2 steps x 2 processes
    trainee = run(shapes, out / "checkpoints/step-000002.ckpt", out, steps=3)
    assert trainee.trainer.train_dataloader.sampler.start == 4 * 2  # samples both processes consumed
    assert trainee.batches_seen == 5


def test_noise_offset_adds_one_constant_per_image_and_channel(shapes, initial_weights, tmp_path):
    from cldm.loss import training_noise

    trainee = run(shapes, initial_weights, tmp_path / "offset", "--noise-offset", "0.5", steps=2)
    shape = (64, 4, 8, 8)
    offset = training_noise(shape, torch.Generator().manual_seed(0), trainee.options.noise_offset, "cpu")
    plain = training_noise(shape, torch.Generator().manual_seed(0), 0.0, "cpu")
    difference = offset - plain
    per_channel = difference[..., :1, :1]
    torch.testing.assert_close(difference, per_channel.expand(shape))
    assert 0.4 < per_channel.std().item() < 0.6
    assert losses(tmp_path / "offset")


def test_checkpoints_hold_what_is_trained_and_name_the_rest(shapes, initial_weights, tmp_path):
    run(shapes, initial_weights, tmp_path / "run", steps=4)
    checkpoint = torch.load(tmp_path / "run/checkpoints/step-000004.ckpt", weights_only=True)
    params = [k for k in checkpoint["state_dict"] if k.endswith((".weight", ".bias"))]
    assert params and all(k.startswith("model.control_model.") for k in params)
    assert checkpoint["frozen_sources"] == [str(initial_weights.resolve())]
    moved = tmp_path / "moved.safetensors"
    checkpoint["frozen_sources"] = [str(moved)]
    torch.save(checkpoint, tmp_path / "step-000004.ckpt")
    with pytest.raises(SystemExit, match="moved.safetensors, which is gone"):
        run(shapes, initial_weights, tmp_path / "again", "--resume", str(tmp_path / "step-000004.ckpt"), steps=6)


def test_mixed_precision_holds_frozen_weights_in_bf16_and_trains_fp32(shapes, initial_weights, tmp_path):
    trainee = run(shapes, initial_weights, tmp_path / "bf16", "--precision", "bf16-mixed", steps=2)
    dtypes = {name: p.dtype for name, p in trainee.model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.startswith("control_model.")} == {torch.float32}
    assert {d for n, d in dtypes.items() if not n.startswith("control_model.")} == {torch.bfloat16}
    assert np.isfinite(list(losses(tmp_path / "bf16").values())).all()


def test_eight_bit_adamw_trains_and_resumes_exactly(shapes, initial_weights, tmp_path):
    run(shapes, initial_weights, tmp_path / "full", "--optimizer", "adamw8bit", steps=4)
    run(shapes, initial_weights, tmp_path / "first", "--optimizer", "adamw8bit", steps=2)
    run(shapes, initial_weights, tmp_path / "second", "--optimizer", "adamw8bit", "--resume",
        str(tmp_path / "first/checkpoints/step-000002.ckpt"), steps=4)
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert [second[s] for s in (2, 3)] == [full[s] for s in (2, 3)]
    state = torch.load(tmp_path / "full/checkpoints/step-000004.ckpt", weights_only=True)["optimizer_states"][0]
    packed = [s.get("__bnb_optimizer_quant_state__", s) for s in state["state"].values()]  # how bitsandbytes saves
    moments = [v for s in packed for k, v in s.items() if k in ("state1", "state2")]
    eight_bit = sum(m.numel() for m in moments if m.dtype == torch.uint8)  # tensors under 4096 values stay fp32
    assert eight_bit / sum(m.numel() for m in moments) > 0.9


def test_a_cache_replaces_the_encoders(shapes, initial_weights, tmp_path):
    model = run(shapes, initial_weights, tmp_path / "lean", "--cache", steps=2).model
    assert model.cond_stage_model is None and model.first_stage_model.encoder is None
    assert model.first_stage_model.decoder is None
    sampling = run(shapes, initial_weights, tmp_path / "logged", "--cache", "--log-images-every", "2", steps=2).model
    assert sampling.first_stage_model.encoder is None
    assert sampling.cond_stage_model is not None and sampling.first_stage_model.decoder is not None


def test_updating_in_backward_trains_as_a_step_after_backward_does(shapes, initial_weights, tmp_path):
    after = run(shapes, initial_weights, tmp_path / "after", steps=3).model.control_model.state_dict()
    during = run(shapes, initial_weights, tmp_path / "during", "--step-in-backward", steps=3).model
    assert all(p.grad is None for p in during.control_model.parameters())
    for key, value in during.control_model.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=1e-5, atol=1e-6)
    assert sorted(losses(tmp_path / "during")) == [0, 1, 2]
    with pytest.raises(SystemExit, match="cannot accumulate gradients over batches"):
        run(shapes, initial_weights, tmp_path / "accumulated", "--step-in-backward", "--accumulate", "2", steps=2)


def test_cubic_timesteps_favour_the_noisiest_and_uniform_is_as_before():
    from cldm.loss import sample_timesteps

    cubic = sample_timesteps("cubic", 20_000, 1000, torch.Generator().manual_seed(0))
    assert cubic.min() >= 0 and cubic.max() <= 999 and cubic.dtype == torch.long
    # P(t >= 500) = P(u^3 <= 1/2) = 0.794; uniform would give 0.5
    assert (cubic >= 500).float().mean().item() == pytest.approx(0.794, abs=0.01)
    assert (cubic >= 900).float().mean().item() == pytest.approx(0.1 ** (1 / 3), abs=0.01)  # u^3 <= 0.1
    uniform = sample_timesteps("uniform", 64, 1000, torch.Generator().manual_seed(1))
    assert torch.equal(uniform, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1)))


def test_a_control_draws_cubic_timesteps_unless_told_otherwise(shapes, initial_weights, tmp_path):
    trainee = run(shapes, initial_weights, tmp_path / "cubic", steps=2)
    assert trainee.options.timesteps == "cubic" and np.isfinite(list(losses(tmp_path / "cubic").values())).all()
    assert run(shapes, initial_weights, tmp_path / "uniform", "--timesteps", "uniform", steps=1).options.timesteps \
        == "uniform"
    assert train.default_timesteps("base") == train.default_timesteps("vae") == "uniform"


def test_a_cosine_schedule_warms_up_decays_to_zero_and_resumes_exactly(shapes, initial_weights, tmp_path):
    from training.module import Trainee, TrainingOptions

    factor = Trainee(None, TrainingOptions(lr_schedule="cosine", warmup_steps=2, max_steps=10)).lr_factor
    assert [factor(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    schedule = ("--lr-schedule", "cosine", "--warmup-steps", "2", "--ckpt-every", "2")
    trainee = run(shapes, initial_weights, tmp_path / "full", *schedule, steps=4)
    assert trainee.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # resumed from the same run's step-2 checkpoint (a run of 2 steps would have its own, shorter, schedule)
    run(shapes, initial_weights, tmp_path / "second", *schedule, "--resume",
        str(tmp_path / "full/checkpoints/step-000002.ckpt"), steps=4)
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert sorted(second) == [2, 3] and [second[s] for s in (2, 3)] == [full[s] for s in (2, 3)]
    in_backward = run(shapes, initial_weights, tmp_path / "during", *schedule, "--step-in-backward", steps=4)
    assert in_backward.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(SystemExit, match="cosine schedule needs --max-steps"):
        run(shapes, initial_weights, tmp_path / "short", "--lr-schedule", "cosine", "--warmup-steps", "8", steps=8)


def test_the_shape_reward_is_near_zero_on_the_target_and_large_on_another_shape():
    from training.data import as_hint, as_image
    from training.reward import shape_region_loss

    items = [make_sample(0, i, size=128) for i in range(4)]  # the toy's size
    batch = {"txt": [prompt for _, _, prompt, _ in items],
             "hint": torch.from_numpy(np.stack([as_hint(hint) for hint, _, _, _ in items]))}
    targets = torch.from_numpy(np.stack([as_image(target) for _, target, _, _ in items])).permute(0, 3, 1, 2)
    assert shape_region_loss(targets, batch).max() < 1e-3
    assert shape_region_loss(targets.roll(1, dims=0), batch).min() > 1.0  # each image is another's shape
    with pytest.raises(ValueError, match="reads the colours from the prompt"):
        shape_region_loss(targets, {**batch, "txt": ["a photo"] * 4})


def test_a_consistency_reward_adds_to_the_loss_under_a_cache_and_resumes_exactly(shapes, initial_weights, tmp_path):
    # with prompts dropped, so the reward's own undropped prompts are encoded too
    reward = ("--reward", "shapes", "--reward-weight", "0.5", "--cache", "--ckpt-every", "2", "--prompt-dropout", "0.5")
    trainee = run(shapes, initial_weights, tmp_path / "full", *reward, steps=4)
    assert trainee.model.first_stage_model.decoder is not None  # kept for the reward's decoding
    rows = list(csv.DictReader(open(next((tmp_path / "full").glob("logs/version_*/metrics.csv")))))
    rewards = {int(r["step"]): float(r["train/reward"]) for r in rows if r.get("train/reward")}
    assert sorted(rewards) == list(range(4)) and all(np.isfinite(v) and v > 0 for v in rewards.values())
    # its first step draws the same timesteps and noise as a run without the reward, then adds the reward
    run(shapes, initial_weights, tmp_path / "plain", "--cache", "--prompt-dropout", "0.5", steps=1)
    assert losses(tmp_path / "full")[0] == pytest.approx(losses(tmp_path / "plain")[0] + 0.5 * rewards[0], rel=1e-5)
    run(shapes, initial_weights, tmp_path / "second", *reward, "--resume",
        str(tmp_path / "full/checkpoints/step-000002.ckpt"), steps=4)
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert sorted(second) == [2, 3] and [second[s] for s in (2, 3)] == [full[s] for s in (2, 3)]
    with pytest.raises(SystemExit, match="use it with --stage control"):
        run(shapes, initial_weights, tmp_path / "base", "--reward", "shapes", "--stage", "base", steps=1)
