"""DDIM: the release's schedule where it worked, any step count, guidance batched or not gives the same."""

import numpy as np
import pytest
import torch

from cldm.ddim_hacked import DDIMSampler
from ldm import ddim
from ldm.ddim import ddim_timesteps
from tests.helpers import TINY_V15, tiny_inputs, tiny_model


def release_schedule(steps, total=1000):
    c = total // steps
    return np.asarray(list(range(0, total, c))) + 1


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 25, 50, 100, 250, 500])
def test_schedule_equals_the_releases_where_it_gave_that_many_steps(steps):
    assert np.array_equal(ddim_timesteps(steps), release_schedule(steps))


@pytest.mark.parametrize("steps", [3, 7, 13, 999, 1000])
def test_any_step_count_gives_that_many_valid_timesteps(steps):
    timesteps = ddim_timesteps(steps)
    assert len(timesteps) == steps and timesteps.min() >= 1 and timesteps.max() <= 1000
    assert np.all(np.diff(timesteps) > 0)


def test_three_steps_sample_and_guidance_batching_changes_nothing(monkeypatch):
    model = tiny_model(TINY_V15)
    inp = tiny_inputs(model)
    cond = {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}
    uncond = {"c_concat": [inp["hint"]], "c_crossattn": [torch.zeros_like(inp["context"])]}
    guess_uncond = {"c_concat": None, "c_crossattn": [torch.zeros_like(inp["context"])]}
    sampler = DDIMSampler(model)
    kwargs = dict(verbose=False, x_T=inp["x"], unconditional_guidance_scale=9.0)
    batched, _ = sampler.sample(3, 2, (4, 8, 8), cond, unconditional_conditioning=uncond, **kwargs)
    # The same guidance through two separate calls, as in guess mode: uncond without control.
    model_guess, _ = sampler.sample(3, 2, (4, 8, 8), cond, unconditional_conditioning=guess_uncond, **kwargs)
    assert torch.isfinite(batched).all() and batched.shape == (2, 4, 8, 8)
    assert (batched - model_guess).abs().max() > 1e-4  # the uncond branch's control matters

    monkeypatch.setattr(ddim, "cat_cond", lambda a, b: None)  # force two model calls per step
    separate, _ = sampler.sample(3, 2, (4, 8, 8), cond, unconditional_conditioning=uncond, **kwargs)
    # Batching changes only the summation order: differences stay at float rounding, relative to the output.
    torch.testing.assert_close(batched, separate, rtol=0, atol=1e-5 * float(batched.abs().max()))


def test_unsupported_options_fail_instead_of_being_ignored():
    model = tiny_model(TINY_V15)
    with pytest.raises(TypeError, match="score_corrector"):
        DDIMSampler(model).sample(2, 1, (4, 8, 8), None, score_corrector=object(), verbose=False)
