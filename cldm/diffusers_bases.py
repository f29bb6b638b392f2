"""SD 1.x and SDXL bases in diffusers' folder layout (model_index.json; unet, text_encoder, [text_encoder_2,] vae),
read into the release's (SD 1.x) or sgm's (SDXL) layout: the yaml is made from the folders' configs, the weights
mapped to its keys. The UNet's and the VAE's through diffusers' own single-file conversion run on the model's own
tensors (each converted tensor is a view of one of ours, so where it lands names its key); the text encoders by
their known names. LCM-distilled SD 1.5 models (LCM_Dreamshaper_v7) come this way, with their UNet's guidance
embedding.
"""

import copy
import json
from pathlib import Path

import torch

from cldm.diffusers_interop import GUIDANCE_PROJECTION, diffusers_unet_config, ldm_unet_params
from cldm.vae_files import from_diffusers, keymap_of_views
from ldm.checkpoint import CheckpointError, read_state_dict
from ldm.config import load_yaml

PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")
SD1_YAML = Path(__file__).resolve().parents[1] / "models/cldm_v15.yaml"
CLIP_ARCH = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act")
EMBEDDERS = "sgm.modules.encoders.modules."
# OpenCLIP's text tower names for transformers' CLIPTextModelWithProjection's (per layer after encoder.layers.<i>.)
OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def part_config(folder, part):
    config = Path(folder) / part / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder} is not an SDXL diffusers folder: {part}/config.json is missing")
    return json.loads(config.read_text())


def part_weights(folder, part):
    files = sorted((Path(folder) / part).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}/{part} holds no .safetensors weights")
    state = {}
    for file in files:
        state.update(read_state_dict(file))
    return state


def is_sdxl(folder):
    return part_config(folder, "unet").get("addition_embed_type") == "text_time"


def base_config(folder):
    """The yaml (as read) of a diffusers base folder: sgm's for SDXL, the release's ControlLDM's for SD 1.x."""
    return sgm_config(folder) if is_sdxl(folder) else sd1_config(folder)


def first_stage_params(vae):
    channels = vae["block_out_channels"]
    return {"embed_dim": vae["latent_channels"], "ddconfig": {
        "double_z": True, "z_channels": vae["latent_channels"], "resolution": 256, "in_channels": vae["in_channels"],
        "out_ch": vae["out_channels"], "ch": channels[0], "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": vae["layers_per_block"], "attn_resolutions": [], "dropout": 0.0}}


def sd1_config(folder):
    """cldm_v15.yaml made to a SD 1.x diffusers folder: its UNet (with an LCM model's guidance embedding), text
    encoder and VAE, the ControlNet shaped as the UNet's encoder. SD 2.x folders (an OpenCLIP text tower saved as
    CLIPTextModel) are not read: give their single-file checkpoint."""
    unet, text, vae = (part_config(folder, part) for part in ("unet", "text_encoder", "vae"))
    if text.get("hidden_act") != "quick_gelu":
        raise CheckpointError(f"{folder} is not an SD 1.x or SDXL base (its text encoder is not CLIP ViT-L's kind): "
                              "give an SD 2.x model as its single-file checkpoint")
    scheduler = Path(folder) / "scheduler" / "scheduler_config.json"
    if scheduler.is_file() and json.loads(scheduler.read_text()).get("prediction_type") == "v_prediction":
        raise CheckpointError(f"{folder} is a v-prediction model: give it as a single-file checkpoint with its yaml")
    config = copy.deepcopy(load_yaml(SD1_YAML))
    params = config["model"]["params"]
    unet_params = ldm_unet_params(unet)
    params["unet_config"]["params"] = {**unet_params, "out_channels": unet.get("out_channels", 4)}
    params["control_stage_config"]["params"] = {**{k: v for k, v in unet_params.items() if k != "time_cond_proj_dim"},
                                                "hint_channels": 3}
    params["cond_stage_config"]["params"] = {"arch": {k: text[k] for k in CLIP_ARCH}}
    params["first_stage_config"]["params"].update(first_stage_params(vae))
    params["scale_factor"] = vae.get("scaling_factor", 0.18215)
    return config


def sgm_config(folder):
    """The sgm yaml (as read) of an SDXL diffusers folder, from its parts' configs."""
    unet, text, text_2, vae = (part_config(folder, part) for part in PARTS)
    if unet.get("addition_embed_type") != "text_time":
        raise CheckpointError(f"{folder} is not an SDXL base (its UNet has no text_time embedding)")
    unet_params = {**ldm_unet_params(unet), "out_channels": unet.get("out_channels", 4)}
    clip = {k: text[k] for k in CLIP_ARCH}
    bigg = dict(width=text_2["hidden_size"], heads=text_2["num_attention_heads"], layers=text_2["num_hidden_layers"],
                output_dim=text_2["projection_dim"], mlp_ratio=text_2["intermediate_size"] / text_2["hidden_size"])
    ids = [{"input_key": key, "target": EMBEDDERS + "ConcatTimestepEmbedderND",
            "params": {"outdim": unet["addition_time_embed_dim"]}}
           for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
        "scale_factor": vae.get("scaling_factor", 0.13025),
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
            {"input_key": "txt", "target": EMBEDDERS + "FrozenCLIPEmbedder",
             "params": {"layer": "hidden", "layer_idx": text["num_hidden_layers"] - 1, "arch": clip}},
            {"input_key": "txt", "target": EMBEDDERS + "FrozenOpenCLIPEmbedder2",
             "params": {"arch": "diffusers", "layer": "penultimate", "always_return_pooled": True, "legacy": False,
                        "text_cfg": bigg}},
            *ids]}},
        "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                               "params": first_stage_params(vae)},
    }}}


def base_state(folder, model, config):
    """The folder's weights in the keys of `model` (built from `config`, base_config(folder) or another)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = model.state_dict()
    state = {}
    params = config["model"]["params"]
    unet = {k[len("model.diffusion_model."):]: v for k, v in ours.items() if k.startswith("model.diffusion_model.")}
    converted = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in unet.items()},
                                            diffusers_unet_config((params.get("network_config")
                                                                   or params["unet_config"])["params"]))
    keymap = {**keymap_of_views(unet, converted), **{theirs: ours for ours, theirs in GUIDANCE_PROJECTION.items()}}
    for key, value in part_weights(folder, "unet").items():
        if key not in keymap or keymap[key] not in unet:
            raise CheckpointError(f"{folder}/unet: {key} has no place in this model's UNet")
        state[f"model.diffusion_model.{keymap[key]}"] = value.reshape(unet[keymap[key]].shape)
    sdxl = "conditioner" in params or "conditioner_config" in params
    text_prefix = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
    for key, value in part_weights(folder, "text_encoder").items():
        if not key.endswith("position_ids"):  # transformers 4 saved a text_model level, 5 does not
            state[f"{text_prefix}text_model.{key.removeprefix('text_model.')}"] = value
    if sdxl:
        state.update(open_clip_state(part_weights(folder, "text_encoder_2"), "conditioner.embedders.1.model."))
        state["conditioner.embedders.1.model.logit_scale"] = ours["conditioner.embedders.1.model.logit_scale"]
    vae = {k[len("first_stage_model."):]: v for k, v in ours.items() if k.startswith("first_stage_model.")}
    state.update({f"first_stage_model.{k}": v for k, v in
                  from_diffusers(vae, part_weights(folder, "vae"), f"{folder}/vae").items()})
    return state


def open_clip_state(hf, prefix):
    """transformers' CLIPTextModelWithProjection weights -> OpenCLIP's text tower keys (q, k, v joined)."""
    hf = {key.removeprefix("text_model."): value for key, value in hf.items()}  # saved with or without that level
    out = {}
    for name, value in hf.items():
        if name.startswith("encoder.layers."):
            layer, rest = name[len("encoder.layers."):].split(".", 1)
            part, kind = rest.rsplit(".", 1)
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue
            out[f"{prefix}transformer.resblocks.{layer}.{OPEN_CLIP_LAYER[part]}.{kind}"] = value
        elif name == "embeddings.token_embedding.weight":
            out[f"{prefix}token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out[f"{prefix}positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out[f"{prefix}ln_final.{name.split('.')[-1]}"] = value
        elif name == "text_projection.weight":
            out[f"{prefix}text_projection"] = value.T.contiguous()
        elif not name.endswith("position_ids"):
            raise CheckpointError(f"text_encoder_2: {name} has no place in OpenCLIP's text tower")
    layers = {k.split(".")[2] for k in hf if k.startswith("encoder.layers.")}
    for layer in layers:
        for kind in ("weight", "bias"):
            parts = [hf[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out
