"""Low-VRAM mode: the model stays in CPU memory and each part visits the GPU only while it runs.

SD 1.5 with a ControlNet needs about 6 GB of weights on the GPU at once; run part by part it needs the
largest part (the UNet, 3.4 GB in fp32), at the cost of a transfer each time the running part changes.
"""

from contextlib import contextmanager

from cldm.cldm import control_nets

# where a control's work starts, called on its own before the net is: a ControlNet's hint encoder, a
# T2I-Adapter's first layer, an IP-Adapter's vision encoder and projection (its keys and values follow at once)
ENTRIES = ("input_hint_block", "unshuffle", "encoder", "image_proj")


def units(model, nets=()):
    """The parts moved together, in the order a generation runs them, with a name for each; `nets` are
    controls beside the model's own (ControlNets, T2I- and IP-Adapters), each its own part."""
    vae = model.first_stage_model
    parts = [("text encoder", [model.cond_stage_model])]
    # the sampler runs a net's hint encoder on its own, once per generation
    own = len(control_nets(model))
    for i, net in enumerate(control_nets(model, nets)):
        entries = [getattr(net, name) for name in ENTRIES if getattr(net, name, None) is not None]
        parts.append(("control" if i < own else f"control {i + 1 - own}", [net, *entries]))
    parts += [("unet", [model.model.diffusion_model]), ("vae encoder", [vae.encoder, vae.quant_conv]),
              ("vae decoder", [vae.post_quant_conv, vae.decoder])]
    return parts


@contextmanager
def low_vram(model, device, trace=None, nets=()):
    """Within the block, `model` and the extra ControlNets `nets` compute on `device`, holding one part there at
    a time.

    `trace`, a list, receives the name of each part as it moves onto the device.
    """
    home = next(model.parameters()).device
    nets = [n for n in nets if n is not None]
    homes = [next(n.parameters()).device for n in nets]
    model.to("cpu")
    for net in nets:
        net.to("cpu")
    for name, buffer in model._buffers.items():  # the noise schedule: small, and the sampler needs it there
        model._buffers[name] = buffer.to(device)
    active = {"unit": None}

    def bring(name, modules):
        def hook(module, args):
            if active["unit"] is modules:
                return
            if active["unit"] is not None:
                for m in active["unit"]:
                    m.to("cpu")
            for m in modules:
                m.to(device)
            active["unit"] = modules
            if trace is not None:
                trace.append(name)

        return hook

    handles = [m.register_forward_pre_hook(bring(name, modules))
               for name, modules in units(model, nets) for m in modules]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.to(home)
        for net, net_home in zip(nets, homes):
            net.to(net_home)
