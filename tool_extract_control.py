"""Extract the control-only weights (`control_model.*`) from a full ControlLDM checkpoint.

    python tool_extract_control.py models/control_sd15_canny.pth models/control_sd15_canny_only.safetensors
"""

import argparse

from ldm.errors import add_debug_argument, run_main
from ldm.files import check_checkpoint_file, check_output_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="full ControlLDM checkpoint")
    parser.add_argument("output", help=".safetensors to write")
    parser.add_argument("--force", action="store_true", help="replace the output if it exists")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    check_checkpoint_file(args.input)
    check_output_file(args.output, args.force)

    from cldm.model import read_any  # torch and the models load only once the paths are known to be good
    from cldm.tools import extract_control, write_output

    state = extract_control(read_any(args.input))
    path = write_output(state, args.output, force=args.force)
    print(f"wrote {path}: {len(state)} control tensors")


if __name__ == "__main__":
    run_main(main)
