"""Control-LoRA on SDXL: a file in Stability's layout (`lora_controlnet`, low-rank `.up`/`.down` pairs over the
base UNet's weights, the hint encoder, zero convolutions and norms in full) makes the same ControlNet as diffusers'
own Control-LoRA loading (ControlNetModel.from_unet + load_lora_adapter)."""

import torch

from cldm.control_lora import COPIED, MARK, merged_control
from ldm.conditioning import Conditioning
from ldm.sdxl import vector
from tests.helpers import diffusers_parts
from tests.test_sdxl import ID_WIDTH, TINY_XL_YAML, tiny_controlled_xl, tiny_xl_inputs

UNET = "model.diffusion_model."


def control_lora_file(control, rank=4, seed=7):
    """A random Control-LoRA of `control`'s layout: a low-rank pair for each linear and convolution weight of
    the parts copied from the base, everything else (their biases too, as Stability's files have them) in full."""
    gen = torch.Generator().manual_seed(seed)
    lora = {MARK: torch.tensor([])}
    for key, value in control.items():
        name, kind = key.rsplit(".", 1)
        paired = key.startswith(COPIED) and kind == "weight" and value.dim() >= 2
        if paired:
            ones = [1] * (value.dim() - 2)
            lora[name + ".up"] = 0.1 * torch.randn(value.shape[0], rank, *ones, generator=gen)
            lora[name + ".down"] = 0.1 * torch.randn(rank, *value.shape[1:], generator=gen)
        else:
            lora[key] = value
    return lora


def test_a_control_lora_makes_the_controlnet_diffusers_control_lora_loading_makes(tmp_path):
    from diffusers import ControlNetModel

    from cldm.diffusers_interop import diffusers_models
    from cldm.model import load_model
    from ldm.checkpoint import save_safetensors

    model, config = tiny_controlled_xl(seed=5)
    state = model.state_dict()
    lora = control_lora_file(model.control_model.state_dict())
    assert sum(k.endswith(".up") for k in lora) > 80
    save_safetensors(lora, tmp_path / "control-lora-tiny-rank4.safetensors")
    base = {k: v for k, v in state.items() if not k.startswith("control_model.")}
    ours = load_model(str(TINY_XL_YAML), base, tmp_path / "control-lora-tiny-rank4.safetensors")

    unet, _ = diffusers_models(state, config, id_features=ID_WIDTH)
    theirs = ControlNetModel.from_unet(unet)
    theirs.load_lora_adapter(dict(lora), prefix=None, controlnet_config=theirs.config)
    theirs.fuse_lora()  # the pairs merged into the weights, as here (unmerged, peft's sums round otherwise)
    inp = tiny_xl_inputs()
    hint = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    cond = Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH))
    added = {"text_embeds": inp["pooled"], "time_ids": inp["ids"]}
    with torch.no_grad():
        residuals = ours.control_model(inp["x"], hint, inp["t"], cond)
        down, mid = theirs.eval()(inp["x"], inp["t"], encoder_hidden_states=inp["context"], controlnet_cond=hint,
                                  added_cond_kwargs=added, return_dict=False)
    for a, b in zip(residuals, [*down, mid]):
        assert b.abs().max() > 0.5
        # measured: up to 1.3e-5 on residuals up to 16 (peft computes a 3x3 convolution's low-rank product as a
        # convolution, summing in another order)
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_a_control_lora_merges_each_pair_onto_the_bases_weight_as_an_independent_merge_does():
    """Each weight is the base's plus up @ down (computed here with einsum); a low-rank layer keeps the base's
    bias, as diffusers' loading does (cldm.control_lora's note); norms and the hint encoder are the file's."""
    model, _ = tiny_controlled_xl(seed=5)
    state = model.state_dict()
    unet = {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}
    lora = control_lora_file(model.control_model.state_dict())
    merged = merged_control(lora, unet)
    name = "input_blocks.4.1.transformer_blocks.0.attn2.to_k"
    expected = unet[name + ".weight"] + torch.einsum("or,ri->oi", lora[name + ".up"], lora[name + ".down"])
    torch.testing.assert_close(merged[name + ".weight"], expected, rtol=0, atol=1e-6)
    conv = "input_blocks.1.0.in_layers.2"
    delta = torch.einsum("or,rikl->oikl", lora[conv + ".up"][:, :, 0, 0], lora[conv + ".down"])
    torch.testing.assert_close(merged[conv + ".weight"], unet[conv + ".weight"] + delta, rtol=0, atol=1e-6)
    assert torch.equal(merged[conv + ".bias"], unet[conv + ".bias"])
    for key in ("input_blocks.1.0.in_layers.0.weight", "input_hint_block.0.weight", "zero_convs.3.0.bias"):
        assert torch.equal(merged[key], lora[key]) and not torch.equal(merged[key], unet.get(key, merged[key] + 1))
    assert merged.keys() == model.control_model.state_dict().keys()


def test_a_whole_generation_with_a_control_lora_equals_diffusers_pipeline_with_its_loading(tmp_path):
    import numpy as np
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from PIL import Image

    from cldm.model import load_model
    from cldm.pipeline import generate
    from cldm.samplers import diffusers_scheduler
    from ldm.checkpoint import save_safetensors
    from tests.test_sdxl import diffusers_text_encoders

    model, config = tiny_controlled_xl(seed=14)
    state = model.state_dict()
    lora_file = tmp_path / "control-lora.safetensors"
    save_safetensors(control_lora_file(model.control_model.state_dict(), seed=15), lora_file)
    ours = load_model(str(TINY_XL_YAML), {k: v for k, v in state.items() if not k.startswith("control_model.")},
                      lora_file)
    unet, _, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    controlnet = ControlNetModel.from_unet(unet)
    controlnet.load_lora_adapter(str(lora_file), prefix=None, controlnet_config=controlnet.config)
    controlnet.fuse_lora()
    pipe = StableDiffusionXLControlNetPipeline(vae, *diffusers_text_encoders(model.conditioner), unet,
                                               controlnet.eval(), diffusers_scheduler(model, "UniPC"))
    pipe.set_progress_bar_config(disable=True)
    hint = np.zeros((64, 64, 3), np.uint8)
    hint[16:48, 8:40] = 255
    mine, _ = generate(ours, hint, "a red circle", steps=3, seed=2, guidance_scale=5.0, sampler="UniPC",
                       verbose=False)
    plain, _ = generate(ours, None, "a red circle", size=(64, 64), steps=3, seed=2, guidance_scale=5.0,
                        sampler="UniPC", verbose=False)
    with torch.no_grad():
        theirs = pipe("a red circle", image=Image.fromarray(hint), height=64, width=64, num_inference_steps=3,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(2), output_type="np").images[0]
    assert np.abs(mine[0].astype(int) - plain[0]).mean() > 5  # the control acts
    assert np.abs(mine[0].astype(float) - (theirs * 255).round()).max() <= 1.0
