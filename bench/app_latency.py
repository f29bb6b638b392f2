"""Seconds from request to images for the canny app on the shipped default model, through Gradio's HTTP API.

The request is the one a user makes: a photo, Canny in the app, 256x256, one image, sampled the way the toy
sampled before (DDIM, 20 steps, guidance 9) and the way it samples now (toy.model.TOY_SAMPLING: UniPC, 4 steps,
guidance 2), then that again with the networks run by OpenVINO (--backend openvino), all in one run. Each app is
served by a process of its own, as `python gradio_canny2image.py` serves it, and this one makes the requests, in
turn across the apps. For each: our generate() called in-process (what the app adds is the HTTP round trip, the
annotator and saving the PNGs),
generate.py as a new process, and a peer doing the same denoising with diffusers' UNet2DConditionModel +
ControlNetModel and the same scheduler on identical weights. Then the annotators' own times.
Target: the app's request at least 3x faster now than before on the project's 2-core CPU machine.

    python bench/app_latency.py [--repeats 5] [--size 256] [--precision auto] [--rows before now openvino]
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotators import ANNOTATORS, resize_image  # noqa: E402
from bench.report import print_command, print_machine, torch_details  # noqa: E402
from bench.sampling import timed, timed_interleaved  # noqa: E402
from cldm.diffusers_interop import diffusers_models  # noqa: E402
from cldm.pipeline import generate  # noqa: E402
from cldm.samplers import diffusers_scheduler  # noqa: E402
from cldm.speed import speed_up  # noqa: E402
from ldm.config import load_yaml  # noqa: E402
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision  # noqa: E402
from ldm.threads import use_threads  # noqa: E402
from toy.model import TOY_CONFIG, TOY_SAMPLING, load_default_model  # noqa: E402

PROMPT = "a crimson circle on a light sky blue background"
BEFORE = dict(sampler="DDIM", steps=20, guidance_scale=9.0)  # the toy's sampling until 2026-12-07
ROWS = {"before": ("before: DDIM, 20 steps, guidance 9", BEFORE, "torch"),
        "now": ("now: UniPC, 4 steps, guidance 2", TOY_SAMPLING, "torch"),
        "openvino": ("now, --backend openvino", TOY_SAMPLING, "openvino")}


def photo():
    from skimage import data

    return data.astronaut()


@torch.no_grad()
def diffusers_generate(model, unet, controlnet, hint, sampling, seed):
    """The denoising of diffusers' ControlNet pipeline (cond and uncond batched) with the same scheduler, on our
    text encoder and VAE."""
    if sampling["sampler"] == "DDIM":
        scheduler = DDIMScheduler(num_train_timesteps=model.num_timesteps, trained_betas=model.betas.double().numpy(),
                                  timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
                                  clip_sample=False)
    else:
        scheduler = diffusers_scheduler(model, sampling["sampler"])
    scheduler.set_timesteps(sampling["steps"])
    guidance = sampling["guidance_scale"]
    context = torch.cat([model.get_learned_conditioning([""]), model.get_learned_conditioning([PROMPT])])
    cond = torch.from_numpy(hint).float().div(255).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, hint.shape[0] // 8, hint.shape[1] // 8), generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x2 = scheduler.scale_model_input(torch.cat([x, x]), t)
        down, mid = controlnet(x2, t, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
        eps = unet(x2, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
        uncond, text = eps.chunk(2)
        x = scheduler.step(uncond + guidance * (text - uncond), t, x).prev_sample
    return model.decode_first_stage(x)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_requests(rows, picture, size, precision):
    """For each row, the canny app served by a process of its own, as `python gradio_canny2image.py` serves it
    (with the row's --backend), and a function making the request through the HTTP API (gradio_client), as a
    user's browser makes it from outside that process, with the row's sampling."""
    from gradio_client import handle_file

    with tempfile.TemporaryDirectory() as outputs, ExitStack() as stack:
        path = Path(outputs) / "photo.png"
        Image.fromarray(picture).save(path)
        requests = []
        for k, (_, sampling, backend) in enumerate(rows):
            port = free_port()
            command = [sys.executable, str(ROOT / "gradio_canny2image.py"), "--port", str(port), "--backend", backend,
                       "--precision", "fp32" if backend == "openvino" else precision,
                       "--output-dir", str(Path(outputs) / str(k))]
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(server.kill)
            client = connected(f"http://127.0.0.1:{port}/", server)
            values = dict(prompt=PROMPT, image_resolution=size, seed=0, **sampling)
            requests.append(lambda c=client, v=values: c.predict(handle_file(str(path)), api_name="/generate", **v))
        yield requests


def connected(url, server, timeout=300):
    """A gradio_client for the app at `url` once it serves (an OpenVINO app converts its networks first)."""
    from gradio_client import Client

    started = time.monotonic()
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:
            if server.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"the app at {url} did not start") from None
            time.sleep(1)


def cli_seconds(picture, size, sampling, precision, repeats):
    """generate.py in a new process: imports, model load, annotator, image."""
    with tempfile.TemporaryDirectory() as outputs:
        path = Path(outputs) / "photo.png"
        Image.fromarray(picture).save(path)
        command = [sys.executable, str(ROOT / "generate.py"), "--image", str(path), "--annotator", "canny",
                   "--prompt", PROMPT, "--resolution", str(size), "--detect-resolution", str(size),
                   "--sampler", sampling["sampler"], "--steps", str(sampling["steps"]),
                   "--guidance", str(sampling["guidance_scale"]), "--seed", "0", "--precision", precision,
                   "--out", str(Path(outputs) / "cli.png")]
        return timed(lambda: subprocess.run(command, check=True, capture_output=True), repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    add_precision_argument(parser)
    args = parser.parse_args()
    precision = resolve_precision(args.precision)
    use_threads()  # as the apps run; the in-process paths get the same
    print_command()
    torch_version, threads = torch_details()
    print_machine(torch_version, f"{threads}; ours in {precision} (OpenVINO in fp32), the peer in fp32")

    peer_model = load_default_model()  # the peer's text encoder and VAE, in fp32 as its networks
    unet, controlnet = diffusers_models(peer_model.state_dict(), load_yaml(TOY_CONFIG))
    picture = photo()
    hint = ANNOTATORS["canny"](picture, detect_resolution=args.size)
    assert hint.shape[:2] == resize_image(picture, args.size).shape[:2]

    rows = []
    for key in args.rows:
        name, sampling, backend = ROWS[key]
        model = load_default_model(dtype=PRECISIONS["fp32" if backend == "openvino" else precision])
        speed_up(model, backend=backend)
        run = lambda: generate(model, hint, PROMPT, seed=0, verbose=False, **sampling)[0][0]  # noqa: E731
        run()  # the OpenVINO row converts its networks here, once
        in_process = timed(run, args.repeats)
        peer = timed(lambda: diffusers_generate(peer_model, unet, controlnet, hint, sampling, 0), args.repeats)
        peer_image = diffusers_generate(peer_model, unet, controlnet, hint, sampling, 0)[0].permute(1, 2, 0)
        peer_image = (peer_image * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).numpy()
        difference = int(abs(run().astype(int) - peer_image.astype(int)).max())
        cli = cli_seconds(picture, args.size, sampling, precision, args.repeats) if backend == "torch" else None
        rows.append([name, None, cli, in_process, peer, difference])
    # the apps' requests in turn (a, b, c, a, b, c, ...), so that the machine's drifts hit all alike
    with app_requests([ROWS[key] for key in args.rows], picture, args.size, precision) as requests:
        for row, seconds in zip(rows, timed_interleaved(requests, args.repeats)):
            row[1] = seconds

    print(f"\ncanny app on the shipped model, {args.size}x{args.size}, 1 image, median of {args.repeats} (after a "
          f"warm-up; the apps' requests interleaved), {torch.get_num_threads()} torch thread(s) (the apps' default: "
          "all cores but one)\n")
    print("| sampling | app via HTTP s | generate.py (new process) s | generate() s | diffusers peer s | "
          "app / first row's app | largest difference to the peer |")
    print("|---|---|---|---|---|---|---|")
    for name, http, cli, in_process, peer, difference in rows:
        print(f"| {name} | {http:.2f} | {'-' if cli is None else f'{cli:.2f}'} | {in_process:.2f} | {peer:.2f} | "
              f"{http / rows[0][1]:.2f} | {difference}/255 |")
    if len(rows) > 1:
        best = min(r[1] for r in rows[1:])
        verdict = "meets" if rows[0][1] / best >= 3 else "misses"
        print(f"\ntarget (the app at least 3x faster than the first row): {verdict} ({rows[0][1] / best:.2f}x)")

    print("\n| annotator | input | detect resolution | seconds |")
    print("|---|---|---|---|")
    for name, resolution in (("canny", args.size), ("scribble", args.size), ("openpose_mediapipe", 512)):
        seconds = timed(lambda: ANNOTATORS[name](picture, detect_resolution=resolution), args.repeats)
        print(f"| {name} | 512x512 photo | {resolution} | {seconds:.3f} |")
    print("(hed, mlsd, openpose, depth, normal, seg need their downloaded weights; not timed here)")


if __name__ == "__main__":
    main()
