"""The noise schedule and the three parameterisations agree with each other and with the release's formulas."""

import numpy as np
import pytest
import torch

from ldm.diffusion import make_betas, schedule_buffers
from tests.helpers import TINY_V15, tiny_model


def test_sd_schedule_values():
    betas = make_betas("linear", 1000, 0.00085, 0.012)
    assert betas[0] == pytest.approx(0.00085) and betas[-1] == pytest.approx(0.012)
    buffers = schedule_buffers(betas, "eps")
    # SD's largest noise level, sigma_max = 14.6146, is alpha-bar = 1 / (1 + sigma_max^2) at t = 999
    assert buffers["alphas_cumprod"][-1] == pytest.approx(1 / (1 + 14.6146**2), rel=1e-4)
    assert np.isfinite(buffers["lvlb_weights"]).all()


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_v_and_eps_predictions_invert_each_other(t):
    model = tiny_model(TINY_V15)
    gen = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    ts = torch.full((2,), t)
    x_t = model.q_sample(x0, ts, noise)
    v = model.get_v(x0, noise, ts)
    torch.testing.assert_close(model.predict_start_from_z_and_v(x_t, ts, v), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.predict_eps_from_z_and_v(x_t, ts, v), noise, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_the_one_step_estimate_of_x0_is_exact_for_an_exact_prediction(parameterization):
    model = tiny_model(TINY_V15)
    model.parameterization = parameterization
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 999])
    x_t = model.q_sample(x0, t, noise)
    prediction = {"eps": noise, "x0": x0, "v": model.get_v(x0, noise, t)}[parameterization]
    torch.testing.assert_close(model.predict_start(x_t, t, prediction), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_loss_targets_follow_the_parameterization(parameterization, monkeypatch):
    model = tiny_model(TINY_V15)
    model.parameterization = parameterization
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 700])
    target = {"eps": noise, "x0": x0, "v": model.get_v(x0, noise, t)}[parameterization]
    monkeypatch.setattr(model, "apply_model", lambda x, t, c: target + 0.5)  # a model off by exactly 0.5
    loss, logged = model.p_losses(x0, None, t, noise=noise)
    assert loss.item() == pytest.approx(0.25)
    assert logged["loss_simple"].item() == pytest.approx(0.25)
