"""The paper's invariants: a fresh control changes nothing, and training moves only the control."""

import torch

from cldm.cldm import ControlLDM, guess_mode_scales
from ldm.unet import UNetModel
from tests.helpers import TINY_V15, tiny_inputs, tiny_model


def fresh_control_model():
    """Random SD weights everywhere; the control keeps its construction-time init (zero convs at zero)."""
    return tiny_model(TINY_V15, skip=("control_model.",))


def test_fresh_control_leaves_apply_model_bit_identical():
    model = fresh_control_model()
    inp = tiny_inputs(model)
    with torch.no_grad():
        controlled = model.apply_model(inp["x"], inp["t"], {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]})
        plain = model.apply_model(inp["x"], inp["t"], {"c_concat": None, "c_crossattn": [inp["context"]]})
        unet = UNetModel(**vars(model.model.diffusion_model.config)).eval()
        unet.load_state_dict(model.model.diffusion_model.state_dict())
        reference = unet(inp["x"], inp["t"], context=inp["context"])
    assert controlled.abs().max() > 0.1  # a real output, not zeros that would trivially match
    assert torch.equal(controlled, plain)
    assert torch.equal(controlled, reference)


def test_control_changes_output_once_trained_weights_are_nonzero(tiny_v15):
    inp = tiny_inputs(tiny_v15)
    cond = {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}
    with torch.no_grad():
        full = tiny_v15.apply_model(inp["x"], inp["t"], cond)
        off = tiny_v15.apply_model(inp["x"], inp["t"], cond, control_scales=[0.0] * 5)
        plain = tiny_v15.apply_model(inp["x"], inp["t"], {"c_concat": None, "c_crossattn": [inp["context"]]})
    assert (full - off).abs().max() > 1e-3
    torch.testing.assert_close(off, plain, rtol=0, atol=1e-6)


def sd_weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("control_model.")}


def training_step(model, optimizer, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    hint = torch.rand(2, 3, 64, 64, generator=gen)
    context = torch.randn(2, 77, 32, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    optimizer.zero_grad()
    loss, _ = model.p_losses(x, {"c_concat": [hint], "c_crossattn": [context]}, t,
                             noise=torch.randn(x.shape, generator=gen))
    loss.backward()
    return loss


def test_sd_locked_step_trains_only_the_control_and_zero_convs_learn_first():
    model = fresh_control_model().train()
    assert model.sd_locked
    before = sd_weights(model)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    control = model.control_model

    training_step(model, optimizer, seed=0)
    # The zero convs see non-zero features, so they get a gradient at once; everything behind them gets
    # none yet, because the zero convs' weights are zero (the FAQ's point).
    assert all(zc[0].weight.grad.abs().max() > 0 for zc in control.zero_convs)
    assert control.middle_block_out[0].weight.grad.abs().max() > 0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in control.input_blocks.parameters())
    optimizer.step()
    assert all(zc[0].weight.abs().max() > 0 for zc in control.zero_convs)

    training_step(model, optimizer, seed=1)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in control.input_blocks.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in control.input_hint_block.parameters())
    optimizer.step()

    after = sd_weights(model)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(p.grad is None for p in model.model.parameters())


def test_sd_unlocked_trains_the_decoder_too():
    model = fresh_control_model()
    model.sd_locked = False
    params = {id(p) for p in model.trainable_parameters()}
    unet = model.model.diffusion_model
    assert all(id(p) in params for p in unet.output_blocks.parameters())
    assert all(id(p) in params for p in unet.out.parameters())
    assert not any(id(p) in params for p in unet.input_blocks.parameters())


def test_guess_mode_scales_are_the_releases():
    scales = guess_mode_scales(1.0)
    assert len(scales) == 13
    assert scales[12] == 1.0 and abs(scales[0] - 0.825**12) < 1e-12
    assert guess_mode_scales(0.5)[12] == 0.5


def test_only_mid_control_ignores_the_skip_residuals(tiny_v15):
    inp = tiny_inputs(tiny_v15)
    cond = {"c_concat": [inp["hint"]], "c_crossattn": [inp["context"]]}
    tiny_v15.only_mid_control = True
    with torch.no_grad():
        mid_only = tiny_v15.apply_model(inp["x"], inp["t"], cond)
        skips_off = tiny_v15.apply_model(inp["x"], inp["t"], cond, control_scales=[0.0] * 4 + [1.0])
    torch.testing.assert_close(mid_only, skips_off, rtol=0, atol=1e-6)
    assert isinstance(tiny_v15, ControlLDM)


def test_soft_scales_are_granted_once_however_they_are_asked_for():
    from cldm.cldm import control_weights

    soft = guess_mode_scales(0.8)
    for asked in (dict(guess_mode=True), dict(control_mode="prompt"), dict(block_weights="soft"),
                  dict(guess_mode=True, block_weights="soft"), dict(guess_mode=True, control_mode="prompt")):
        assert control_weights(13, 0.8, **asked) == soft, asked
    halved = [0.5] * 12 + [1.0]
    assert control_weights(13, 0.8, guess_mode=True, block_weights=halved) == [w * h for w, h in zip(soft, halved)]
    assert control_weights(13, 0.8, block_weights="only_mid") == [0.0] * 12 + [0.8]
