"""Control-LoRA (Stability AI's control-lora files, rank 128 or 256): a ControlNet stored as the difference
from its base. The file marks itself with a `lora_controlnet` key and holds, in the release's ControlNet layout
without prefix, each of the encoder copy's linear and convolution weights as a low-rank pair `<name>.up`,
`<name>.down` (the weight is the base UNet's plus up @ down), and in full what the base does not have or the
training changed outright: the hint encoder, the zero convolutions, the norms.

The files also hold a bias for each low-rank layer. Loaders differ there: ComfyUI's sets every tensor of the file,
diffusers' (peft's) keeps the base's bias of a low-rank layer. This follows diffusers, the reference the project
is checked against; the two agree wherever those biases are the base's (frozen in training).
"""

import torch

from ldm.checkpoint import shape_of

MARK = "lora_controlnet"
COPIED = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")  # the base UNet's parts the copy starts from


def is_control_lora(control):
    return MARK in control


def layout_view(control):
    """The file's keys as a ControlNet's, each low-rank pair as the weight it makes (on the meta device, shapes
    only): what reading a control's layout from its keys needs."""
    view = {}
    for key in control:
        if key == MARK or key.endswith(".down"):
            continue
        if key.endswith(".up"):
            down = shape_of(control, key[:-len(".up")] + ".down")
            view[key[:-len(".up")] + ".weight"] = torch.empty(shape_of(control, key)[0], *down[1:], device="meta")
        else:
            view[key] = torch.empty(shape_of(control, key), device="meta")
    return view


def merged_control(control, unet_state, where="the Control-LoRA"):
    """The ControlNet weights (release layout, no prefix) a Control-LoRA makes on a base UNet's weights
    (`unet_state`, the UNet's own keys): the copied parts from the base, each low-rank pair added to its weight
    in fp32, the file's other tensors as they are but the low-rank layers' biases (see the module's note)."""
    state = {k: v for k, v in unet_state.items() if k.startswith(COPIED)}
    for key, value in control.items():
        low_rank_bias = key.endswith(".bias") and key[:-len(".bias")] + ".up" in control
        if key == MARK or key.endswith(".down") or low_rank_bias:
            continue
        if not key.endswith(".up"):
            state[key] = value
            continue
        name = key[:-len(".up")]
        if name + ".weight" not in state:
            raise KeyError(f"{where}: {name} has a low-rank pair but the base has no {name}.weight; is it for "
                           "another base?")
        base, down = state[name + ".weight"], control[name + ".down"]
        delta = value.float().flatten(1) @ down.float().flatten(1)
        state[name + ".weight"] = (base.float() + delta.reshape(base.shape)).to(base.dtype)
    return state
