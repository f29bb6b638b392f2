"""Write weights for shipping: drop what the yaml recomputes (the noise schedule), optionally in fp16.

    python -m training.export runs/toy_base/checkpoints/base-004000.safetensors models/toy_sd.safetensors --half
"""

import argparse

import torch

from cldm.model import OPTIONAL_KEYS, read_any
from ldm.checkpoint import save_safetensors


def shippable(state, half=False):
    out = {}
    for key, value in state.items():
        if key in OPTIONAL_KEYS:
            continue
        out[key] = value.half() if half and value.is_floating_point() else value
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--half", action="store_true", help="store floating-point weights as fp16")
    parser.add_argument("--prefix", help="keep only keys with this prefix (e.g. control_model.)")
    args = parser.parse_args(argv)
    state = read_any(args.input)
    if args.prefix:
        state = {k: v for k, v in state.items() if k.startswith(args.prefix)}
    out = shippable(state, args.half)
    save_safetensors(out, args.output)
    size = sum(v.numel() * v.element_size() for v in out.values()) / 2**20
    print(f"wrote {args.output}: {len(out)} tensors, {size:.1f} MiB")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
