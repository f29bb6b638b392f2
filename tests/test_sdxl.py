"""SDXL, exact against diffusers on tiny configs with every weight random: the UNet with its label embedding
of the pooled text embedding and the size and crop ids."""

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from cldm.diffusers_interop import diffusers_unet_config
from ldm.conditioning import Conditioning
from ldm.sdxl import SizeIds, id_features, vector
from ldm.unet import UNetModel
from tests.helpers import randomize

POOLED, ID_WIDTH = 32, 8  # diffusers' own SDXL tests: a 32-wide pooled embedding, 8 Fourier features an id
TINY_XL_UNET = dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2, attention_resolutions=[2],
                    channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True, transformer_depth=[0, 2],
                    context_dim=64, use_linear_in_transformer=True, legacy=False, num_classes="sequential",
                    adm_in_channels=POOLED + 6 * ID_WIDTH)


def tiny_xl_inputs(batch=2, seed=1, size=16):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([SizeIds((1024, 768), (32, 0), (size * 8, size * 8)).tensor()[0],
                       SizeIds.of(size * 8, size * 8).tensor()[0]])[:batch]
    return dict(x=torch.randn(batch, 4, size, size, generator=gen), t=torch.tensor([999, 321][:batch]),
                context=torch.randn(batch, 77, 64, generator=gen), pooled=torch.randn(batch, POOLED, generator=gen),
                ids=ids)


def test_the_size_ids_features_are_diffusers_add_time_ids_features():
    from diffusers.models.embeddings import Timesteps

    ids = SizeIds((1024, 768), (32, 16), (512, 512)).tensor(2)
    theirs = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(ids.flatten()).reshape(2, -1)
    torch.testing.assert_close(id_features(ids), theirs, rtol=0, atol=0)
    assert SizeIds.of(512, 768).values() == [512, 768, 0, 0, 512, 768]


def test_the_sdxl_unet_matches_diffusers_unet2dconditionmodel():
    torch.manual_seed(0)
    ours = randomize(UNetModel(**TINY_XL_UNET).eval())
    config = diffusers_unet_config(TINY_XL_UNET, ID_WIDTH)
    theirs = UNet2DConditionModel(**config).eval()
    state = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(convert_ldm_unet_checkpoint(state, config), strict=True)
    inp = tiny_xl_inputs()
    with torch.no_grad():
        eps = ours(inp["x"], inp["t"], Conditioning(inp["context"], vector(inp["pooled"], inp["ids"], ID_WIDTH)))
        expected = theirs(inp["x"], inp["t"], encoder_hidden_states=inp["context"],
                          added_cond_kwargs={"text_embeds": inp["pooled"], "time_ids": inp["ids"]}).sample
    assert eps.abs().max() > 0.1
    torch.testing.assert_close(eps, expected, rtol=0, atol=1e-5)
