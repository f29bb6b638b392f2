"""Peak memory of a real-size SDXL generation through the CLI, offline: random weights at SDXL's real size
written in the files users download (the base in sgm's single-file layout, fp16, as sd_xl_base_1.0.safetensors;
a full SDXL ControlNet in diffusers' single-file layout, fp16, as diffusers' canny/depth files), then
`generate.py --ckpt BASE CONTROL` at 512x512, 2 steps, measured as the child process's peak resident memory.

    python bench/sdxl_memory.py [--files /tmp/sdxl_files] [--precision fp32] [--resolution 512] [--steps 2]

The files (about 9.5 GB) are made once and kept in --files.
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cldm.control_files import control_params  # noqa: E402
from cldm.diffusers_interop import control_to_diffusers_keys, diffusers_controlnet_config  # noqa: E402
from cldm.model import build_model, controlled  # noqa: E402
from ldm.checkpoint import save_safetensors  # noqa: E402
from ldm.config import load_yaml  # noqa: E402
from ldm.diffusion import SCHEDULE_BUFFERS  # noqa: E402

YAML = ROOT / "models/sd_xl_base.yaml"
GIB = 2**30


def random_like(shape, key, gen):
    """A weight of `shape` as a trained network's are scaled: norms near 1, biases small, matrices 1/sqrt(fan in)
    (so that 70 random transformer blocks stay finite), in fp16 as the released files hold them."""
    if key.endswith("bias"):
        return (0.02 * torch.randn(shape, generator=gen)).half()
    if len(shape) <= 1:
        return (1.0 + 0.05 * torch.randn(shape, generator=gen)).half()
    fan_in = int(np.prod(shape[1:]))
    return (torch.randn(shape, generator=gen) / fan_in**0.5).half()


def make_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    base_file, control_file = folder / "sd_xl_base_random.safetensors", folder / "controlnet_xl_random.safetensors"
    gen = torch.Generator().manual_seed(0)
    config = load_yaml(YAML)
    if not base_file.is_file():
        shapes = {k: tuple(v.shape) for k, v in build_model(config, device="meta").state_dict().items()
                  if k not in (*SCHEDULE_BUFFERS, "logvar") and not k.endswith("position_ids")}
        save_safetensors({k: random_like(s, k, gen) for k, s in shapes.items()}, base_file)
    if not control_file.is_file():
        unet = config["model"]["params"]["network_config"]["params"]
        params = {k: v for k, v in unet.items() if k != "out_channels"}
        full = controlled(config, {**params, "hint_channels": 3})
        with torch.device("meta"):
            net = build_model(full, device="meta").control_model
        placeholders = dict(net.state_dict())
        names = control_to_diffusers_keys(placeholders, diffusers_controlnet_config(full))
        save_safetensors({k: random_like(tuple(v.shape), k, gen) for k, v in names.items()}, control_file)
        assert control_params(unet, placeholders)["transformer_depth"] == [1, 2, 10]
    return base_file, control_file


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", default="/tmp/sdxl_files")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    base, control = make_files(Path(args.files))
    hint = Path(args.files) / "hint.png"
    picture = np.zeros((args.resolution, args.resolution, 3), np.uint8)
    picture[args.resolution // 4:-args.resolution // 4, args.resolution // 4:-args.resolution // 4] = 255
    from PIL import Image

    Image.fromarray(picture).save(hint)
    command = [sys.executable, str(ROOT / "generate.py"), "--ckpt", str(base), str(control), "--hint", str(hint),
               "--prompt", "a house", "--resolution", str(args.resolution), "--steps", str(args.steps),
               "--precision", args.precision, "--seed", "1", "--out", str(Path(args.files) / "out.png")]
    print("command:", " ".join(sys.argv))
    print("runs:", " ".join(command))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    print(f"machine: {cpu}, {os.cpu_count()} cores, {memory:.1f} GiB, torch {torch.__version__}")
    print(f"files: base {base.stat().st_size / GIB:.2f} GiB, control {control.stat().st_size / GIB:.2f} GiB")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
    print(f"peak resident memory of the CLI run: {peak:.2f} GiB ({args.precision}, {args.resolution}x"
          f"{args.resolution}, {args.steps} steps), {seconds:.0f} s in all")


if __name__ == "__main__":
    main()
