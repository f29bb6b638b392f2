"""tool_add_control, tool_transfer_control and tool_extract_control: keys, values and refusals."""

import pytest
import safetensors.torch
import torch

import tool_add_control
import tool_extract_control
import tool_transfer_control
from cldm.model import create_model, load_checkpoint
from cldm.tools import add_control, extract_control, transfer_control
from ldm.checkpoint import CheckpointError
from tests.helpers import TINY_V15, TINY_V21, tiny_inputs, tiny_model


def sd_only(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")}


def test_add_control_copies_the_encoder_and_zeroes_the_convs(tmp_path, capsys):
    sd = sd_only(tiny_model(TINY_V15))
    torch.save({"state_dict": sd}, tmp_path / "sd.ckpt")
    tool_add_control.main([str(tmp_path / "sd.ckpt"), str(tmp_path / "ini.safetensors"), "--config", str(TINY_V15)])
    printed = capsys.readouterr().out
    state = safetensors.torch.load_file(tmp_path / "ini.safetensors")

    copied = [k for k in state if k.startswith("control_model.") and ("input_blocks" in k or "middle_block." in k
                                                                     or "time_embed" in k)]
    assert copied and all(torch.equal(state[k], sd["model.diffusion_model." + k[len("control_model."):]])
                          for k in copied)
    new = [line.removeprefix("new: ") for line in printed.splitlines() if line.startswith("new: ")]
    assert sorted(new) == sorted(k for k in state if k.startswith("control_model.") and k not in copied)
    assert any("input_hint_block" in k for k in new) and any("zero_convs" in k for k in new)
    assert all(state[k].abs().max() == 0 for k in new if "zero_convs" in k or "middle_block_out" in k)

    model = create_model(TINY_V15).eval()
    load_checkpoint(model, tmp_path / "ini.safetensors")
    inp = tiny_inputs(model)
    with torch.no_grad():
        with_control = model.apply_model(inp["x"], inp["t"], {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]})
        without = model.apply_model(inp["x"], inp["t"], {"c_concat": None, "c_crossattn": [inp["context"]]})
    assert torch.equal(with_control, without)


def test_outputs_are_never_overwritten(tmp_path):
    sd = sd_only(tiny_model(TINY_V15))
    torch.save(sd, tmp_path / "sd.pth")
    (tmp_path / "ini.safetensors").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        tool_add_control.main([str(tmp_path / "sd.pth"), str(tmp_path / "ini.safetensors"), "--config", str(TINY_V15)])
    assert (tmp_path / "ini.safetensors").read_bytes() == b"precious"


def test_add_control_draws_the_same_hint_encoder_from_the_same_seed():
    sd = sd_only(tiny_model(TINY_V15))

    def hint_encoder(seed):
        return {k: v for k, v in add_control(sd, TINY_V15, seed)[0].items() if "input_hint_block" in k}

    first, again, other = hint_encoder(0), hint_encoder(0), hint_encoder(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_add_control_checks_the_config_family():
    sd21 = sd_only(tiny_model(TINY_V21))
    with pytest.raises(CheckpointError, match=r"the SD checkpoint is cross-attention width 48, the config "
                                              r"cldm_tiny_v15.yaml is cross-attention width 32"):
        add_control(sd21, TINY_V15)
    with pytest.raises(CheckpointError, match="already has control weights"):
        add_control(tiny_model(TINY_V15).state_dict(), TINY_V15)


def test_transfer_is_control_plus_community_minus_base(tmp_path):
    control_model = tiny_model(TINY_V15, seed=1)
    base, community = sd_only(tiny_model(TINY_V15, seed=2)), sd_only(tiny_model(TINY_V15, seed=3))
    control = extract_control(control_model.state_dict())
    out = transfer_control(control_model.state_dict(), base, community)

    key = "control_model.input_blocks.1.0.in_layers.2.weight"
    unet_key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    torch.testing.assert_close(out[key], control[key] + community[unet_key] - base[unet_key], rtol=0, atol=1e-6)
    for own in ("control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight"):
        assert torch.equal(out[own], control[own])
    assert all(torch.equal(out[k], v) for k, v in community.items())

    torch.save(control_model.state_dict(), tmp_path / "control.pth")
    torch.save(base, tmp_path / "base.pth")
    safetensors.torch.save_file(community, tmp_path / "community.safetensors")
    tool_transfer_control.main(["--control", str(tmp_path / "control.pth"), "--base", str(tmp_path / "base.pth"),
                                "--community", str(tmp_path / "community.safetensors"),
                                "--output", str(tmp_path / "out.safetensors"), "--control-only"])
    written = safetensors.torch.load_file(tmp_path / "out.safetensors")
    assert written.keys() == control.keys()
    torch.testing.assert_close(written[key], out[key], rtol=0, atol=0)


def test_transfer_refuses_mixed_families():
    v15, v21 = tiny_model(TINY_V15), tiny_model(TINY_V21)
    with pytest.raises(CheckpointError, match="different model families"):
        transfer_control(v21.state_dict(), sd_only(v15), sd_only(v15))


def test_extract_control(tmp_path):
    model = tiny_model(TINY_V15)
    torch.save(model.state_dict(), tmp_path / "full.pth")
    tool_extract_control.main([str(tmp_path / "full.pth"), str(tmp_path / "control.safetensors")])
    state = safetensors.torch.load_file(tmp_path / "control.safetensors")
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("control_model.")}
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    with pytest.raises(CheckpointError, match="no control_model"):
        extract_control(sd_only(model))


def test_export_for_shipping_drops_the_schedule_and_halves(tmp_path):
    from training import export

    model = tiny_model(TINY_V15)
    torch.save(model.state_dict(), tmp_path / "full.pth")
    export.main([str(tmp_path / "full.pth"), str(tmp_path / "ship.safetensors"), "--half"])
    shipped = safetensors.torch.load_file(tmp_path / "ship.safetensors")
    assert "betas" not in shipped and "logvar" not in shipped
    assert shipped["model.diffusion_model.out.2.weight"].dtype == torch.float16
    fresh = create_model(TINY_V15)
    assert load_checkpoint(fresh, tmp_path / "ship.safetensors") == []  # loads strictly, schedule recomputed
    torch.testing.assert_close(fresh.state_dict()["model.diffusion_model.out.2.weight"],
                               model.state_dict()["model.diffusion_model.out.2.weight"], rtol=1e-3, atol=1e-3)
