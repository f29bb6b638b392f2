"""Seconds per guided sampling step at SD 1.5 size (random weights, batch 1, fp32) with each image-prompt control,
through the generation's own denoiser, against diffusers on identical weights where diffusers' library has the
kind, timed interleaved in one run:

- plain: the UNet alone, against diffusers' UNet2DConditionModel;
- T2I-Adapter (full, 77M weights; its features computed once, as both do): against diffusers' UNet given them as
  down_intrablock_additional_residuals;
- IP-Adapter (plain, with its tokens' keys and values computed once): against diffusers' UNet with the adapter
  loaded by its own loader (`_load_ip_adapter_weights`, which projects the image embedding at every step);
- reference_only and reference_adain+attn: diffusers has them only as community pipelines, so against our plain
  step (the reference's extra pass costs about one more UNet evaluation).

Also the largest difference of the guided eps against diffusers' (T2I, IP), relative to the eps's scale.

    python bench/image_prompts.py [--size 512] [--repeats 3] [--threads 2]
"""

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import print_command, print_machine, torch_details  # noqa: E402
from bench.sampling import CONFIG, GUIDANCE, diffusers_models, randomize, timed_interleaved  # noqa: E402
from cldm.ip_adapter import cross_attentions  # noqa: E402
from cldm.model import create_model, load_control_net  # noqa: E402
from cldm.pipeline import Control, GuidedDenoiser  # noqa: E402
from ldm.conditioning import Conditioning  # noqa: E402
from ldm.threads import add_threads_argument, use_threads  # noqa: E402


def diffusers_guided(unet, x, t, context, uncontext, **extra):
    eps = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncontext, context]),
               **extra).sample
    uncond, cond = eps.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


def ip_adapter_file(folder, unet, embed=1024):
    """A plain IP-Adapter of SD 1.5's size with random weights in the released layout, and an encoder folder of
    that width (a small ViT: the encoder runs once a generation, outside the step)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    gen = torch.Generator().manual_seed(1)
    width = unet.config.context_dim
    state = {"image_proj": {"proj.weight": torch.randn(4 * width, embed, generator=gen) / embed ** 0.5,
                            "proj.bias": torch.zeros(4 * width), "norm.weight": torch.ones(width),
                            "norm.bias": torch.zeros(width)}, "ip_adapter": {}}
    for i, (attn, _) in enumerate(cross_attentions(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            state["ip_adapter"][f"{2 * i + 1}.{name}.weight"] = torch.randn(attn.to_k.out_features, width,
                                                                            generator=gen) / width ** 0.5
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=224, patch_size=32, projection_dim=embed)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder / "image_encoder")
    torch.save(state, folder / "ip-adapter_sd15.bin")
    return folder / "ip-adapter_sd15.bin", state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    print_command()
    print_machine(*torch_details(), "fp32", "batch 1 guided (2 rows)", f"{args.size}x{args.size}")
    from diffusers import T2IAdapter as DiffusersAdapter

    torch.manual_seed(0)
    model = create_model(CONFIG).eval()
    randomize(model)
    unet, _ = diffusers_models(model)
    ours_unet = model.model.diffusion_model
    gen = torch.Generator().manual_seed(2)
    side = args.size // 8
    x = torch.randn(1, 4, side, side, generator=gen)
    t = torch.tensor([500])
    context, uncontext = torch.randn(1, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen)
    picture = np.random.default_rng(3).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), ExitStack() as held:
        folder = Path(tmp)
        adapter = DiffusersAdapter(adapter_type="full_adapter", channels=[320, 640, 1280, 1280], num_res_blocks=2)
        randomize(adapter)
        adapter.eval().save_pretrained(folder / "t2i")
        t2i = load_control_net(model, folder / "t2i")
        ip_path, ip_state = ip_adapter_file(folder, ours_unet)
        ip = load_control_net(model, ip_path)

        def ours(controls):
            denoiser = GuidedDenoiser(model, Conditioning.of(context), Conditioning.of(uncontext), controls, GUIDANCE,
                                      reference_noise=torch.Generator().manual_seed(5))
            held.enter_context(denoiser.hooked())  # its hooks in place for the run (each acts only in its calls)
            return lambda: denoiser(x, t, 0.0)

        features = [f.repeat(2, 1, 1, 1) for f in adapter(torch.from_numpy(picture).permute(2, 0, 1)[None] / 255.0)]
        pixels = ip.processor(picture, return_tensors="pt").pixel_values
        embeds = ip.encoder(pixels).image_embeds
        image_embeds = [torch.cat([torch.zeros_like(embeds), embeds])[:, None]]
        ip_unet = diffusers_models(model)[0]
        ip_unet._load_ip_adapter_weights([{"image_proj": ip_state["image_proj"], "ip_adapter": ip_state["ip_adapter"]}])

        cases = [
            ("plain", ours([]), lambda: diffusers_guided(unet, x, t, context, uncontext)),
            ("T2I-Adapter (full)", ours([Control(picture, 1.0, net=t2i)]),
             lambda: diffusers_guided(unet, x, t, context, uncontext,
                                      down_intrablock_additional_residuals=[f.clone() for f in features])),
            ("IP-Adapter (plain)", ours([Control(picture, 1.0, net=ip)]),
             lambda: diffusers_guided(ip_unet, x, t, context, uncontext,
                                      added_cond_kwargs={"image_embeds": image_embeds})),
            ("reference_only", ours([Control(picture, 1.0, reference="reference_only")]), None),
            ("reference_adain+attn", ours([Control(picture, 1.0, reference="reference_adain+attn")]), None),
        ]
        plain_time = None
        for name, our_step, their_step in cases:
            fns = [our_step] + ([their_step] if their_step else [])
            times = timed_interleaved(fns, args.repeats)
            difference = None
            if their_step:
                a, b = our_step(), their_step()
                difference = float((a - b).abs().max() / b.abs().max())
            plain_time = plain_time or times[0]
            rows.append((name, times[0], times[1] if their_step else None, difference, times[0] / plain_time))
    print()
    print("| control | ours s/step | diffusers s/step | ours/diffusers | ours/our plain step | eps difference |")
    print("|---|---|---|---|---|---|")
    for name, mine, theirs, difference, to_plain in rows:
        peer = f"{theirs:.2f} | {mine / theirs:.2f}" if theirs else "- | -"
        diff = f"{difference:.1e}" if difference is not None else "-"
        print(f"| {name} | {mine:.2f} | {peer} | {to_plain:.2f} | {diff} |")


if __name__ == "__main__":
    main()
