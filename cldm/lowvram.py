"""Low-VRAM mode: the model stays in CPU memory and each part visits the GPU only while it runs.

SD 1.5 with a ControlNet needs about 6 GB of weights on the GPU at once; run part by part it needs the
largest part (the UNet, 3.4 GB in fp32), at the cost of a transfer each time the running part changes.
"""

from contextlib import contextmanager


def units(model):
    """The parts moved together, in the order a generation runs them, with a name for each."""
    vae = model.first_stage_model
    parts = [("text encoder", [model.cond_stage_model])]
    if hasattr(model, "control_model"):
        # the sampler runs the hint encoder on its own, once per generation
        parts.append(("control", [model.control_model, model.control_model.input_hint_block]))
    parts += [("unet", [model.model.diffusion_model]), ("vae encoder", [vae.encoder, vae.quant_conv]),
              ("vae decoder", [vae.post_quant_conv, vae.decoder])]
    return parts


@contextmanager
def low_vram(model, device, trace=None):
    """Within the block, `model` computes on `device` holding one part there at a time.

    `trace`, a list, receives the name of each part as it moves onto the device.
    """
    home = next(model.parameters()).device
    model.to("cpu")
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

    handles = [m.register_forward_pre_hook(bring(name, modules)) for name, modules in units(model) for m in modules]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.to(home)
