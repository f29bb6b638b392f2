"""Every checkpoint layout users have loads; every bad one fails with a message that says what and why."""

import pickle

import pytest
import safetensors.torch
import torch

from cldm.model import create_model, load_checkpoint, load_state_dict
from ldm.checkpoint import CheckpointError, read_state_dict, save_safetensors
from ldm.config import ConfigError
from tests.helpers import TINY_V15, TINY_V21, tiny_model


def split(state):
    base = {k: v for k, v in state.items() if not k.startswith("control_model.")}
    control = {k: v for k, v in state.items() if k.startswith("control_model.")}
    return base, control


def assert_loaded(model, state, dtype=torch.float32):
    ours = model.state_dict()
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        assert torch.equal(ours[k], v.to(dtype).to(ours[k].dtype)), k


def test_full_lightning_checkpoint_fp16_with_ema_and_separate_control(tmp_path):
    source = tiny_model(TINY_V15)
    base, control = split(source.state_dict())
    half = {k: v.half() if v.is_floating_point() else v for k, v in base.items()}
    ema = {"model_ema." + k.replace(".", "")[:40]: torch.zeros(1) for k in list(base)[:5]}
    torch.save({"state_dict": {**half, **ema}, "global_step": 10}, tmp_path / "base.ckpt")
    save_safetensors(control, tmp_path / "control.safetensors")

    model = create_model(TINY_V15)
    missing = load_checkpoint(model, tmp_path / "base.ckpt", tmp_path / "control.safetensors")
    assert missing == []
    assert_loaded(model, {k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    assert_loaded(model, control)


def test_control_only_file_without_prefix_and_community_file_without_schedule(tmp_path):
    source = tiny_model(TINY_V15)
    base, control = split(source.state_dict())
    community = {k: v for k, v in base.items() if k.startswith(("model.", "first_stage_model.", "cond_stage_model."))}
    community["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None] - 1e-4
    torch.save(community, tmp_path / "community.pth")
    torch.save({k[len("control_model."):]: v for k, v in control.items()}, tmp_path / "control_v11.pth")

    model = create_model(TINY_V15)
    load_checkpoint(model, tmp_path / "community.pth", tmp_path / "control_v11.pth")
    assert_loaded(model, {**community, **control})
    ids = model.cond_stage_model.transformer.text_model.embeddings.position_ids
    assert torch.equal(ids, torch.arange(77)[None])  # float, off-by-epsilon ids in the file do not leak in


def test_old_clip_key_layout_loads():
    state = tiny_model(TINY_V15).state_dict()
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in state.items()}
    assert "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight" in old
    model = create_model(TINY_V15)
    load_checkpoint(model, old)
    assert_loaded(model, state)


def test_release_style_load_state_dict_round_trip(tmp_path):
    source = tiny_model(TINY_V15)
    torch.save(source.state_dict(), tmp_path / "control_sd15_tiny.pth")
    model = create_model(TINY_V15)
    result = model.load_state_dict(load_state_dict(tmp_path / "control_sd15_tiny.pth", location="cpu"), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_loaded(model, source.state_dict())


def test_sd2_control_on_sd1_base_names_both_families():
    sd21 = tiny_model(TINY_V21)
    _, control = split(sd21.state_dict())
    model = create_model(TINY_V15)
    with pytest.raises(CheckpointError, match=r"control is for cross-attention width 48 but the model's config "
                                              r"is cross-attention width 32.*cldm_v21.yaml"):
        load_checkpoint(model, control)


def test_missing_control_weights_are_summarised_by_prefix():
    base, _ = split(tiny_model(TINY_V15).state_dict())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model(TINY_V15), base)
    message = str(err.value)
    assert "load a control checkpoint too" in message
    assert "control_model.zero_convs (" in message and "control_model.input_blocks (" in message
    assert "control_model.zero_convs.0.0.weight" not in message  # groups, not a dump


def test_unexpected_weights_are_reported_unless_not_strict():
    state = dict(tiny_model(TINY_V15).state_dict())
    state["conditioner.embedders.1.model.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 weights in the checkpoint have no place.*conditioner.embedders"):
        load_checkpoint(create_model(TINY_V15), state)
    load_checkpoint(create_model(TINY_V15), state, strict=False)


def test_missing_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"control_sd15_canny.pth not found: download it from "
                                                r"https://huggingface.co/lllyasviel/ControlNet"):
        read_state_dict(tmp_path / "control_sd15_canny.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_rejected_clearly(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    state = {"a": torch.randn(64, 64)}
    torch.save(state, path) if suffix == ".pth" else safetensors.torch.save_file(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        read_state_dict(path)


def test_non_checkpoints_are_rejected(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a model")
    with pytest.raises(CheckpointError, match="could not be read as a checkpoint"):
        read_state_dict(text)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(empty)
    no_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], no_tensors)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(no_tensors)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Payload()}}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        read_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_config_typo_names_its_yaml_path(tmp_path):
    text = TINY_V15.read_text().replace("num_res_blocks: 1", "num_res_block: 1", 1)  # in the control's params
    assert "num_res_block:" in text
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"model.params.control_stage_config.params: ControlNet has no "
                                          r"parameter\(s\) \['num_res_block'\]"):
        create_model(tmp_path / "typo.yaml")
    (tmp_path / "unknown.yaml").write_text(TINY_V15.read_text().replace("cldm.cldm.ControlNet", "cldm.cldm.ControlNetXL"))
    with pytest.raises(ConfigError, match=r"ControlNetXL.*known targets: \[.*'cldm.cldm.ControlNet'"):
        create_model(tmp_path / "unknown.yaml")


def test_safetensors_written_atomically_leave_no_temp_files(tmp_path):
    save_safetensors({"w": torch.ones(2)}, tmp_path / "out.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_safetensors_are_read_lazily_as_the_library_reads_them(tmp_path):
    """LazyTensors: the same tensors as safetensors' own reader (every dtype, an empty one), shapes and new names
    without reading; a truncated file is refused when opened."""
    from ldm.checkpoint import read_lazily, renamed, shape_of

    state = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2, 3).bfloat16(),
             "i64": torch.arange(7), "flag": torch.tensor([True, False]), "mark": torch.tensor([])}
    safetensors.torch.save_file(state, tmp_path / "m.safetensors", metadata={"format": "pt"})
    lazy, eager = read_lazily(tmp_path / "m.safetensors"), safetensors.torch.load_file(tmp_path / "m.safetensors")
    assert set(lazy) == set(eager) and all(shape_of(lazy, k) == tuple(eager[k].shape) for k in eager)
    for key, value in eager.items():
        assert lazy[key].dtype == value.dtype and torch.equal(lazy[key], value), key
    view = renamed(lazy, {"model.w": "f32"})
    assert list(view) == ["model.w"] and torch.equal(view["model.w"], state["f32"])
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        read_lazily(tmp_path / "cut.safetensors")


def test_a_model_is_built_in_its_dtype_and_filled_tensor_by_tensor(tmp_path):
    """load_model draws no random weights for a strict load and casts before loading: the loaded model equals
    the file's weights cast once; a NaN anywhere names its tensor."""
    from cldm.model import load_model

    model = tiny_model(TINY_V15, seed=3)
    state = model.state_dict()
    save_safetensors(state, tmp_path / "full.safetensors")
    loaded = load_model(TINY_V15, tmp_path / "full.safetensors", dtype=torch.bfloat16)
    assert loaded.model.diffusion_model.out[2].weight.dtype == torch.bfloat16
    assert_loaded(loaded, {k: v for k, v in state.items() if not k.startswith(("betas", "alphas", "sqrt", "log_one",
                                                                                  "posterior", "logvar"))},
                  torch.bfloat16)
    state["control_model.zero_convs.3.0.weight"][0, 0] = float("nan")
    save_safetensors(state, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor control_model.zero_convs.3.0.weight holds NaN"):
        load_model(TINY_V15, tmp_path / "nan.safetensors")
