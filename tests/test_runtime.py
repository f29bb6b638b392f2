"""--backend openvino: the UNet and ControlNet run by OpenVINO, converted on the first step, give the torch
generation's images; where the converted weights would not be the network's (weights changed in place, as a
merged LoRA changes them; hooks inside, as reference-only places them) the step runs in torch, bit for bit."""

import copy

import numpy as np
import pytest
import torch

from cldm.pipeline import generate
from cldm.settings import ControlUnit
from cldm.speed import speed_up
from tests.helpers import TINY_V15, tiny_model

pytest.importorskip("openvino")

HINT = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
SETTINGS = dict(steps=3, sampler="UniPC", guidance_scale=5.0, seed=1, verbose=False)


@pytest.fixture(scope="module")
def models():
    plain = tiny_model(TINY_V15, seed=3)
    fast = speed_up(copy.deepcopy(plain), backend="openvino")
    return plain, fast


def test_openvino_runs_the_networks_and_gives_torchs_images(models):
    plain, fast = models
    theirs = generate(fast, HINT, "a circle", **SETTINGS)[0][0]
    ours = generate(plain, HINT, "a circle", **SETTINGS)[0][0]
    for net in (fast.model.diffusion_model, fast.control_model):
        assert len(net.runtime.compiled) == 1  # converted and compiled once
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([900, 900])
    context = plain.get_learned_conditioning(["a", "b"])
    hint = torch.from_numpy(HINT).float().div(255).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        want, got = (m.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]}) for m in (plain, fast))
    assert (got - want).norm() / want.norm() < 1e-5


def test_hooks_and_changed_weights_run_in_torch_bit_for_bit(models):
    plain, fast = models
    reference = ControlUnit(image=HINT, preprocessor="reference_only", strength=1.0)
    images = [generate(m, HINT, "a circle", units=(ControlUnit(), reference), **SETTINGS)[0][0] for m in models]
    assert np.abs(images[0].astype(int) - images[1]).max() <= 1  # the ControlNet in OpenVINO, the UNet hooked
    weights = [next(net.parameters()) for m in models
               for net in (m.model.diffusion_model, m.control_model, m.first_stage_model.decoder)]
    backups = [w.clone() for w in weights]
    with torch.no_grad():  # changed in place, as a merged LoRA changes them: torch computes, bit for bit
        for weight in weights:
            weight.add_(0.25)
    try:
        assert np.array_equal(generate(fast, HINT, "a circle", **SETTINGS)[0][0],
                              generate(plain, HINT, "a circle", **SETTINGS)[0][0])
    finally:
        with torch.no_grad():  # restored from their copies, as a LoRA is taken out: OpenVINO computes again
            for weight, backup in zip(weights, backups):
                weight.copy_(backup)
    assert all(net.runtime.same_weights() for net in (fast.model.diffusion_model, fast.control_model,
                                                       fast.first_stage_model))


def test_the_backend_is_refused_where_it_cannot_run():
    model = tiny_model(TINY_V15, seed=3)
    with pytest.raises(ValueError, match="torch.compile and the openvino backend"):
        speed_up(model, compile=True, backend="openvino")
    with pytest.raises(ValueError, match="fp32 on the CPU: pass --precision fp32"):
        speed_up(model.to(torch.bfloat16), backend="openvino")
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        speed_up(model, backend="onnx")


def test_openvino_runs_in_fp32_unless_another_precision_is_asked():
    from ldm.runtime import backend_precision

    assert backend_precision("openvino", None) == backend_precision("openvino", "auto") == "fp32"
    assert backend_precision("openvino", "bf16") == "bf16"  # asked for: speed_up then refuses it, saying why
    assert backend_precision("torch", None) is None and backend_precision("torch", "auto") == "auto"
