"""ControlNets in diffusers' format, both ways.

Export uses diffusers' own single-file conversion (`convert_controlnet_checkpoint`). Import inverts that
same conversion: the key map is read off by converting a state dict of placeholder tensors and seeing
where each one lands, so the two directions cannot drift apart.
"""

import json
import warnings
from pathlib import Path

import torch
from diffusers import ControlNetModel, ControlNetUnionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, create_unet_diffusers_config_from_ldm

from cldm.cldm import CONTROL_PREFIX, HINT_WIDTHS
from cldm.control_files import control_net_class
from ldm.checkpoint import CheckpointError, read_lazily, renamed, save_safetensors, shape_of
from ldm.config import load_yaml
from ldm.sdxl import ID_FEATURES

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def _control_params(original_config):
    if not isinstance(original_config, dict):
        original_config = load_yaml(original_config)
    return original_config, original_config["model"]["params"]["control_stage_config"]["params"]


# The fields of a UNet2DConditionModel config that a ControlNetModel shares.
SHARED_UNET_FIELDS = (
    "in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
    "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block",
)


def diffusers_controlnet_config(original_config, global_average_pooling=False, id_features=ID_FEATURES):
    """The `ControlNetModel` config equivalent to a release yaml (a path or its parsed dict).

    Built from diffusers' UNet config helper applied to the control's params; diffusers' own
    `create_controlnet_diffusers_config_from_ldm` calls that helper without its checkpoint argument
    in some releases, so it is not used.
    """
    _, control_params = _control_params(original_config)
    unet_config = diffusers_unet_config({"out_channels": control_params["in_channels"], **control_params},
                                        id_features)
    config = {
        **{k: unet_config[k] for k in SHARED_UNET_FIELDS},
        "conditioning_channels": control_params["hint_channels"],
        "conditioning_embedding_out_channels": list(control_params.get("hint_widths", HINT_WIDTHS)),
        "global_pool_conditions": bool(global_average_pooling),
    }
    if "num_control_types" in control_params:  # ControlNet-Union, its types through the ids' Fourier features
        config.update(num_control_type=control_params["num_control_types"],
                      num_trans_layer=control_params.get("mixer_layers", 1),
                      num_trans_head=control_params.get("mixer_heads", 8),
                      num_trans_channel=control_params["model_channels"],
                      num_proj_channel=control_params["model_channels"],
                      addition_time_embed_dim=control_params.get("type_features", ID_FEATURES))
    return config


def diffusers_class(config):
    """The diffusers class of a ControlNet config: ControlNetUnionModel where it has control types."""
    return ControlNetUnionModel if "num_control_type" in config else ControlNetModel


def diffusers_unet_config(unet_params, id_features=ID_FEATURES):
    """The UNet2DConditionModel config of a UNet's yaml params; SDXL's label embedding (num_classes:
    sequential) is diffusers' "text_time" embedding whatever the context width (diffusers' helper recognises
    only the released widths), its ids through `id_features` Fourier features each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is deprecated there and does not affect the weights
        vae = {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}  # only its sample size is read from the VAE
        config = create_unet_diffusers_config_from_ldm(
            {"model": {"params": {"unet_config": {"params": unet_params}, "first_stage_config": vae}}}, {},
            image_size=512)
    if unet_params.get("time_cond_proj_dim"):
        config["time_cond_proj_dim"] = unet_params["time_cond_proj_dim"]
    if unet_params.get("num_classes") == "sequential":
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=id_features,
                      projection_class_embeddings_input_dim=unet_params["adm_in_channels"])
    return config


def ldm_control_params(diffusers_config):
    """The release yaml's ControlNet params equivalent to a diffusers `ControlNetModel` (or
    `ControlNetUnionModel`) config."""
    c = diffusers_config
    params = {**ldm_unet_params(c), "hint_channels": c.get("conditioning_channels", 3)}
    widths = tuple(c.get("conditioning_embedding_out_channels") or HINT_WIDTHS)
    if widths != HINT_WIDTHS:
        params["hint_widths"] = list(widths)
    if c.get("_class_name") == "ControlNetUnionModel" or "num_control_type" in c:
        params.update(num_control_types=c.get("num_control_type", 6), mixer_layers=c.get("num_trans_layer", 1),
                      mixer_heads=c.get("num_trans_head", 8), type_features=c["addition_time_embed_dim"])
    return params


def ldm_unet_params(diffusers_config):
    """The yaml's UNet params equivalent to a diffusers UNet2DConditionModel (or ControlNetModel) config."""
    c = diffusers_config
    channels = list(c["block_out_channels"])
    heads = c.get("num_attention_heads") or c["attention_head_dim"]  # diffusers' legacy name for head count
    params = dict(
        in_channels=c.get("in_channels", 4), model_channels=channels[0],
        channel_mult=[ch // channels[0] for ch in channels],
        num_res_blocks=c.get("layers_per_block", 2), context_dim=c["cross_attention_dim"],
        attention_resolutions=[2**i for i, t in enumerate(c["down_block_types"]) if t.startswith("CrossAttn")],
        use_linear_in_transformer=c.get("use_linear_projection", False),
        transformer_depth=c.get("transformer_layers_per_block", 1), use_spatial_transformer=True, legacy=False,
    )
    if isinstance(heads, int):
        params["num_heads"] = heads
    else:
        params["num_head_channels"] = channels[0] // heads[0]
    if c.get("time_cond_proj_dim"):  # an LCM-distilled UNet's guidance embedding
        params["time_cond_proj_dim"] = c["time_cond_proj_dim"]
    if c.get("addition_embed_type") == "text_time":  # SDXL: the vector conditioning's label embedding
        params.update(num_classes="sequential", adm_in_channels=c["projection_class_embeddings_input_dim"])
    return params


# SDXL's label embedding, which diffusers' single-file ControlNet conversion leaves out
LABEL_EMBEDDING = {f"label_emb.0.{ldm}.{kind}": f"add_embedding.linear_{n}.{kind}"
                   for ldm, n in ((0, 1), (2, 2)) for kind in ("weight", "bias")}
# an LCM-distilled UNet's guidance projection (UNet keys), which diffusers' single-file conversion leaves out
GUIDANCE_PROJECTION = {"time_embed.cond_proj.weight": "time_embedding.cond_proj.weight"}
# ControlNet-Union's own parts, named alike in both layouts (as other sgm-layout readers name them too)
UNION_PARTS = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


def control_to_diffusers_keys(control_state, diffusers_config):
    """Control weights (release layout, no `control_model.` prefix) -> diffusers ControlNetModel keys."""
    converted = convert_controlnet_checkpoint(dict(control_state), diffusers_config)
    return {**converted, **{LABEL_EMBEDDING[k]: v for k, v in control_state.items() if k in LABEL_EMBEDDING},
            **{k: v for k, v in control_state.items() if k.startswith(UNION_PARTS)}}


def diffusers_to_control_keymap(diffusers_config):
    """{diffusers key: release key} for a ControlNet of this config."""
    params = ldm_control_params(diffusers_config)
    with torch.device("meta"):
        net = control_net_class(params)(**params)
    placeholders = dict(net.state_dict())
    converted = control_to_diffusers_keys(placeholders, diffusers_config)
    source_key = {id(t): k for k, t in placeholders.items()}
    return {dk: source_key[id(t)] for dk, t in converted.items() if t is not None}


def export_diffusers_controlnet(control_state, original_config, folder, global_average_pooling=False):
    """Write a diffusers ControlNetModel folder (config.json + safetensors) from release-layout weights."""
    config = diffusers_controlnet_config(original_config, global_average_pooling)
    net = diffusers_class(config)(**config)
    state = control_to_diffusers_keys(control_state, config)
    net.load_state_dict(state, strict=True)
    net.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def read_diffusers_controlnet(folder):
    """Release-layout control weights (no prefix) from a diffusers ControlNetModel folder."""
    folder = Path(folder)
    config_file, weights_file = folder / "config.json", folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{folder} is not a diffusers ControlNet folder: it needs config.json and {WEIGHTS_NAME}")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") not in (None, "ControlNetModel", "ControlNetUnionModel"):
        raise CheckpointError(f"{folder} holds a {config['_class_name']}, not a ControlNetModel or "
                              "ControlNetUnionModel")
    return control_from_diffusers(read_lazily(weights_file), config, folder)


def control_from_diffusers(state, config, where):
    """Release-layout control weights (no prefix) from diffusers ControlNetModel weights of `config`."""
    keymap = diffusers_to_control_keymap(config)
    unknown = sorted(set(state) - set(keymap))
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} weights have no place in a ControlNet of its config: "
                              f"{unknown[:5]}")
    return renamed(state, {keymap[k]: k for k in state})


def config_from_keys(state):
    """The ControlNetModel config a diffusers-layout ControlNet's weights imply (a single file has no
    config.json): widths, blocks, the label embedding and transformer depth per level (SDXL's full, mid and
    small layouts) from its keys and shapes. Heads, which weights do not show, are the released families':
    8 for SD 1.x's 768-wide context, else 64 channels each; the key layout does not depend on them."""
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down_blocks.")})
    shape = lambda key: shape_of(state, key)  # noqa: E731 (read from the file's header, not its data)
    channels = [int(shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0]) for i in levels]
    depth = lambda prefix: len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})  # noqa: E731
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in levels]
    depths = [depth(f"down_blocks.{i}.attentions.0.transformer_blocks.") for i in levels]
    context = next((int(shape(k)[1]) for k in state if k.endswith("attn2.to_k.weight")), None)
    label = "add_embedding.linear_1.weight" in state
    context = context or (2048 if label else 768)
    proj_in = next((shape(k) for k in state if k.endswith("proj_in.weight")), None)
    config = dict(
        in_channels=int(shape("conv_in.weight")[1]), block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        layers_per_block=len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.resnets.")}),
        cross_attention_dim=context, transformer_layers_per_block=depths,
        attention_head_dim=8 if context == 768 else [max(1, c // 64) for c in channels],
        use_linear_projection=proj_in is not None and len(proj_in) == 2,
        conditioning_channels=int(shape("controlnet_cond_embedding.conv_in.weight")[1]),
        conditioning_embedding_out_channels=[int(shape(k)[0]) for k in (
            "controlnet_cond_embedding.conv_in.weight", *(f"controlnet_cond_embedding.blocks.{i}.weight"
                                                          for i in (1, 3, 5)))])
    if "task_embedding" in state:  # ControlNet-Union, whose types go through the ids' Fourier features
        types = int(shape("task_embedding")[0])
        config.update(num_control_type=types,
                      addition_time_embed_dim=int(shape("control_add_embedding.linear_1.weight")[1]) // types,
                      num_trans_channel=channels[0], num_proj_channel=channels[0],
                      num_trans_layer=len({k.split(".")[1] for k in state if k.startswith("transformer_layes.")}))
    if label:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=ID_FEATURES,
                      projection_class_embeddings_input_dim=int(shape("add_embedding.linear_1.weight")[1]))
    return config


def diffusers_models(state, original_config, id_features=ID_FEATURES):
    """A diffusers (UNet2DConditionModel, ControlNetModel) pair holding a full ControlLDM state dict's weights
    (SDXL's with `id_features` Fourier features a size or crop id)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    original_config, _ = _control_params(original_config)
    params = original_config["model"]["params"]
    unet_config = diffusers_unet_config((params.get("unet_config") or params["network_config"])["params"],
                                        id_features)
    unet = UNet2DConditionModel(**unet_config).eval()
    converted = convert_ldm_unet_checkpoint(state, unet_config)
    converted.update({theirs: state[f"model.diffusion_model.{ours}"] for ours, theirs in GUIDANCE_PROJECTION.items()
                      if f"model.diffusion_model.{ours}" in state})
    unet.load_state_dict(converted, strict=True)
    cn_config = diffusers_controlnet_config(original_config, id_features=id_features)
    controlnet = diffusers_class(cn_config)(**cn_config).eval()
    control = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
    controlnet.load_state_dict(control_to_diffusers_keys(control, cn_config), strict=True)
    return unet, controlnet


def export_control_only(model, path):
    """The control weights of a ControlLDM, in the release layout (`control_model.*`), as safetensors."""
    state = {CONTROL_PREFIX + k: v for k, v in model.control_model.state_dict().items()}
    save_safetensors(state, path)
    return Path(path)
