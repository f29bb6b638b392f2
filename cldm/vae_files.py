"""A VAE file given apart from the base (`--vae`): SDXL's fp16-fix VAE, or a fine-tuned one. The release's
layout (`first_stage_model.*`, or the VAE's own keys) or diffusers' AutoencoderKL weights, which are mapped
back through diffusers' own conversion (run on the model's VAE: each converted tensor is a view of one of
ours, so where it lands names its key)."""

from ldm.checkpoint import CheckpointError, read_state_dict

PREFIX = "first_stage_model."


def vae_state(model, source):
    """The VAE weights of `source` (a file) in the model's VAE's keys."""
    state = read_state_dict(source)
    ours = model.first_stage_model.state_dict()
    if any(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    elif any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        state = from_diffusers(ours, state, source)
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"{source} is not a VAE of this model: {len(missing)} of its weights missing (e.g. "
                              f"{missing[:3]}), {len(unexpected)} unknown (e.g. {unexpected[:3]})")
    wrong = [k for k in ours if ours[k].shape != state[k].shape]
    if wrong:
        raise CheckpointError(f"{source} is a VAE of another shape: {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                              f"this model's {tuple(ours[wrong[0]].shape)}")
    return state


def from_diffusers(ours, state, source):
    """diffusers AutoencoderKL weights -> our VAE's keys (and shapes: its attention is 1x1 convolutions)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    levels = len({k.split(".")[2] for k in ours if k.startswith("encoder.down.")})
    config = {"down_block_types": [None] * levels, "up_block_types": [None] * levels}  # read for their count only
    keymap = keymap_of_views(ours, convert_ldm_vae_checkpoint({PREFIX + k: v for k, v in ours.items()}, config))
    unknown = sorted(set(state) - set(keymap))
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} weights have no place in this model's VAE: {unknown[:3]}")
    return {keymap[k]: v.reshape(ours[keymap[k]].shape) for k, v in state.items()}


def keymap_of_views(ours, converted):
    """{converted key: our key} of a conversion run on our own tensors: each converted tensor is one of ours or a
    view of it (reshaped, sliced), so its storage names the key it came from."""
    where = {t.untyped_storage().data_ptr(): k for k, t in ours.items()}
    return {key: where[t.untyped_storage().data_ptr()] for key, t in converted.items()}


def load_vae(model, source):
    """Replace the model's VAE weights with those of `source`, in the VAE's dtype."""
    vae = model.first_stage_model
    dtype = next(vae.parameters()).dtype
    vae.load_state_dict({k: v.to(dtype) for k, v in vae_state(model, source).items()}, strict=True)
    return model
