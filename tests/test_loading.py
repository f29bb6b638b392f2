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
