"""Numerical parity with diffusers on weights converted by diffusers' own single-file helpers."""

import pytest
import torch
from diffusers import ControlNetModel

from cldm.cldm import guess_mode_scales
from cldm.diffusers_interop import diffusers_models, export_diffusers_controlnet, read_diffusers_controlnet
from cldm.model import load_checkpoint, load_model
from ldm.config import load_yaml
from tests.helpers import TINY_V15, TINY_V21, tiny_inputs, tiny_model

ATOL = 1e-5


def diffusers_pair(model, config_path):
    """Our weights in diffusers' models, converted by diffusers' own single-file helpers."""
    return diffusers_models(model.state_dict(), load_yaml(config_path))


def diffusers_eps(unet, controlnet, inp, scales=None):
    if controlnet is None:
        return unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"]).sample
    down, mid = controlnet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=inp["hint"],
                           conditioning_scale=1.0, return_dict=False)
    scales = scales or [1.0] * (len(down) + 1)
    down = [d * s for d, s in zip(down, scales)]
    return unet(inp["x"], inp["t"], encoder_hidden_states=inp["context"], down_block_additional_residuals=down,
                mid_block_additional_residual=mid * scales[-1]).sample


@pytest.mark.parametrize("config", [TINY_V15, TINY_V21], ids=["sd15", "sd21"])
def test_apply_model_matches_diffusers(config):
    model = tiny_model(config)
    unet, controlnet = diffusers_pair(model, config)
    inp = tiny_inputs(model)
    n = model.control_model.num_outputs
    cases = {
        "plain": (None, None),
        "control": ([1.0] * n, [1.0] * n),
        "scale 0.5": ([0.5] * n, [0.5] * n),
        "guess mode": (guess_mode_scales(1.0, n), guess_mode_scales(1.0, n)),
    }
    with torch.no_grad():
        for name, (ours_scales, their_scales) in cases.items():
            hint = None if ours_scales is None else [inp["hint"]]
            ours = model.apply_model(inp["x"], inp["t"], {"c_concat": hint, "c_crossattn": [inp["context"]]},
                                     control_scales=ours_scales)
            theirs = diffusers_eps(unet, None if ours_scales is None else controlnet, inp, their_scales)
            assert ours.abs().max() > 0.1, name
            torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL, msg=name)


def test_export_to_diffusers_and_back_round_trips(tmp_path):
    model = tiny_model(TINY_V21)
    folder = export_diffusers_controlnet(model.control_model.state_dict(), TINY_V21, tmp_path / "controlnet")
    loaded = ControlNetModel.from_pretrained(folder).eval()
    _, converted = diffusers_pair(model, TINY_V21)
    inp = tiny_inputs(model)
    with torch.no_grad():
        a = loaded(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=inp["hint"],
                   return_dict=False)
        b = converted(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=inp["hint"],
                      return_dict=False)
    for x, y in zip([*a[0], a[1]], [*b[0], b[1]]):
        assert torch.equal(x, y)

    back = read_diffusers_controlnet(folder)
    original = model.control_model.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)

    fresh = tiny_model(TINY_V21, seed=5)
    load_checkpoint(fresh, {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")},
                    folder)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_diffusers_controlnet_single_file_loads_without_its_config(tmp_path):
    from cldm.diffusers_interop import control_to_diffusers_keys, diffusers_controlnet_config
    from ldm.checkpoint import save_safetensors

    model = tiny_model(TINY_V15)
    control = model.control_model.state_dict()
    save_safetensors(control_to_diffusers_keys(control, diffusers_controlnet_config(load_yaml(TINY_V15))),
                     tmp_path / "diffusion_pytorch_model.safetensors")
    base = {k: v for k, v in model.state_dict().items() if not k.startswith("control_model.")}
    loaded = load_model(TINY_V15, base, tmp_path / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(loaded.control_model.state_dict()[k], v) for k, v in control.items())
