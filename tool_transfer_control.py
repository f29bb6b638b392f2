"""Move a ControlNet trained on one SD 1.x base to another (a community model): control + community - base.

    python tool_transfer_control.py --control models/control_sd15_canny.pth --base models/v1-5-pruned.ckpt \
        --community models/anything-v3.safetensors --output models/control_any3_canny.safetensors

The control's copied encoder is shifted by the community model's difference from the base; the rest of the
control is kept. Writes a full ControlLDM checkpoint (the community model plus the control), or only the
control with --control-only.
"""

import argparse

from ldm.errors import add_debug_argument, run_main
from ldm.files import check_checkpoint_file, check_output_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control", required=True, help="full ControlLDM or control-only checkpoint")
    parser.add_argument("--base", required=True, help="the SD checkpoint the control was trained on")
    parser.add_argument("--community", required=True, help="the SD checkpoint to move the control to")
    parser.add_argument("--output", required=True, help=".safetensors to write")
    parser.add_argument("--control-only", action="store_true", help="write only the control_model.* weights")
    parser.add_argument("--force", action="store_true", help="replace the output if it exists")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    check_checkpoint_file(args.control)
    check_checkpoint_file(args.base)
    check_checkpoint_file(args.community)
    check_output_file(args.output, args.force)

    from cldm.model import read_any  # torch and the models load only once the paths are known to be good
    from cldm.tools import extract_control, transfer_control, write_output

    state = transfer_control(read_any(args.control), read_any(args.base), read_any(args.community))
    if args.control_only:
        state = extract_control(state)
    path = write_output(state, args.output, force=args.force)
    print(f"wrote {path}: {len(state)} tensors")


if __name__ == "__main__":
    run_main(main)
