"""Ways to make each sampling step faster without changing what is computed: the channels-last memory format,
torch.compile of the networks that run at every step (the UNet and the ControlNets), and another runtime for
them (ldm.runtime: OpenVINO). bench/sampling.py measures them; the README says where each helped and where it
did not.
"""

import torch

from cldm.cldm import ControlNet, control_nets
from ldm.runtime import use_backend


def speed_up(model, compile=False, channels_last=False, nets=(), backend="torch"):
    """`model` (and the extra ControlNets `nets`) with the chosen speed-ups applied in place. torch.compile is
    applied with `Module.compile`, which keeps the checkpoint keys; it compiles on the first step. A `backend`
    other than torch runs the UNet, the plain ControlNets (not Union nets or adapters, which stay in torch) and
    the VAE's decoder, each converted on its first call."""
    if compile and backend != "torch":
        raise ValueError(f"torch.compile and the {backend} backend are two ways to run the networks: choose one")
    networks = [model.model.diffusion_model, *control_nets(model, nets)]
    for net in networks:
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()
    runs = [net for net in networks if net is model.model.diffusion_model or type(net) is ControlNet]
    use_backend([*runs, model.first_stage_model], backend)
    return model
