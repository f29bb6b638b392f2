"""train.py on SDXL (tiny config, random base, a control made by tool_add_control): the loss falls, the locked
weights stay, a resumed run repeats the uninterrupted one, and each picture's size and crop reach SDXL's ids."""

import numpy as np
import pytest
import torch

import train
from ldm.checkpoint import save_safetensors
from tests.test_sdxl import TINY_XL_YAML
from tests.test_training import losses
from toy.shapes import write_dataset


@pytest.fixture(scope="module")
def xl_weights(tmp_path_factory):
    """The tiny SDXL base (random) and a fresh full control for it, as tool_add_control writes them."""
    import tool_add_control
    from cldm.model import create_model
    from ldm.diffusion import SCHEDULE_BUFFERS
    from tests.helpers import randomize

    folder = tmp_path_factory.mktemp("xl")
    torch.manual_seed(0)
    base = randomize(create_model(TINY_XL_YAML).eval())
    save_safetensors({k: v for k, v in base.state_dict().items() if k not in (*SCHEDULE_BUFFERS, "logvar")},
                     folder / "base.safetensors")
    tool_add_control.main([str(folder / "base.safetensors"), str(folder / "control.safetensors"), "--config",
                           str(TINY_XL_YAML)])
    return folder / "control.safetensors"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("xl_shapes"), 12, seed=4, size=64)


def run(shapes, weights, out, *extra, steps=4):
    return train.main(["--config", str(TINY_XL_YAML), "--data", str(shapes), "--out", str(out), "--max-steps",
                       str(steps), "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "2",
                       "--log-every", "1", "--prompt-dropout", "0.5", "--resume", str(weights), *extra])


def test_an_sdxl_controlnet_trains_keeps_its_base_and_resumes_exactly(shapes, xl_weights, tmp_path):
    from safetensors.torch import load_file

    before = load_file(xl_weights)
    trainee = run(shapes, xl_weights, tmp_path / "full")
    after = trainee.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("control_model."))
    assert after["control_model.zero_convs.1.0.weight"].abs().max() > 0  # the control learned
    run(shapes, xl_weights, tmp_path / "first", steps=2)
    run(shapes, xl_weights, tmp_path / "second", "--resume", str(tmp_path / "first/checkpoints/step-000002.ckpt"))
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert sorted(second) == [2, 3] and [second[s] for s in (2, 3)] == [full[s] for s in (2, 3)]
    assert all(np.isfinite(list(full.values())))


def test_each_picture_s_size_and_crop_are_its_ids_and_dropped_prompts_are_zeros(tmp_path):
    from PIL import Image

    from cldm.loss import text_context
    from tests.test_sdxl import tiny_controlled_xl
    from training.buckets import crop_box, size_ids
    from training.data import AnnotatedFolder

    wide = np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    item = AnnotatedFolder(tmp_path, "canny", size=32)[0]
    assert item["size_ids"].tolist() == [60, 100, 0, 10, 32, 32]  # scaled to 32x53, the centre 32 columns
    assert crop_box((60, 100), (32, 32)) == ((32, 53), (0, 10))
    assert size_ids((48, 64)).tolist() == [48, 64, 0, 0, 48, 64]  # a picture used as it is
    model, _ = tiny_controlled_xl(seed=1)
    ids = torch.tensor([[60, 100, 0, 10, 32, 32], [64, 64, 0, 0, 64, 64]], dtype=torch.float32)
    batch = {"txt": ["a red circle", "a blue square"], "size_ids": ids}
    kept = text_context(model, batch, torch.Generator().manual_seed(0), prompt_dropout=0.0)
    dropped = text_context(model, batch, torch.Generator().manual_seed(0), prompt_dropout=1.0)
    whole = model.conditioner(batch["txt"], ids)
    assert torch.equal(kept.crossattn, whole.crossattn) and torch.equal(kept.vector, whole.vector)
    pooled = model.conditioner.embedders[1].model.text_projection.shape[1]
    assert dropped.crossattn.abs().max() == 0 and dropped.vector[:, :pooled].abs().max() == 0
    assert torch.equal(dropped.vector[:, pooled:], whole.vector[:, pooled:])  # the ids are never dropped


def test_an_sdxl_cache_keeps_the_text_and_gives_the_same_losses(shapes, xl_weights, tmp_path):
    """The cache holds each prompt's text part (both encoders' features and the pooled embedding) and a dropped
    prompt's zeros; each picture's size ids join them as read: the losses equal those of the encoders."""
    run(shapes, xl_weights, tmp_path / "plain", steps=3)
    run(shapes, xl_weights, tmp_path / "cached", "--cache", steps=3)
    plain, cached = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert (tmp_path / "cached/cache/manifest.json").is_file() and len(plain) == 3
    np.testing.assert_allclose([cached[s] for s in sorted(plain)], [plain[s] for s in sorted(plain)], rtol=1e-4)


def test_a_mid_sdxl_control_trains_from_shards_in_bf16_with_8_bit_adamw_checkpointing_and_image_logs(
        shapes, xl_weights, tmp_path):
    """The rest of what train.py does for SD 1.5, on SDXL: a reduced ("mid") control made by tool_add_control,
    WebDataset shards, mixed precision, 8-bit AdamW, gradient checkpointing, image logs, --eval-every."""
    import tool_add_control
    from training.shards import write_shards

    write_shards(shapes, tmp_path / "shards", per_shard=6)
    mid = tmp_path / "mid.safetensors"
    tool_add_control.main([str(xl_weights.parent / "base.safetensors"), str(mid), "--config", str(TINY_XL_YAML),
                           "--layout", "mid"])
    trainee = train.main(["--config", str(TINY_XL_YAML), "--data", str(tmp_path / "shards/{000000..000001}.tar"),
                          "--resolution", "64", "--out", str(tmp_path / "run"), "--max-steps", "3", "--batch-size",
                          "2", "--ckpt-every", "3", "--log-every", "1", "--precision", "bf16-mixed", "--optimizer",
                          "adamw8bit", "--gradient-checkpointing", "--log-images-every", "3", "--log-images", "1",
                          "--eval-every", "3", "--eval-count", "1", "--eval-steps", "2", "--resume", str(mid)])
    assert len(trainee.model.control_model.input_blocks[4][1].transformer_blocks) == 1  # mid: 1 block, full: 2
    assert all(np.isfinite(list(losses(tmp_path / "run").values())))
    assert list((tmp_path / "run").rglob("*.png")) and (tmp_path / "run/checkpoints/step-000003.ckpt").is_file()
    logged = (next((tmp_path / "run").glob("logs/version_*/metrics.csv"))).read_text()
    assert "eval/iou" in logged.splitlines()[0]  # --eval-every measured the SDXL control on held-out outlines


def test_a_union_net_trains_on_random_subsets_of_each_pictures_maps_and_resumes_exactly(tmp_path):
    """training.prepare's shards with two maps a picture; each sample trains on a random non-empty subset of them,
    drawn from the run's seed, so a resumed run repeats the uninterrupted one."""
    from cldm.loss import condition_subsets
    from tests.test_union import tiny_union_xl
    from training.prepare import Options, list_items, prepare

    pictures = write_dataset(tmp_path / "pairs", 8, seed=5, size=64) / "target"
    prepare(list_items(pictures), tmp_path / "shards", Options(("canny", "scribble"), 64), per_shard=8,
            engine="local", progress=False)
    model, _ = tiny_union_xl(seed=3)
    save_safetensors(model.state_dict(), tmp_path / "union.safetensors")
    common = ["--config", str(TINY_XL_YAML), "--data", str(tmp_path / "shards/000000.tar"), "--resolution", "64",
              "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "2", "--log-every", "1",
              "--control-types", "canny", "scribble"]
    trainee = train.main([*common, "--out", str(tmp_path / "full"), "--max-steps", "4", "--resume",
                          str(tmp_path / "union.safetensors")])
    assert not torch.equal(trainee.model.control_model.task_embedding, model.control_model.task_embedding)
    train.main([*common, "--out", str(tmp_path / "second"), "--max-steps", "4", "--resume",
                str(tmp_path / "full/checkpoints/step-000002.ckpt")])
    full, second = losses(tmp_path / "full"), losses(tmp_path / "second")
    assert [second[s] for s in (2, 3)] == [full[s] for s in (2, 3)]
    types = torch.tensor([[3, 2]] * 400)
    kept = condition_subsets(types, torch.Generator().manual_seed(0))
    assert (kept >= 0).any(dim=1).all()  # never none
    counts = {pattern: int(((kept >= 0) == torch.tensor(pattern)).all(dim=1).sum()) for pattern in
              ((True, False), (False, True), (True, True))}
    assert all(70 < n < 190 for n in counts.values())  # expected 150, 150, 100: 3/8, 3/8, 1/4 of the time


def test_latents_prepared_with_the_shards_train_as_the_pictures_do_and_resume_by_shard(xl_weights, tmp_path):
    """training.prepare --latents writes each sample's VAE moments and caption encoding (both encoders' features,
    the pooled embedding) beside the shards, computed from the shard's own bytes, on Ray as in the plain loop;
    train.py --cache on those shards gives the losses of the uncached run, and a killed run redoes only the shard
    whose encodings were not finished."""
    import json

    from training.cache import LatentCache
    from training.prepare import Latents, Options, list_items, prepare

    pictures = write_dataset(tmp_path / "pairs", 10, seed=6, size=64) / "target"
    for line in (tmp_path / "pairs/prompt.json").read_text().splitlines():
        item = json.loads(line)
        (tmp_path / "pairs" / item["target"]).with_suffix(".txt").write_text(item["prompt"])
    options = Options(("canny",), 64, latents=Latents(str(TINY_XL_YAML), (str(xl_weights),)))
    items = list_items(pictures)
    local = prepare(items, tmp_path / "local", options, per_shard=4, engine="local", progress=False)
    prepare(items, tmp_path / "ray", options, per_shard=4, engine="ray", workers=2, progress=False)
    assert local.shards_written == 3 and local.read == 10
    for shard in ("000000.tar", "000001.tar", "000002.tar"):
        assert (tmp_path / "local" / shard).read_bytes() == (tmp_path / "ray" / shard).read_bytes()
    caches = [LatentCache(tmp_path / engine / "cache") for engine in ("local", "ray")]
    assert caches[0].manifest["parts"] == caches[1].manifest["parts"] == ["part-000000", "part-000001",
                                                                         "part-000002"]
    for kind in ("item", "prompt"):
        assert sorted(caches[0].index[kind].keys) == sorted(caches[1].index[kind].keys)
        assert len(caches[0].index[kind].keys) == 10  # every caption differs
        for key, place in zip(caches[0].index[kind].keys, caches[0].index[kind].places):
            other = caches[1].locate(kind, np.array([key]))[0]  # 2 threads here, 1 a Ray worker: rounding differs
            torch.testing.assert_close(caches[0].row(kind, place), caches[1].row(kind, other), rtol=1e-4, atol=1e-5)

    common = ["--config", str(TINY_XL_YAML), "--data", str(tmp_path / "local/{000000..000002}.tar"), "--resolution",
              "64", "--batch-size", "2", "--max-steps", "3", "--ckpt-every", "3", "--log-every", "1",
              "--prompt-dropout", "0.5", "--resume", str(xl_weights)]
    train.main([*common, "--out", str(tmp_path / "plain")])
    train.main([*common, "--out", str(tmp_path / "cached"), "--cache"])
    plain, cached = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert len(plain) == 3 and not (tmp_path / "cached/cache").exists()  # the shards' cache was read
    np.testing.assert_allclose([cached[s] for s in sorted(plain)], [plain[s] for s in sorted(plain)], rtol=1e-4)

    (tmp_path / "local/cache/part-000001/index.safetensors").unlink()  # killed before shard 1 was finished
    again = prepare(items, tmp_path / "local", options, per_shard=4, engine="local", progress=False)
    assert (again.shards_kept, again.shards_written, again.read) == (2, 1, 4)
    assert LatentCache(tmp_path / "local/cache").manifest["parts"] == caches[0].manifest["parts"]
    manifest = json.loads((tmp_path / "ray/cache/manifest.json").read_text())
    (tmp_path / "ray/cache/manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))
    with pytest.raises(SystemExit, match="another VAE or text encoder"):
        train.main([*common, "--out", str(tmp_path / "other"), "--cache-dir", str(tmp_path / "ray/cache")])
    with pytest.raises(SystemExit, match="latents for --resolution 64: train with that"):
        train.main([*common, "--out", str(tmp_path / "larger"), "--cache", "--resolution", "128"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_an_sdxl_run_of_two_processes_resumes_on_one_where_both_stopped(shapes, xl_weights, tmp_path):
    """Two processes through torchrun train a tiny SDXL control on shards; resumed on one process the stream
    continues after the samples both consumed, from the control weights they saved."""
    from tests.test_training import torchrun_two_processes
    from training.shards import write_shards

    write_shards(shapes, tmp_path / "shards", per_shard=6)
    common = ["--config", str(TINY_XL_YAML), "--data", str(tmp_path / "shards/{000000..000001}.tar"), "--resolution",
              "64", "--batch-size", "2", "--learning-rate", "1e-3", "--ckpt-every", "2", "--log-every", "1"]
    out = tmp_path / "ddp"
    torchrun_two_processes([*common, "--out", str(out), "--max-steps", "2", "--resume", str(xl_weights)])
    saved = torch.load(out / "checkpoints/step-000002.ckpt", weights_only=True)
    assert saved["batches_seen"] == 4  # 2 steps x 2 processes
    resumed = train.main([*common, "--out", str(tmp_path / "one"), "--max-steps", "2", "--resume",
                          str(out / "checkpoints/step-000002.ckpt")])  # restores, trains no further step
    weights = resumed.model.state_dict()
    assert all(torch.equal(weights[k.removeprefix("model.")], v) for k, v in saved["state_dict"].items())
    third = train.main([*common, "--out", str(tmp_path / "third"), "--max-steps", "3", "--resume",
                        str(out / "checkpoints/step-000002.ckpt")])
    assert third.trainer.train_dataloader.dataset.start == 4 * 2 and third.batches_seen == 5
    assert np.isfinite(losses(tmp_path / "third")[2])


def test_a_control_trains_over_an_int8_locked_unet_and_resumes_exactly(shapes, xl_weights, tmp_path):
    """--quantize-frozen int8 holds the locked UNet's linear layers in int8 (torchao): the control still learns, the
    losses stay near those over the unquantized UNet, checkpoints leave the int8 weights out, and a resumed run
    repeats the uninterrupted one."""
    pytest.importorskip("torchao")
    run(shapes, xl_weights, tmp_path / "plain", steps=1)
    plain = losses(tmp_path / "plain")
    trainee = run(shapes, xl_weights, tmp_path / "full", "--quantize-frozen", "int8")
    unet = trainee.model.model.diffusion_model
    linears = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all("Int8" in type(m.weight).__name__ for m in linears)
    assert not any("Int8" in type(p).__name__ for p in trainee.model.control_model.parameters())
    quantized = losses(tmp_path / "full")
    assert abs(quantized[0] - plain[0]) < 1e-3 * plain[0] and quantized[0] != plain[0]
    saved = torch.load(tmp_path / "full/checkpoints/step-000004.ckpt", weights_only=True)
    weights = [k for k in saved["state_dict"] if k.endswith((".weight", ".bias"))]
    assert weights and all(k.startswith("model.control_model.") for k in weights)  # no int8 weight is saved
    run(shapes, xl_weights, tmp_path / "second", "--quantize-frozen", "int8", "--resume",
        str(tmp_path / "full/checkpoints/step-000002.ckpt"))
    second = losses(tmp_path / "second")
    assert [second[s] for s in (2, 3)] == [quantized[s] for s in (2, 3)]
