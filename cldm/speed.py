"""Ways to make each sampling step faster without changing what is computed: the channels-last memory format
and torch.compile of the networks that run at every step (the UNet and the ControlNets). bench/sampling.py
measures them; the README says where each helped and where it did not.
"""

import torch


def step_networks(model, nets=()):
    """The networks that run at every sampling step: the UNet, the model's ControlNet, and extra `nets`."""
    own = [model.control_model] if hasattr(model, "control_model") else []
    return [model.model.diffusion_model, *own, *(n for n in nets if n is not None)]


def speed_up(model, compile=False, channels_last=False, nets=()):
    """`model` (and the extra ControlNets `nets`) with the chosen speed-ups applied in place. torch.compile is
    applied with `Module.compile`, which keeps the checkpoint keys; it compiles on the first step."""
    for net in step_networks(model, nets):
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()
    return model
