"""Seconds per classifier-free-guidance sampling step at SD 1.5 size (random weights, batch 1), per precision.

Ours (ControlLDM.apply_model through the DDIM guidance helper, the hint encoded at every call as diffusers
does) against diffusers' UNet2DConditionModel + ControlNetModel on identical weights (converted with
diffusers' own single-file helpers), cond and uncond batched as diffusers' pipeline runs them: diffusers
in fp32, and diffusers cast to the same precision as ours, timed interleaved in one run. Also: the limit
(the step's FLOPs / this machine's measured matmul rate in that precision), the error of each precision
against our fp32 (relative L2 of the guided eps), and, on the shipped default model (trained weights:
random SD weights make noise whose pixel error means nothing), the largest pixel difference of a decoded
20-step image against fp32, in 1/255.

    python bench/sampling.py [--sizes 256 512] [--precisions fp32 bf16 fp16] [--compile] [--channels-last]
                             [--device cuda] [--repeats 5]

`--backend openvino` runs our UNet and ControlNet by OpenVINO (fp32 only). `--generation` times whole few-step
generations of the shipped model instead (or of SD 1.5's size with random weights, `--sd`): the plain guided
generation, and beside it what skips work (guidance 1: no unconditional pass; strength 0: no ControlNet),
torch.compile and OpenVINO, each with its largest pixel difference to the plain one.

    python bench/sampling.py --generation [--sd] [--sizes 256] [--steps 4] [--repeats 3]

`--family sdxl` times SDXL's step instead, at real size (UNet 2.6 billion weights, with a full ControlNet of 1.25
billion, then a small one): ours against diffusers' UNet2DConditionModel + ControlNetModel holding the very same
tensors (loaded with assign=True, so both fit in memory at once), interleaved, in each precision given.

    python bench/sampling.py --family sdxl [--sizes 512] [--precisions fp32] [--repeats 3] [--compile]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import print_command, print_machine, torch_details  # noqa: E402
from cldm.diffusers_interop import diffusers_models as to_diffusers  # noqa: E402
from cldm.model import create_model  # noqa: E402
from cldm.speed import speed_up  # noqa: E402
from ldm.config import load_yaml  # noqa: E402
from ldm.ddim import guided_model_output  # noqa: E402
from ldm.precision import PRECISIONS, cpu_has_native_bf16  # noqa: E402
from ldm.runtime import BACKENDS  # noqa: E402
from ldm.threads import add_threads_argument, use_threads  # noqa: E402

CONFIG = ROOT / "models/cldm_v15.yaml"
GUIDANCE = 9.0


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(0.05 * noise if p.dim() <= 1 else noise / p[0].numel() ** 0.5)


def diffusers_models(model):
    return to_diffusers(model.state_dict(), load_yaml(CONFIG))


def diffusers_step(unet, controlnet, x, t, context, uncontext, hint):
    dtype = unet.dtype
    x2, t2 = torch.cat([x, x]).to(dtype), torch.cat([t, t])
    ctx2, hint2 = torch.cat([uncontext, context]).to(dtype), torch.cat([hint, hint]).to(dtype)
    down, mid = controlnet(x2, t2, encoder_hidden_states=ctx2, controlnet_cond=hint2, return_dict=False)
    eps = unet(x2, t2, encoder_hidden_states=ctx2, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample.float()
    uncond, cond = eps.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_interleaved(fns, repeats):
    """Median seconds of each function, run in turn (a, b, c, a, b, c, ...) so drifts of the machine hit all
    alike; each is warmed up first (compiled ones compile there)."""
    for fn in fns:
        fn()
    synchronize()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            synchronize()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def matmul_rate(dtype=torch.float32, device="cpu", n=2048, repeats=5):
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeats)


def relative_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def default_model_image_errors(precisions, steps=20, size=128, device="cpu"):
    """Largest pixel difference (1/255) of a decoded `steps`-step image of the shipped model against fp32."""
    from cldm.pipeline import generate
    from generate import circle_outline
    from toy.model import load_default_model

    prompt = "a crimson circle on a light sky blue background"
    images = {p: generate(load_default_model(device, PRECISIONS[p]), circle_outline(size), prompt, steps=steps,
                          seed=0, verbose=False)[0][0].astype(int) for p in {"fp32", *precisions}}
    return {p: int(abs(images[p] - images["fp32"]).max()) for p in precisions}


SDXL_YAML = ROOT / "models/sd_xl_base.yaml"


def sdxl_models(layout, dtype, device, seed=0):
    """Our SDXL UNet and ControlNet of `layout` (random weights) and diffusers' pair on the same tensors."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from cldm.cldm import ControlledUnetModel, ControlNet
    from cldm.control_files import layout_depths, params_on_base
    from cldm.diffusers_interop import control_to_diffusers_keys, diffusers_controlnet_config, diffusers_unet_config

    params = load_yaml(SDXL_YAML)["model"]["params"]["network_config"]["params"]
    control_params = params_on_base(params, 3, layout_depths(params, layout))
    torch.manual_seed(seed)
    unet, net = ControlledUnetModel(**params).eval(), ControlNet(**control_params).eval()
    randomize(unet, seed), randomize(net, seed + 1)
    unet, net = unet.to(device, dtype), net.to(device, dtype)
    prefixed = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    unet_config = diffusers_unet_config(params)
    cn_config = diffusers_controlnet_config({"model": {"params": {"control_stage_config": {"params": control_params}}}})
    with torch.device("meta"):
        theirs_unet, theirs_net = UNet2DConditionModel(**unet_config), ControlNetModel(**cn_config)
    theirs_unet.load_state_dict(convert_ldm_unet_checkpoint(prefixed, unet_config), strict=True, assign=True)
    theirs_net.load_state_dict(control_to_diffusers_keys(net.state_dict(), cn_config), strict=True, assign=True)
    return unet, net, theirs_unet.eval(), theirs_net.eval()


def sdxl_layout_rows(args, layout, precision):
    """(size, layout, precision, [ours, diffusers] s/step, eps error of diffusers against ours) of one layout
    (the models are freed when it returns)."""
    from ldm.conditioning import Conditioning
    from ldm.sdxl import SizeIds, vector

    dtype = PRECISIONS[precision]
    unet, net, theirs_unet, theirs_net = sdxl_models(layout, dtype, args.device)
    if args.compile:
        unet, net = speed_up(unet, True), speed_up(net, True)
    rows = []
    for size in args.sizes:
        gen = torch.Generator().manual_seed(size)
        x = torch.randn(2, 4, size // 8, size // 8, generator=gen).to(args.device, dtype)
        t = torch.tensor([500, 500], device=args.device)
        context = torch.randn(2, 77, 2048, generator=gen).to(args.device, dtype)
        pooled = torch.randn(2, 1280, generator=gen).to(args.device)
        ids = SizeIds.of(size, size).tensor().repeat(2, 1).to(args.device)
        hint = torch.rand(2, 3, size, size, generator=gen).to(args.device, dtype)
        cond = Conditioning(context, vector(pooled, ids).to(dtype))
        added = {"text_embeds": pooled.to(dtype), "time_ids": ids.to(dtype)}

        def guided(eps):
            uncond, cond_eps = eps.float().chunk(2)
            return uncond + GUIDANCE * (cond_eps - uncond)

        def ours():  # [uncond; cond] in one batch, as the pipeline runs them
            return guided(unet(x, t, cond, control=net(x, hint, t, cond)))

        def diffusers():
            down, mid = theirs_net(x, t, encoder_hidden_states=context, controlnet_cond=hint,
                                   added_cond_kwargs=added, return_dict=False)
            return guided(theirs_unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added,
                                      down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample)

        with torch.no_grad():
            error = relative_error(diffusers(), ours())
            times = timed_interleaved([ours, diffusers], args.repeats)
        rows.append((size, layout, precision, times, error))
        print(f"  {size}x{size} {layout} {precision}: ours {times[0]:.2f} s, diffusers {times[1]:.2f} s", flush=True)
    return rows


def sdxl_rows(args, precisions):
    rows = [row for precision in precisions for layout in ("full", "small")
            for row in sdxl_layout_rows(args, layout, precision)]
    print()
    print("| size | ControlNet | precision | ours s/step | diffusers s/step | ours/diffusers | eps error diffusers vs "
          "ours |")
    print("|---|---|---|---|---|---|---|")
    for size, layout, precision, (ours, theirs), error in rows:
        print(f"| {size}x{size} | {layout} | {precision} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} | "
              f"{error:.1e} |")
    return rows


def generation_rows(args):
    """Seconds of a whole `args.steps`-step UniPC generation (text encoding, sampling, VAE decoding), fp32."""
    from cldm.pipeline import generate
    from toy.model import TOY_PROMPT, circle_outline, load_default_model

    def fresh():
        if not args.sd:
            return load_default_model()
        torch.manual_seed(0)
        return randomize(create_model(CONFIG).eval())

    plain = fresh()
    variants = [("plain: guidance 5, strength 1", plain, {}),
                ("guidance 1 (no unconditional pass)", plain, {"guidance_scale": 1.0}),
                ("strength 0 (no ControlNet)", plain, {"strength": 0.0}),
                ("torch.compile (UNet and ControlNet)", speed_up(fresh(), compile=True), {}),
                ("OpenVINO (UNet and ControlNet)", speed_up(fresh(), backend="openvino"), {})]
    print(f"{'SD 1.5 size, random weights' if args.sd else 'the shipped model'}, UniPC, {args.steps} steps, "
          f"median of {args.repeats} after a warm-up (the compiled and converted ones convert there)\n")
    print("| size | generation | seconds (first call) | / plain | largest pixel difference to plain |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        hint = circle_outline(size)

        def run(model, changes):
            values = {**dict(steps=args.steps, sampler="UniPC", guidance_scale=5.0, seed=0, verbose=False), **changes}
            return generate(model, hint, TOY_PROMPT, **values)[0][0].astype(int)

        firsts = []
        for _, model, changes in variants:  # the first call of each: the compiled and converted ones convert
            started = time.perf_counter()
            firsts.append((run(model, changes), time.perf_counter() - started))
        times = timed_interleaved([lambda m=model, c=c: run(m, c) for _, model, c in variants], args.repeats)
        for (name, _, changes), (image, first), seconds in zip(variants, firsts, times):
            same = "(another image)" if changes else f"{abs(image - firsts[0][0]).max()}/255"
            print(f"| {size}x{size} | {name} | {seconds:.2f} (first {first:.1f}) | {seconds / times[0]:.2f} | {same} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet and ControlNet")
    parser.add_argument("--channels-last", action="store_true", help="our networks in channels-last memory format")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="time bf16 even on a CPU that only emulates it")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="what runs our UNet and ControlNet")
    parser.add_argument("--generation", action="store_true", help="time few-step generations and what they skip")
    parser.add_argument("--sd", action="store_true", help="--generation at SD 1.5's size (random weights)")
    parser.add_argument("--steps", type=int, default=4, help="--generation's sampling steps")
    add_threads_argument(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    print_command()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "no GPU used"
    print_machine(*torch_details(), f"native bf16 on the CPU: {cpu_has_native_bf16()}", gpu)
    precisions = list(args.precisions)
    if args.device == "cpu" and "bf16" in precisions and not cpu_has_native_bf16() and not args.force:
        print("bf16 skipped: this CPU has no native bf16 (AVX512-BF16 or AMX) and emulates it about 50x slower "
              "than fp32; --force times it anyway")
        precisions.remove("bf16")
    if args.family == "sdxl":
        sdxl_rows(args, precisions)
        return
    if args.generation:
        generation_rows(args)
        return
    torch.manual_seed(0)
    reference = create_model(CONFIG).eval()
    randomize(reference)
    unet32, control32 = diffusers_models(reference)
    reference.to(args.device)
    unet32.to(args.device), control32.to(args.device)
    rates = {p: matmul_rate(PRECISIONS[p], args.device) for p in precisions}
    print("matmul rate: " + ", ".join(f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in rates.items()))
    print(f"ours: {'compiled, ' if args.compile else ''}{'channels-last' if args.channels_last else 'contiguous'}, "
          f"run by {args.backend}")
    rows = []
    for precision in precisions:
        dtype = PRECISIONS[precision]
        ours = speed_up(copy.deepcopy(reference).to(dtype), args.compile, args.channels_last, backend=args.backend)
        peers = [(unet32, control32)] if dtype == torch.float32 else [
            (unet32, control32), (copy.deepcopy(unet32).to(dtype), copy.deepcopy(control32).to(dtype))]
        for size in args.sizes:
            gen = torch.Generator().manual_seed(size)
            x = torch.randn(1, 4, size // 8, size // 8, generator=gen).to(args.device)
            t = torch.tensor([500], device=args.device)
            context = torch.randn(1, 77, 768, generator=gen).to(args.device)
            uncontext = torch.randn(1, 77, 768, generator=gen).to(args.device)
            hint = torch.rand(1, 3, size, size, generator=gen).to(args.device)
            cond = {"c_concat": [hint], "c_crossattn": [context]}
            uncond = {"c_concat": [hint], "c_crossattn": [uncontext]}
            with torch.no_grad():
                fns = [lambda: guided_model_output(ours, x, t, cond, uncond, GUIDANCE)] + [
                    lambda u=u, c=c: diffusers_step(u, c, x, t, context, uncontext, hint) for u, c in peers]
                exact = guided_model_output(reference, x, t, cond, uncond, GUIDANCE)
                errors = [relative_error(fn(), exact) for fn in fns]
                with FlopCounterMode(display=False) as counter:
                    guided_model_output(reference, x, t, cond, uncond, GUIDANCE)
                flops = counter.get_total_flops()
                times = timed_interleaved(fns, args.repeats)
            rows.append((size, precision, times, flops, rates[precision], errors))
        del ours, peers
    image_errors = default_model_image_errors([p for p in precisions if p != "fp32"], device=args.device)

    print()
    print("| size | precision | ours s/step | diffusers fp32 s/step | ours/diffusers fp32 | diffusers same precision "
          "s/step | ours/diffusers same | limit s/step | ours/limit | step GFLOP | eps error ours / diffusers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, precision, times, flops, rate, errors in rows:
        ours, fp32 = times[0], times[1]
        same = times[2] if len(times) > 2 else fp32
        limit = flops / rate
        print(f"| {size}x{size} | {precision} | {ours:.2f} | {fp32:.2f} | {ours / fp32:.2f} | {same:.2f} | "
              f"{ours / same:.2f} | {limit:.2f} | {ours / limit:.2f} | {flops / 1e9:.0f} | "
              f"{errors[0]:.1e} / {errors[-1]:.1e} |")
    for precision, error in image_errors.items():
        print(f"default model, 20 DDIM steps, 128x128: largest pixel difference {precision} vs fp32: {error}/255")


if __name__ == "__main__":
    main()
