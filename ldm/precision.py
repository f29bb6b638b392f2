"""The precision policy, stated once.

A model computes in the dtype its weights are held in: `create_model(config, dtype=torch.bfloat16)`,
`model.to(torch.float16)` or `.half()` cast the weights themselves, with no fp32 copy kept. Each network
(UNet, ControlNet, VAE, text encoder) casts what it is given to its own weights' dtype on entry. What a
network hands to the sampler or to the user (the UNet's prediction, the VAE's latents and images) goes back
in the caller's dtype, which is fp32. These stay fp32, each for its reason:
- the noise schedule and the sampler arithmetic: the DDIM update subtracts nearly equal numbers
  (alphas_cumprod runs from 0.9991 to 0.0047), below bf16's 8-bit and fp16's 11-bit mantissa, so
  `LatentDiffusion` keeps its schedule buffers fp32 whatever `.to()` is given, and the latents the
  samplers update are fp32;
- the timestep embedding's arguments: t * frequency reaches 999 radians, where bf16 is off by whole
  radians; it is computed in fp32 and only the finished embedding is cast (ldm.unet.timestep_embedding);
- GroupNorm and LayerNorm statistics, and the softmax inside attention: torch's kernels accumulate fp16
  and bf16 inputs in fp32 (`opmath`), so the norms and `scaled_dot_product_attention` get fp32 statistics
  with no fp32 copy of the activations;
- the VAE decode in fp16 when fp16 overflows (SD's decoder does at large sizes): it is redone in fp32.
"""

import os
from contextlib import contextmanager

import torch

from ldm.errors import NonFiniteError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHOICES = ("auto", *PRECISIONS)


def cpu_has_native_bf16():
    """True on CPUs that compute bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and far
    slower than fp32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve_precision(name="auto", device="cpu"):
    """'fp32', 'fp16' or 'bf16' for a requested precision: 'auto' is fp16 on CUDA, bf16 on a CPU with
    native bf16, fp32 otherwise."""
    if name not in CHOICES:
        raise ValueError(f"precision {name!r} is not one of {CHOICES}")
    if name != "auto":
        return name
    if torch.device(device).type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def add_precision_argument(parser, default="auto"):
    """The `--precision` flag every entry script takes."""
    parser.add_argument("--precision", choices=CHOICES, default=default,
                        help="the dtype the model computes in; auto: fp16 on CUDA, bf16 on a CPU with native bf16 "
                             "(AVX512-BF16 or AMX), fp32 otherwise")


def precision_name(dtype):
    """'fp32', 'fp16' or 'bf16' for a torch dtype."""
    for name, d in PRECISIONS.items():
        if d == dtype:
            return name
    raise ValueError(f"{dtype} is not a supported precision; use one of {list(PRECISIONS.values())}")


def weights_dtype(module):
    """The dtype a network computes in: that of its (first floating-point) weights."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def precision_of(model):
    """'fp32', 'fp16' or 'bf16': what a diffusion model's UNet computes in, as generation records it."""
    return precision_name(weights_dtype(model.model))


@contextmanager
def computing_in_fp32(module):
    """Within the block, `module` computes in fp32; afterwards its weights are back in their dtype, bit for bit
    (every fp16 and bf16 value is exactly representable in fp32)."""
    dtype = weights_dtype(module)
    module.float()
    try:
        yield module
    finally:
        module.to(dtype)


def parts_of(values):
    """The tensors of `values`: a tensor, a list of tensors and Nones, or a Conditioning (its tensors())."""
    if hasattr(values, "tensors"):
        return list(values.tensors().values())
    return [v for v in (values if isinstance(values, (list, tuple)) else [values]) if v is not None]


def all_finite(values):
    """A 0-d bool tensor, on the values' device: no NaN or infinity in `values` (see parts_of). Reading it is a
    device sync, so callers gather several before they look."""
    tensors = parts_of(values)
    if not tensors:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def non_finite_error(part, dtype, step=None, steps=None):
    """The message for NaN or infinity where a generation made them: the part, the step and what to try."""
    when = f" at step {step + 1} of {steps}" if step is not None else ""
    name = precision_name(dtype) if dtype in PRECISIONS.values() else str(dtype)
    return NonFiniteError(
        f"the {part} produced NaN or infinite values{when}, computing in {name}. In fp16 this is usually an "
        "overflow: run in bf16 or fp32 (--precision bf16 or fp32; an fp16 VAE decode already retries in fp32 by "
        "itself). If it happens in fp32 too, the weights themselves are broken: check the checkpoint.")


def check_finite(values, part, dtype=None):
    """`values` unchanged; NaN or infinity in them stops the generation with a message instead of becoming a
    black picture."""
    if not all_finite(values):
        raise non_finite_error(part, dtype or parts_of(values)[0].dtype)
    return values
