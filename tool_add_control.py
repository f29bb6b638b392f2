"""Make the initial weights of a ControlNet from a Stable Diffusion checkpoint.

    python tool_add_control.py models/v1-5-pruned.ckpt models/control_sd15_ini.safetensors --config models/cldm_v15.yaml
    python tool_add_control.py models/sd_xl_base_1.0.safetensors models/control_sdxl_small_ini.safetensors \
        --config models/sd_xl_base.yaml --layout small
    python tool_add_control.py models/sd_xl_base_1.0.safetensors models/union_sdxl_ini.safetensors \
        --config models/sd_xl_base.yaml --union 8

The control's encoder is a copy of the UNet's; its hint encoder is freshly initialised and its zero
convolutions are zero, so the result generates exactly what the SD checkpoint does until trained. The file is
complete, noise schedule included, so `model.load_state_dict(...)` loads it strictly, as the release's did.
"""

import argparse

from ldm.errors import add_debug_argument, run_main
from ldm.files import check_checkpoint_file, check_config_file, check_output_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="SD checkpoint (.ckpt, .pth or .safetensors)")
    parser.add_argument("output", help="ControlLDM initial weights to write (.safetensors)")
    parser.add_argument("--config", default="models/cldm_v15.yaml",
                        help="cldm_v15.yaml (SD 1.x), cldm_v21.yaml (SD 2.x) or sd_xl_base.yaml (SDXL)")
    parser.add_argument("--layout", choices=("full", "mid", "small"), default="full",
                        help="SDXL: the control's transformer blocks per level, the base's (full) or diffusers' "
                             "reduced mid (only the last level's first) and small (none)")
    parser.add_argument("--union", type=int, choices=(6, 8), help="SDXL: a ControlNet-Union of 6 control types, or "
                        "ProMax's 8 (tile and repaint too), to train with train.py --control-types")
    parser.add_argument("--seed", type=int, default=0, help="of the hint encoder's random initial weights")
    parser.add_argument("--force", action="store_true", help="replace the output if it exists")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    check_checkpoint_file(args.input)
    check_config_file(args.config)
    check_output_file(args.output, args.force)

    from cldm.model import read_any  # torch and the models load only once the paths are known to be good
    from cldm.tools import add_control, write_output

    state, added = add_control(read_any(args.input), args.config, args.seed, args.layout, args.union)
    for key in added:
        print(f"new: {key}")
    path = write_output(state, args.output, force=args.force)
    print(f"wrote {path}: {len(state)} tensors, {len(added)} new (hint encoder, zero convs"
          f"{', the Union parts' if args.union else ''})")


if __name__ == "__main__":
    run_main(main)
