"""Seconds from request to images for the canny app on the shipped default model, through Gradio's HTTP API.

The request is the one a user makes: a photo, Canny in the app, 256x256, 20 DDIM steps, guidance 9, one
image. Against it, in the same run: our generate() called in-process (what the app adds is the HTTP round
trip, the annotator and saving the PNGs), and a peer doing the same denoising with diffusers'
UNet2DConditionModel + ControlNetModel + DDIMScheduler on identical weights. Then the annotators' own times.
Target: under 3 s on the project's 2-core CPU machine in fp32, under 1.5 s in the fast precision (--precision
auto: bf16 on a CPU with native bf16); the peer runs in fp32.

    python bench/app_latency.py [--repeats 5] [--size 256] [--steps 20] [--precision auto]
"""

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators import ANNOTATORS, resize_image  # noqa: E402
from apps.page import build_demo  # noqa: E402
from apps.runner import Runner  # noqa: E402
from bench.sampling import timed  # noqa: E402
from cldm.diffusers_interop import diffusers_models  # noqa: E402
from cldm.pipeline import generate  # noqa: E402
from ldm.config import load_yaml  # noqa: E402
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision  # noqa: E402
from ldm.threads import use_threads  # noqa: E402
from toy.model import TOY_CONFIG, load_default_model  # noqa: E402

PROMPT = "a crimson circle on a light sky blue background"
GUIDANCE = 9.0


def photo():
    from skimage import data

    return data.astronaut()


@torch.no_grad()
def diffusers_generate(model, unet, controlnet, hint, steps, seed):
    """The denoising of diffusers' ControlNet pipeline (DDIM, cond and uncond batched) on our text encoder and VAE."""
    scheduler = DDIMScheduler(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.double().numpy(),
                              timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
                              clip_sample=False)
    scheduler.set_timesteps(steps)
    context = torch.cat([model.get_learned_conditioning([""]), model.get_learned_conditioning([PROMPT])])
    cond = torch.from_numpy(hint).float().div(255).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, hint.shape[0] // 8, hint.shape[1] // 8), generator=gen)
    for t in scheduler.timesteps:
        x2 = torch.cat([x, x])
        down, mid = controlnet(x2, t, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
        eps = unet(x2, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
        uncond, text = eps.chunk(2)
        x = scheduler.step(uncond + GUIDANCE * (text - uncond), t, x).prev_sample
    return model.decode_first_stage(x)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    add_precision_argument(parser)
    args = parser.parse_args()
    precision = resolve_precision(args.precision)
    use_threads()  # as the apps run; the in-process paths get the same
    print(f"command: python bench/app_latency.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ours in {precision}, the peer in fp32")

    from gradio_client import Client, handle_file

    import gradio_canny2image as app

    model = load_default_model(dtype=PRECISIONS[precision])
    peer_model = load_default_model()  # the peer's text encoder and VAE, in fp32 as its networks
    picture = photo()
    hint = ANNOTATORS["canny"](picture, detect_resolution=args.size)
    assert hint.shape[:2] == resize_image(picture, args.size).shape[:2]

    in_process = timed(lambda: generate(model, hint, PROMPT, steps=args.steps, guidance_scale=GUIDANCE, seed=0,
                                              verbose=False), args.repeats)
    unet, controlnet = diffusers_models(peer_model.state_dict(), load_yaml(TOY_CONFIG))
    peer = timed(lambda: diffusers_generate(peer_model, unet, controlnet, hint, args.steps, 0), args.repeats)
    ours_image = generate(model, hint, PROMPT, steps=args.steps, guidance_scale=GUIDANCE, seed=0, verbose=False)[0][0]
    peer_image = diffusers_generate(peer_model, unet, controlnet, hint, args.steps, 0)[0].permute(1, 2, 0)
    peer_image = (peer_image * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).numpy()
    difference = int(abs(ours_image.astype(int) - peer_image.astype(int)).max())

    with tempfile.TemporaryDirectory() as outputs:
        demo = build_demo(app.task, Runner(app.task, model, "benchmark", outputs, toy=True))
        demo.queue(max_size=4)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        path = Path(outputs) / "photo.png"
        Image.fromarray(picture).save(path)
        client = Client(url, verbose=False)
        values = dict(prompt=PROMPT, image_resolution=args.size, steps=args.steps, guidance_scale=GUIDANCE, seed=0)
        try:
            http = timed(lambda: client.predict(handle_file(str(path)), api_name="/generate", **values),
                         args.repeats)
        finally:
            demo.close()
        command = [sys.executable, str(ROOT / "generate.py"), "--image", str(path), "--annotator", "canny",
                   "--prompt", PROMPT, "--resolution", str(args.size), "--detect-resolution", str(args.size),
                   "--steps", str(args.steps), "--guidance", str(GUIDANCE), "--seed", "0", "--precision", precision,
                   "--out", str(Path(outputs) / "cli.png")]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeats)

    print(f"\ncanny app, {args.size}x{args.size}, {args.steps} DDIM steps, guidance {GUIDANCE}, 1 image, "
          f"median of {args.repeats} (after a warm-up)\n")
    print(f"torch threads: {torch.get_num_threads()} (the apps' default: all cores but one)")
    print("| path | seconds | / diffusers peer |")
    print("|---|---|---|")
    for name, seconds in (("app through the HTTP API (gradio_client)", http),
                          ("generate.py, a new process (imports, model load, annotator, image)", cli),
                          ("our generate() in-process", in_process),
                          ("diffusers UNet + ControlNet + DDIMScheduler in-process (peer)", peer)):
        print(f"| {name} | {seconds:.2f} | {seconds / peer:.2f} |")
    print(f"(largest pixel difference between ours in {precision} and the fp32 peer: {difference} of 255)")
    target = 3.0 if precision == "fp32" else 1.5
    verdict = "meets" if http < target else "misses"
    print(f"\ntarget (app under {target} s in {precision}): {verdict}")

    print("\n| annotator | input | detect resolution | seconds |")
    print("|---|---|---|---|")
    for name, resolution in (("canny", args.size), ("scribble", args.size), ("openpose_mediapipe", 512)):
        seconds = timed(lambda: ANNOTATORS[name](picture, detect_resolution=resolution), args.repeats)
        print(f"| {name} | 512x512 photo | {resolution} | {seconds:.3f} |")
    print("(hed, mlsd, openpose, depth, normal, seg need their downloaded weights; not timed here)")


if __name__ == "__main__":
    main()
