"""Convert a ControlNet between the release's layout (sgm's for SDXL: `control_model.input_hint_block`, `zero_convs`,
`label_emb`) and diffusers' (a ControlNetModel or ControlNetUnionModel folder, or its single weights file). The
input may be any of them (a full ControlLDM file too); its layout and family are read from its keys.

    python tool_convert_control.py models/control_xl_canny.safetensors out/controlnet --to diffusers
    python tool_convert_control.py out/controlnet models/control_xl_canny_again.safetensors --to release
"""

import argparse

from ldm.errors import add_debug_argument, run_main
from ldm.files import check_checkpoint_file, check_config_file, check_output_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a control file or diffusers ControlNet folder (or its single file)")
    parser.add_argument("output", help="--to release: a .safetensors; --to diffusers: a folder, or a .safetensors")
    parser.add_argument("--to", choices=["release", "diffusers"], required=True)
    parser.add_argument("--config", help="the base's yaml (default: the shipped one of the control's family)")
    parser.add_argument("--force", action="store_true", help="replace the output if it exists")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    check_checkpoint_file(args.input)
    if args.config:
        check_config_file(args.config)
    if args.to == "release" or args.output.endswith(".safetensors"):
        check_output_file(args.output, args.force)

    from cldm.control_files import control_state  # torch and the models load only once the paths are good
    from cldm.model import normalize_keys, read_any
    from cldm.tools import extract_control, write_diffusers_control, write_output

    state = extract_control(read_any(args.input))
    if args.to == "release":
        path = write_output(state, args.output, force=args.force)
    else:
        path = write_diffusers_control(dict(control_state(normalize_keys(state))), args.output, args.config,
                                       args.force)
    print(f"wrote {path}: {len(state)} control tensors")


if __name__ == "__main__":
    run_main(main)
