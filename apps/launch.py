"""Starting an app from its script: flags, the model (real files or the shipped toy), the server."""

import argparse
import importlib.util

import numpy as np
import torch

import config
from apps.errors import log_to_terminal
from apps.models import resolve_model
from apps.page import build_demo
from apps.runner import Runner
from cldm.pipeline import generate
from cldm.speed import speed_up
from cldm.vae_files import load_vae
from ldm.errors import add_debug_argument, run_main
from ldm.files import MODELS, check_checkpoint_file
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision
from ldm.runtime import BACKENDS, backend_precision
from ldm.threads import add_threads_argument, use_threads


def parse_args(task, argv=None):
    p = argparse.ArgumentParser(description=task.title)
    files = " or ".join(f"models/{name}" for name in task.control)
    p.add_argument("--control", help=f"control checkpoint (default: {files} if present, else the shipped toy model)")
    p.add_argument("--base", default=config.BASE or (f"models/{task.base}" if task.base else None),
                   help=f"SD checkpoint for control-only files (default: models/{task.base or 'v1-5-pruned.ckpt'})")
    p.add_argument("--config", default=config.CONFIG,
                   help="model yaml for real checkpoints (default: the yaml beside the control file, else the "
                        "base's family's: models/cldm_v15.yaml, cldm_v21.yaml or sd_xl_base.yaml)")
    p.add_argument("--vae", default=config.VAE, help="a VAE file to use instead of the base's (SDXL's fp16-fix VAE, "
                   "a fine-tuned one)")
    p.add_argument("--control-dir", action="append", default=[], help="a folder whose control files the control "
                   "units offer, beside models/ (repeatable); a request can name no other file")
    p.add_argument("--annotator-ckpts", default=config.ANNOTATOR_CKPTS, help="folder of annotator weights")
    p.add_argument("--output-dir", default=config.OUTPUT_DIR)
    p.add_argument("--host", default=config.HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=config.PORT)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--queue-size", type=int, default=config.QUEUE_SIZE, help="requests allowed to wait")
    add_threads_argument(p, config.THREADS)
    p.add_argument("--low-vram", action="store_true", default=config.SAVE_MEMORY,
                   help="keep only the running part of the model on the GPU (small GPUs)")
    add_precision_argument(p, config.PRECISION)
    p.add_argument("--compile", action="store_true", default=config.COMPILE,
                   help="torch.compile the UNet and ControlNet (the first request then takes a while longer)")
    p.add_argument("--backend", choices=[*BACKENDS, "auto"], default=config.BACKEND, help="what runs the UNet, "
                   'ControlNet and VAE decoder: torch, or OpenVINO on the CPU (fp32; pip install -e ".[openvino]"; '
                   "converted at launch); auto: OpenVINO for the shipped model on a CPU where it is installed")
    add_debug_argument(p)
    return p.parse_args(argv)


def chosen_backend(backend, model, toy):
    """`backend`, with auto made OpenVINO for the shipped model in fp32 on the CPU where it is installed (the
    fast path there), else torch."""
    if backend != "auto":
        return backend
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    return "openvino" if toy and on_cpu_fp32 and importlib.util.find_spec("openvino") else "torch"


def make_runner(task, args):
    offload = args.low_vram and torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = PRECISIONS[resolve_precision(backend_precision(args.backend, args.precision), device)]
    model, note, toy = resolve_model(task.control, args.control, args.base, args.config, "cpu" if offload else None,
                                     dtype, task.options)
    if model is not None and args.vae:
        load_vae(model, check_checkpoint_file(args.vae))
    if model is not None:
        backend = chosen_backend(args.backend, model, toy)
        speed_up(model, compile=args.compile, backend=backend)
        if backend != "torch":  # converted before the page opens, not on its first request
            print(f"converting the networks for {backend} (once)...", flush=True)
            warm_up(model, task.defaults(toy).image_resolution)
    return Runner(task, model, note, args.output_dir, args.annotator_ckpts, "cuda" if offload else None, toy,
                  [MODELS, *args.control_dir])


def warm_up(model, resolution):
    """One generation of one step at the page's size: what runs at every request is converted (for every
    size) and has run once at that size."""
    side = max(64, resolution // 64 * 64)
    hint = np.zeros((side, side, 3), np.uint8) if hasattr(model, "control_model") else None
    generate(model, hint, "", steps=1, guidance_scale=2.0, size=(side, side), verbose=False)


def launch(task, argv=None):
    """Serve the app; a wrong file or setting ends it with one line (the traceback in the debug log)."""
    run_main(lambda argv: serve(task, argv), argv)


def serve(task, argv=None):
    args = parse_args(task, argv)
    log_to_terminal()
    use_threads(args.threads)
    runner = make_runner(task, args)
    print(runner.note)
    demo = build_demo(task, runner)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
