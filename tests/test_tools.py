"""tool_add_control, tool_transfer_control and tool_extract_control: keys, values, and refusals in one line."""

import re
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import tool_add_control
import tool_extract_control
import tool_transfer_control
from cldm.model import create_model, load_checkpoint
from cldm.tools import add_control, extract_control, transfer_control
from ldm.checkpoint import CheckpointError
from ldm.diffusion import SCHEDULE_BUFFERS
from ldm.errors import run_main
from tests.helpers import ROOT, TINY_V15, TINY_V21, tiny_inputs, tiny_model

TOY_SD = ROOT / "models/toy_sd.safetensors"
TOY_CONTROL = ROOT / "models/toy_control.safetensors"
TOY_CONFIG = ROOT / "models/toy_cldm.yaml"


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


def test_add_control_writes_the_noise_schedule_as_the_release_did(tmp_path):
    model = tiny_model(TINY_V15)
    schedule = {k: v for k, v in model.state_dict().items() if k in (*SCHEDULE_BUFFERS, "logvar")}
    assert len(schedule) == len(SCHEDULE_BUFFERS)  # logvar in, lvlb_weights (not saved) out
    sd = {k: v for k, v in sd_only(model).items() if k not in schedule}  # a base without it, as the toy's
    state, added = add_control(sd, TINY_V15)
    assert all(torch.equal(state[k], v) for k, v in schedule.items()) and not set(schedule) & set(added)
    create_model(TINY_V15).load_state_dict(state)  # strictly, as the release's scripts load

    own = {**sd, "betas": schedule["betas"] * 2}  # a base with a schedule keeps its own
    assert torch.equal(add_control(own, TINY_V15)[0]["betas"], own["betas"])


def run_tool(script, *args, cwd):
    """Run a tool as a user does; returns the finished process (its stderr without the import timings) and
    whether it imported torch."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines(keepends=True)
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    done.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return done, "torch" in imported


MISSING = {
    "input": ("tool_add_control.py", "nope.ckpt", "out.safetensors", "--config", TOY_CONFIG),
    "config": ("tool_add_control.py", TOY_SD, "out.safetensors", "--config", "nope.yaml"),
    "extract": ("tool_extract_control.py", "nope.pth", "out.safetensors"),
    "transfer": ("tool_transfer_control.py", "--control", TOY_CONTROL, "--base", "nope.ckpt", "--community", TOY_SD,
                 "--output", "out.safetensors"),
}


@pytest.mark.parametrize("case", MISSING)
def test_a_missing_file_fails_at_once_in_one_line(case, tmp_path):
    done, imported_torch = run_tool(*MISSING[case], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "nope" in done.stderr and "not found" in done.stderr
    assert not imported_torch  # checked before torch is imported (seconds) or anything is built
    assert not (tmp_path / "out.safetensors").exists()


EXISTING = {
    "add": ("tool_add_control.py", TOY_SD, "out.safetensors", "--config", TOY_CONFIG),
    "extract": ("tool_extract_control.py", TOY_CONTROL, "out.safetensors"),
    "transfer": ("tool_transfer_control.py", "--control", TOY_CONTROL, "--base", TOY_SD, "--community", TOY_SD,
                 "--output", "out.safetensors"),
}


@pytest.mark.parametrize("case", EXISTING)
def test_outputs_are_never_overwritten(case, tmp_path):
    (tmp_path / "out.safetensors").write_bytes(b"precious")
    done, imported_torch = run_tool(*EXISTING[case], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == "error: out.safetensors exists; choose another name or pass --force to replace it\n"
    assert not imported_torch
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"


def test_a_damaged_input_or_a_config_without_a_control_is_one_line(tmp_path, capsys):
    (tmp_path / "sd.ckpt").write_text("not a checkpoint")
    (tmp_path / "vae.yaml").write_text("model:\n  target: ldm.models.autoencoder.AutoencoderKL\n  params: {}\n")
    for argv, message in [
        ([tmp_path / "sd.ckpt", tmp_path / "out.safetensors", "--config", TINY_V15],
         r"^error: \S*sd.ckpt could not be read as a checkpoint [^\n]*\n$"),
        ([TOY_SD, tmp_path / "out.safetensors", "--config", tmp_path / "vae.yaml"],
         r"^error: \S*vae.yaml describes no ControlNet and no base UNet[^\n]*\n$"),
        ([TOY_SD, tmp_path / "out.safetensors", "--config", TINY_V15, "--layout", "small"],
         r"^error: \S*cldm_tiny_v15.yaml describes its ControlNet: the small layout is for a base's yaml[^\n]*\n$"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            run_main(tool_add_control.main, list(map(str, argv)))
        assert stopped.value.code == 2 and re.match(message, capsys.readouterr().err)
    assert not (tmp_path / "out.safetensors").exists()


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
