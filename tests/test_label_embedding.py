"""SDXL's label embedding on the UNet and ControlNet's copy: the conditioning's vector part enters the timestep
embedding under sgm's keys, and a vector given to a network without one (or missing where one is needed) is
refused with a message."""

import pytest
import torch

from cldm.cldm import ControlNet
from ldm.conditioning import Conditioning
from ldm.unet import UNetModel

TINY_XL = dict(in_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=[2], channel_mult=(1, 2),
               num_head_channels=16, use_spatial_transformer=True, transformer_depth=[0, 2], context_dim=24,
               use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=12)


def conditioning(vector=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(2, 7, 24, generator=gen),
                        torch.randn(2, 12, generator=gen) if vector else None)


def test_the_vector_enters_under_sgm_keys_and_the_timestep_embedding():
    torch.manual_seed(0)
    unet = UNetModel(**TINY_XL)
    keys = set(unet.state_dict())
    assert {"label_emb.0.0.weight", "label_emb.0.0.bias", "label_emb.0.2.weight", "label_emb.0.2.bias"} <= keys
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    cond = conditioning()
    other = Conditioning(cond.crossattn, cond.vector + 1)
    with torch.no_grad():
        assert unet(x, t, cond).shape == x.shape
        # every block's last layer starts at zero, so the vector shows in the embedding the blocks get: the
        # timesteps' plus its label embedding
        emb, other_emb = unet.encode(x, t, cond)[2], unet.encode(x, t, other)[2]
        torch.testing.assert_close(emb - other_emb, unet.label_emb(cond.vector) - unet.label_emb(other.vector))
        assert (emb - other_emb).abs().max() > 1e-3
        net = ControlNet(hint_channels=3, **TINY_XL)
        assert "label_emb.0.2.weight" in net.state_dict()
        residuals = net(x, torch.rand(2, 3, 128, 128), t, cond)
        assert len(residuals) == net.num_outputs and all(r.shape[0] == 2 for r in residuals)


def test_a_missing_or_unexpected_vector_is_a_message():
    unet = UNetModel(**TINY_XL)
    plain = UNetModel(**{k: v for k, v in TINY_XL.items() if k not in ("num_classes", "adm_in_channels")})
    assert not any(k.startswith("label_emb") for k in plain.state_dict())  # SD 1.x/2.x keys unchanged
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    with torch.no_grad(), pytest.raises(ValueError, match="needs the conditioning's vector part"):
        unet(x, t, conditioning(vector=False))
    with torch.no_grad(), pytest.raises(ValueError, match="takes no vector conditioning"):
        plain(x, t, conditioning())
    with pytest.raises(ValueError, match="num_classes: sequential with adm_in_channels"):
        UNetModel(**{**TINY_XL, "adm_in_channels": None})
