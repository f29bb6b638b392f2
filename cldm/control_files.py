"""A control's layout read from its file: a yaml describing only a base (SD's, or SDXL's sgm yaml) takes the
control a checkpoint holds, with what the control may change read from its keys and shapes: its hint's
channels and its transformer depth per level (SDXL's reduced "mid" and "small" ControlNets have fewer, down
to none). The rest (widths, heads, the label embedding) is its base's, from which every control is made; a
control of another family than the base is refused with a message naming both."""

import re

from cldm.cldm import CONTROL_PREFIX, HINT_WIDTHS, ControlNet
from cldm.union import UnionControlNet
from ldm.checkpoint import CheckpointError, cross_attention_width, family, renamed, shape_of


def control_state(state):
    """The control weights of a state dict in the release layout, without their prefix."""
    return renamed(state, {k[len(CONTROL_PREFIX):]: k for k in state if k.startswith(CONTROL_PREFIX)})


def transformer_depths(control):
    """{input block index (or "middle"): transformer blocks} of a control's attention blocks, from its keys
    (an attention block without transformer blocks still has its projections)."""
    found = {}
    pattern = re.compile(r"(?:input_blocks\.(\d+)|middle_block)\.1\.(?:transformer_blocks\.(\d+)\.|proj_in\.)")
    for key in control:
        match = pattern.match(key)
        if match:
            block = int(match[1]) if match[1] is not None else "middle"
            depth = int(match[2]) + 1 if match[2] is not None else 0
            found[block] = max(found.get(block, 0), depth)
    return found


def control_params(base_params, control, where="the control"):
    """The ControlNet params of `control` (release-layout weights, no prefix) on a base UNet of `base_params`."""
    width, base_width = cross_attention_width(control, ""), base_params.get("context_dim")
    has_label = "label_emb.0.0.weight" in control
    channels = shape_of(control, "input_blocks.0.0.weight")[0] if "input_blocks.0.0.weight" in control else None
    if (width and width != base_width) or has_label != (base_params.get("num_classes") == "sequential") or (
            channels != base_params["model_channels"]):
        raise CheckpointError(f"{where} is a control for {family(width)} ({channels} channels"
                              f"{', SDXL label embedding' if has_label else ''}) but the base is {family(base_width)} "
                              f"({base_params['model_channels']} channels): use a control made for this base")
    levels = base_depths(base_params)
    found = transformer_depths(control)
    for block, blocks in found.items():
        if block != "middle":
            levels[level_of(base_params, block)] = blocks
    if found.get("middle", levels[-1]) != levels[-1]:
        raise CheckpointError(f"{where}: its middle block has {found['middle']} transformer blocks, its last level "
                              f"{levels[-1]}; a ControlNet's middle block follows its last level")
    params = params_on_base(base_params, int(shape_of(control, "input_hint_block.0.weight")[1]), levels)
    return {**params, **own_parts(control)}


def own_parts(control):
    """The params of what a control's file has of its own beyond its base's layout: its hint encoder's widths
    where they are not the release's, ControlNet-Union's control types and mixing layers."""
    params = {}
    widths = tuple(int(shape_of(control, f"input_hint_block.{i}.weight")[0]) for i in (0, 4, 8, 12))
    if widths != HINT_WIDTHS:
        params["hint_widths"] = list(widths)
    if "task_embedding" in control:
        types = int(shape_of(control, "task_embedding")[0])
        params.update(num_control_types=types,
                      mixer_layers=len({k.split(".")[1] for k in control if k.startswith("transformer_layes.")}),
                      type_features=int(shape_of(control, "control_add_embedding.linear_1.weight")[1]) // types)
    return params


CONTROL_TARGETS = {"cldm.cldm.ControlNet": ControlNet, "cldm.union.UnionControlNet": UnionControlNet}


def control_target(params):
    """The config target of a ControlNet of `params`."""
    return "cldm.union.UnionControlNet" if "num_control_types" in params else "cldm.cldm.ControlNet"


def control_net_class(params):
    return CONTROL_TARGETS[control_target(params)]


def base_depths(base_params):
    """The base UNet's transformer depth per level, as a list."""
    depth = base_params.get("transformer_depth", 1)
    return [depth] * len(base_params["channel_mult"]) if isinstance(depth, int) else list(depth)


def params_on_base(base_params, hint_channels, transformer_depth):
    """ControlNet params: its base UNet's, with its hint's channels and its transformer depth per level."""
    params = {k: v for k, v in base_params.items()  # a ControlNet has no LCM guidance projection of its own
              if k not in ("out_channels", "spatial_transformer_attn_type", "time_cond_proj_dim")}
    return {**params, "hint_channels": hint_channels, "transformer_depth": list(transformer_depth)}


# SDXL's reduced ControlNets (diffusers' trainers): transformer blocks per level, the middle block's as the last's
LAYOUTS = {"full": None, "mid": lambda n: [0] * (n - 1) + [1], "small": lambda n: [0] * n}


def layout_depths(base_params, layout):
    """The transformer depth per level of a control of `layout` on a base of `base_params`."""
    if layout not in LAYOUTS:
        raise ValueError(f"control layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    levels = base_depths(base_params)
    return levels if LAYOUTS[layout] is None else LAYOUTS[layout](len(levels))


def level_of(params, index):
    """The level of input block `index` (0 is the input convolution) in a UNet of `params`."""
    per_level = params["num_res_blocks"]
    per_level = [per_level] * len(params["channel_mult"]) if isinstance(per_level, int) else list(per_level)
    last = 0
    for level, count in enumerate(per_level):
        last += count + (level < len(per_level) - 1)  # its blocks, then its downsampling
        if index <= last:
            return level
    return len(per_level) - 1
