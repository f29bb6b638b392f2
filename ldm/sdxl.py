"""SDXL's conditioning beyond the text: the conditioning's vector part is the pooled text embedding (OpenCLIP
bigG's projection) followed by six size and crop ids, each through the timesteps' sinusoidal (Fourier)
features: the picture's original size (h, w), the crop's top-left corner (top, left) and the target size
(h, w), as SDXL was trained on them (sgm's ConcatTimestepEmbedderND; diffusers' add_time_ids). The UNet and
its ControlNets take that vector through their label embedding (ldm.unet.embed).

`Conditioner` is sgm's GeneralConditioner as SDXL's yaml builds it: the two text encoders and the three id
embedders under `conditioner.embedders.<i>`, making one Conditioning {crossattn, vector} of prompts and ids.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ldm.conditioning import Conditioning
from ldm.diffusion import LatentDiffusion
from ldm.unet import timestep_embedding

ID_FEATURES = 256  # Fourier features an id in SDXL's models (sgm's outdim, diffusers' addition_time_embed_dim)
SDXL_RESOLUTION = 1024  # the shorter side SDXL generates at by default, as it was trained


@dataclass(frozen=True)
class SizeIds:
    """The six ids of one picture: what SDXL is told of its size and crop. A generation's defaults are those
    of an uncropped picture of the generated size (`SizeIds.of(height, width)`)."""

    original: tuple  # (height, width) of the picture before it was resized and cropped
    crop: tuple = (0, 0)  # (top, left) of the crop in the resized picture
    target: tuple | None = None  # (height, width) generated; None: the original size

    @classmethod
    def of(cls, height, width):
        return cls((height, width), (0, 0), (height, width))

    def values(self):
        return [*self.original, *self.crop, *(self.target or self.original)]

    def tensor(self, batch=1, device=None):
        """(batch, 6) float ids, in sgm's and diffusers' order."""
        return torch.tensor([self.values()] * batch, dtype=torch.float32, device=device)


def id_features(ids, width=ID_FEATURES):
    """(B, n) ids -> (B, n * width): each id through `width` sinusoidal features, cosines first."""
    batch, n = ids.shape
    return timestep_embedding(ids.flatten(), width).reshape(batch, n * width)


def vector(pooled, ids, width=ID_FEATURES):
    """SDXL's vector conditioning: the pooled text embedding (B, P) then the ids' features (B, 6 * width)."""
    return torch.cat([pooled.float(), id_features(ids.to(pooled.device), width)], dim=-1)


class SizeEmbedder(nn.Module):
    """sgm's ConcatTimestepEmbedderND: (B, n) ids -> (B, n * outdim) Fourier features; no weights."""

    def __init__(self, outdim=ID_FEATURES):
        super().__init__()
        self.outdim = outdim

    def forward(self, ids):
        return id_features(ids, self.outdim)


ID_INPUTS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")  # sgm's input keys
TEXT_INPUT = "txt"


class Conditioner(nn.Module):
    """Prompts and size ids -> one Conditioning: each embedder reads its input (sgm's input_key: "txt", or one
    pair of ids), its 3-D outputs are joined into the cross-attention part along the features, its 2-D ones
    into the vector part, in the embedders' order (SDXL: CLIP-L's 768 and bigG's 1280 features; bigG's pooled
    1280 then three times two ids' features)."""

    def __init__(self, emb_models):
        super().__init__()
        self.input_keys = [key for key, _ in emb_models]
        unknown = sorted(set(self.input_keys) - {TEXT_INPUT, *ID_INPUTS})
        if unknown:
            raise ValueError(f"conditioner inputs {unknown} are not SDXL's ({TEXT_INPUT}, {', '.join(ID_INPUTS)})")
        text_first = [key == TEXT_INPUT for key in self.input_keys]
        if text_first != sorted(text_first, reverse=True):
            raise ValueError("the conditioner lists a text embedder after the size ids: SDXL's lists the text first")
        self.embedders = nn.ModuleList(module for _, module in emb_models)

    def forward(self, prompts, ids, zero_text=False):
        """`ids`: (B, 6) (SizeIds.tensor); `zero_text`: the text's features are zeros (SDXL's pipelines do this
        for an empty negative prompt; sgm's force_zero_embeddings), for all samples or where a (B,) mask is
        true (sgm's training drops prompts so)."""
        return self.with_ids(self.text(prompts, zero_text), ids)

    def text(self, prompts, zero_text=False):
        """The text embedders' part alone: a Conditioning whose vector is the pooled text embedding (what the
        latent cache keeps of a prompt; `with_ids` completes it)."""
        crossattn, vectors = [], []
        for key, embedder in zip(self.input_keys, self.embedders):
            if key != TEXT_INPUT:
                continue
            outputs = embedder(list(prompts))
            for out in outputs if isinstance(outputs, tuple) else (outputs,):
                if isinstance(zero_text, torch.Tensor):
                    out = torch.where(zero_text.reshape(-1, *[1] * (out.dim() - 1)), torch.zeros_like(out), out)
                elif zero_text:
                    out = torch.zeros_like(out)
                (crossattn if out.dim() == 3 else vectors).append(out)
        return Conditioning(torch.cat(crossattn, dim=2), torch.cat([v.float() for v in vectors], dim=1))

    def with_ids(self, text, ids):
        """The whole Conditioning of a `text` part (Conditioner.text) and (B, 6) ids: the ids' features joined to
        the vector after the pooled embedding (SDXL's embedders list the text's first)."""
        pairs = dict(zip(ID_INPUTS, ids.to(text.crossattn.device).float().split(2, dim=1)))
        features = [embedder(pairs[key]) for key, embedder in zip(self.input_keys, self.embedders)
                    if key != TEXT_INPUT]
        return Conditioning(text.crossattn, torch.cat([text.vector, *features], dim=1))

    @torch.no_grad()
    def condition(self, prompts, size, negative=False, dropped=None):
        """LatentDiffusion.condition's SDXL half: every prompt with the generation's SizeIds `size` (or each its
        own: a (B, 6) tensor, as training reads them); negative prompts that are all empty are zeros, as SDXL's
        pipelines make them, and so are the prompts a (B,) mask `dropped` marks."""
        if size is None:
            raise ValueError("SDXL's conditioning needs the generation's size and crop (ldm.sdxl.SizeIds)")
        device = next(self.parameters()).device
        ids = size.to(device).float() if isinstance(size, torch.Tensor) else size.tensor(len(prompts), device)
        return self(prompts, ids, zero_text=negative and not any(prompts) if dropped is None else dropped)

    def encode(self, prompts):  # the release's get_learned_conditioning: the generated size unknown there
        raise ValueError("SDXL's conditioning needs the generation's size: use model.condition(prompts, size)")


SDXL_SCHEDULE = dict(beta_schedule="linear", linear_start=0.00085, linear_end=0.0120)  # SD's, as sgm's legacy DDPM

# sgm's discrete denoiser as SDXL's yaml configures it: eps prediction on SD's noise schedule
DENOISER = {"ldm.modules.diffusionmodules.denoiser.DiscreteDenoiser": {"num_idx": 1000},
            "ldm.modules.diffusionmodules.denoiser_scaling.EpsScaling": {},
            "ldm.modules.diffusionmodules.denoiser_weighting.EpsWeighting": {},
            "ldm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization": {
                "linear_start": 0.00085, "linear_end": 0.0120, "num_timesteps": 1000}}


def check_denoiser(config, path="denoiser_config"):
    """sgm's denoiser config, read as data: only SDXL's (eps on SD's schedule, its defaults) is supported."""
    if config is None:
        return
    target = config.get("target", "").replace("sgm.", "ldm.", 1)
    if target not in DENOISER:
        raise ValueError(f"{path}.target {config.get('target')!r}: only SDXL's denoiser (DiscreteDenoiser with "
                         "EpsScaling and LegacyDDPMDiscretization) is supported")
    params = dict(config.get("params") or {})
    for key in ("weighting_config", "scaling_config", "discretization_config"):
        if key in params:
            check_denoiser(params.pop(key), f"{path}.params.{key}")
    expected = DENOISER[target]
    different = {k: v for k, v in params.items() if expected.get(k, v) != v or k not in expected}
    if different:
        raise ValueError(f"{path}.params {different}: only SDXL's values {expected} are supported")


class DiffusionEngine(LatentDiffusion):
    """sgm's DiffusionEngine as SDXL's yaml describes it: the UNet (network_config), the VAE with SDXL's scale,
    the conditioner under `conditioner.*`; eps prediction on SD's schedule (its denoiser config, read as data).
    Its keys are sgm's: `model.diffusion_model.*`, `conditioner.embedders.<i>.*`, `first_stage_model.*`."""

    TEXT_MODULE = "conditioner"

    def with_size_ids(self, text, ids):
        """A prompt's text part (Conditioner.text: the latent cache keeps it so) completed with (B, 6) size ids,
        without the conditioner (freed when training from the cache): the ids' width is what the UNet's label
        embedding takes beside the pooled embedding."""
        pooled = text.vector
        width = (self.model.diffusion_model.config.adm_in_channels - pooled.shape[1]) // (2 * len(ID_INPUTS))
        return Conditioning(text.crossattn, vector(pooled, ids.to(pooled.device), width))

    def __init__(self, unet, first_stage_model, conditioner, *, denoiser_config=None, scale_factor=0.13025,
                 disable_first_stage_autocast=False, input_key="jpg", sampler_config=None, optimizer_config=None,
                 scheduler_config=None, loss_fn_config=None, network_wrapper=None, ckpt_path=None,
                 use_ema=False, ema_decay_rate=0.9999, log_keys=None, no_cond_log=False, compile_model=False,
                 en_and_decode_n_samples_a_time=None):
        check_denoiser(denoiser_config)
        if ckpt_path:
            raise ValueError("ckpt_path is not supported: load weights with load_state_dict")
        super().__init__(unet, first_stage_model, conditioner, **SDXL_SCHEDULE, scale_factor=scale_factor,
                         use_ema=False, channels=unet.config.in_channels)
