"""Reference-only against a small reimplementation of the A1111 extension's description, written here the way the
extension does it (the UNet's forward and its blocks' forwards replaced, banks kept on the blocks), not with the
project's hooks; then its identities, its place among other controls, and a real photo on the shipped model."""

import types

import numpy as np
import pytest
import torch
from skimage import data

from cldm.reference import adain_blocks, attention_blocks
from cldm.settings import ControlUnit
from ldm.attention import BasicTransformerBlock
from tests.helpers import TINY_V15, tiny_model
from tests.test_pipeline import hint, latents_of

PROMPT, SIZE = "a crimson circle", (64, 64)


def picture(seed=4):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


class A1111Reference:
    """One reference unit as A1111's hook runs it, on a tiny SD 1.5 UNet: every UNet call first runs the
    reference latent, noised at the call's timesteps, through the original forward ("write"), then the call
    itself ("read"). Transformer blocks ranked widest first get attn_weight i/N; the middle block (gn_weight 0),
    the encoder's residual blocks after the first level (here input block 3: 2 (1 - w/n)) and the first n + 2
    decoder blocks (2 w / m) get AdaIN. The noise is the project's documented one: a generator seeded with the
    seed plus one, one draw of the batch's shape a call."""

    def __init__(self, model, mode, weight, fidelity, seed):
        self.mode, self.weight, self.fidelity, self.state, self.uc = mode, weight, fidelity, None, 0
        self.noise = torch.Generator().manual_seed(seed + 1)
        unet = model.model.diffusion_model
        pixels = torch.from_numpy(picture()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        latent = model.get_first_stage_encoding(model.encode_first_stage(pixels).mode())
        blocks = sorted((m for m in unet.modules() if isinstance(m, BasicTransformerBlock)),
                        key=lambda m: -m.norm1.normalized_shape[0])
        for i, block in enumerate(blocks):
            block.attn_weight, block.bank, block.cfgs = i / len(blocks), [], []
            block.forward = types.MethodType(self.transformer_forward, block)
        assert len(unet.input_blocks) == 4 and len(unet.output_blocks) == 4
        norms = [(unet.middle_block, 0.0), (unet.input_blocks[3], 2.0)]
        norms += [(unet.output_blocks[w], 2 * w / 3) for w in range(3)]
        for block, gn_weight in norms:
            block.gn_weight, block.mean_bank, block.var_bank, block.cfgs = gn_weight, [], [], []
            block.original_forward = block.forward
            block.forward = types.MethodType(self.norm_forward, block)
        self.blocks, self.norms = blocks, [b for b, _ in norms]
        original = unet.forward

        def forward(x, timesteps, context=None, control=None):
            for block in self.blocks:
                block.bank, block.cfgs = [], []
            for block in self.norms:
                block.mean_bank, block.var_bank, block.cfgs = [], [], []
            noise = torch.randn(x.shape, generator=self.noise)
            a = model.sqrt_alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            s = model.sqrt_one_minus_alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            self.state, self.uc = "write", x.shape[0] // 2
            original(a * latent + s * noise, timesteps, context)
            self.state = "read"
            try:
                return original(x, timesteps, context, control)
            finally:
                self.state = None

        unet.forward = forward

    def transformer_forward(self, block, x, context=None):
        h = block.norm1(x)
        attn = None
        if self.state == "write" and self.mode in ("reference_only", "reference_adain+attn") and (
                self.weight > block.attn_weight):
            block.bank.append(h.clone())
            block.cfgs.append(self.fidelity)
        if self.state == "read":
            if block.bank:
                sf = sum(block.cfgs) / len(block.cfgs)
                attn_uc = block.attn1(h, context=torch.cat([h] + block.bank, dim=1))
                attn_c = attn_uc.clone()
                if self.uc and sf > 1e-5:
                    attn_c[:self.uc] = block.attn1(h[:self.uc], context=h[:self.uc])
                attn = sf * attn_c + (1.0 - sf) * attn_uc
            block.bank, block.cfgs = [], []
        if attn is None:
            attn = block.attn1(h)
        x = attn + x
        x = block.attn2(block.norm2(x), context=context) + x
        return block.ff(block.norm3(x)) + x

    def norm_forward(self, block, *args, **kwargs):
        x = block.original_forward(*args, **kwargs)
        if self.state == "write" and self.mode in ("reference_adain", "reference_adain+attn") and (
                self.weight > block.gn_weight):
            var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
            block.mean_bank.append(mean)
            block.var_bank.append(var)
            block.cfgs.append(self.fidelity)
        if self.state == "read" and block.mean_bank:
            sf = sum(block.cfgs) / len(block.cfgs)
            var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
            std = torch.maximum(var, torch.zeros_like(var) + 1e-6) ** 0.5
            mean_acc = sum(block.mean_bank) / len(block.mean_bank)
            var_acc = sum(block.var_bank) / len(block.var_bank)
            std_acc = torch.maximum(var_acc, torch.zeros_like(var_acc) + 1e-6) ** 0.5
            y_uc = (x - mean) / std * std_acc + mean_acc
            y_c = y_uc.clone()
            if self.uc and sf > 1e-5:
                y_c[:self.uc] = x[:self.uc]
            x = sf * y_c + (1.0 - sf) * y_uc
            block.mean_bank, block.var_bank, block.cfgs = [], [], []
        return x


CASES = [("reference_only", 1.0, 0.5, "balanced"), ("reference_only", 0.5, 0.3, "balanced"),
         ("reference_adain", 1.5, 0.5, "balanced"), ("reference_adain+attn", 0.8, 0.7, "control"),
         ("reference_adain+attn", 2.0, 0.5, "prompt")]


@torch.no_grad()
@pytest.mark.parametrize("mode, weight, fidelity, control_mode", CASES)
def test_reference_matches_a1111s_mechanism_reimplemented(mode, weight, fidelity, control_mode):
    common = dict(size=SIZE, steps=3, seed=2, guidance_scale=6.0)
    unit = ControlUnit(image=picture(), preprocessor=mode, strength=weight, style_fidelity=fidelity,
                       control_mode=control_mode)
    ours = latents_of(tiny_model(TINY_V15), None, PROMPT, units=(ControlUnit(), unit), **common)
    model = tiny_model(TINY_V15)
    plain = latents_of(model, None, PROMPT, **common)
    effective = {"control": 1.0, "prompt": 0.0}.get(control_mode, fidelity)  # A1111's modes
    A1111Reference(model, mode, weight, effective, seed=2)
    theirs = latents_of(model, None, PROMPT, **common)
    assert (theirs - plain).abs().max() > 0.05
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@torch.no_grad()
def test_strength_0_and_a_late_start_are_the_plain_generation_bit_for_bit():
    model = tiny_model(TINY_V15)
    common = dict(size=SIZE, steps=3, seed=2)
    plain = latents_of(model, None, PROMPT, **common)
    for values in (dict(strength=0.0), dict(strength_keyframes="0:0")):
        unit = ControlUnit(image=picture(), preprocessor="reference_adain+attn", **values)
        assert torch.equal(latents_of(model, None, PROMPT, units=(ControlUnit(), unit), **common), plain)
    with pytest.raises(ValueError, match="a reference unit acts on the whole picture.*clear its region mask"):
        latents_of(model, None, PROMPT, units=(ControlUnit(), ControlUnit(
            image=picture(), preprocessor="reference_only", region_mask=np.zeros((64, 64), np.uint8))), **common)
    late = ControlUnit(image=picture(), preprocessor="reference_only", control_start=0.5)
    first_steps = latents_of(model, None, PROMPT, units=(ControlUnit(), late), **{**common, "steps": 1})
    assert torch.equal(first_steps, latents_of(model, None, PROMPT, **{**common, "steps": 1}))


@torch.no_grad()
def test_a_reference_works_beside_a_controlnet():
    model = tiny_model(TINY_V15)
    common = dict(steps=3, seed=2)
    control = latents_of(model, hint(), PROMPT, **common)
    reference = ControlUnit(image=picture(), preprocessor="reference_only")
    both = latents_of(model, hint(), PROMPT, units=(ControlUnit(), reference), **common)
    alone = latents_of(model, None, PROMPT, size=SIZE, units=(ControlUnit(), reference), **common)
    assert (both - control).abs().max() > 0.05 and (both - alone).abs().max() > 0.05


def test_the_blocks_taking_part_at_sd_size_are_a1111s():
    """SD 1.5's and SDXL's real UNets (built without memory): AdaIN on A1111's lists of blocks, attention on every
    transformer block ranked widest first."""
    from ldm.config import load_yaml
    from ldm.unet import UNetModel
    from tests.helpers import ROOT

    for yaml, key, inputs, outputs, transformers, narrowest in (
            ("cldm_v15.yaml", "unet_config", [4, 5, 7, 8, 10, 11], list(range(8)), 16, 320),
            ("sd_xl_base.yaml", "network_config", [4, 5, 7, 8], list(range(6)), 70, 640)):
        params = load_yaml(ROOT / "models" / yaml)["model"]["params"][key]["params"]
        with torch.device("meta"):
            unet = UNetModel(**params)
        blocks = [block for block, _ in adain_blocks(unet)]
        assert blocks[0] is unet.middle_block
        assert blocks[1:] == [unet.input_blocks[i] for i in inputs] + [unet.output_blocks[i] for i in outputs]
        thresholds = [w for _, w in adain_blocks(unet)]
        n, m = len(inputs), len(outputs)
        assert thresholds == [0.0] + [2 * (1 - w / n) for w in range(n)] + [2 * w / m for w in range(m)]
        ranked = attention_blocks(unet)
        widths = [attn.to_q.in_features for attn, _ in ranked]
        assert len(ranked) == transformers and widths == sorted(widths, reverse=True) and widths[-1] == narrowest
        assert [w for _, w in ranked] == [i / transformers for i in range(transformers)]


def test_a_real_photo_as_reference_on_the_shipped_model_through_the_cli(tmp_path):
    from PIL import Image

    import generate as cli
    from cldm.outputs import read_params

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    out, plain = tmp_path / "ref.png", tmp_path / "plain.png"
    common = ["--resolution", "64", "--steps", "3", "--seed", "5"]
    cli.main([*common, "--image", str(tmp_path / "astronaut.png"), "--annotator", "reference_adain+attn",
              "--style-fidelity", "0.6", "--extra-control", "reference_only", str(tmp_path / "coffee.png"), "0.8",
              "--out", str(out)])
    cli.main([*common, "--out", str(plain)])
    params = read_params(out)
    assert params["style_fidelity"] == 0.6 and params["controls"][0]["preprocessor"] == "reference_only"
    assert np.abs(np.asarray(Image.open(out)).astype(int) - np.asarray(Image.open(plain))).max() > 10
    cli.main(["--reproduce", str(out), "--out", str(tmp_path / "again.png")])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))
