"""Ways to make each sampling step faster without changing what is computed: the channels-last memory format
and torch.compile of the networks that run at every step (the UNet and the ControlNets). bench/sampling.py
measures them; the README says where each helped and where it did not.
"""

import torch

from cldm.cldm import control_nets


def speed_up(model, compile=False, channels_last=False, nets=()):
    """`model` (and the extra ControlNets `nets`) with the chosen speed-ups applied in place. torch.compile is
    applied with `Module.compile`, which keeps the checkpoint keys; it compiles on the first step."""
    for net in [model.model.diffusion_model, *control_nets(model, nets)]:
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()
    return model
