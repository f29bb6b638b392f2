"""IP-Adapters in the released files' layout (.bin and .safetensors; plain, plus and full), with a CLIP vision
encoder saved by transformers, exact against diffusers' `load_ip_adapter` and its pipelines on tiny random
weights; then as a control unit beside a ControlNet, with its scale per block, and through the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from cldm.ip_adapter import cross_attentions, spatial_transformers
from cldm.model import load_control_net
from cldm.pipeline import generate
from cldm.settings import ControlUnit
from ldm.checkpoint import CheckpointError
from tests.helpers import TINY_V15, diffusers_parts, randomize, sd15_pipeline, tiny_model

EMBED, HIDDEN, PROMPT = 24, 32, "a crimson circle"


def write_encoder(folder, seed=0):
    """A tiny CLIP vision encoder with its projection, saved as transformers saves h94's image_encoder."""
    config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=EMBED)
    torch.manual_seed(seed)
    randomize(CLIPVisionModelWithProjection(config).eval(), seed).save_pretrained(folder)


def adapter_state(unet, kind, seed=1):
    """An IP-Adapter's weights in the released layout for `unet`: image_proj.* of its kind, then to_k_ip and
    to_v_ip for each cross-attention, numbered 1, 3, 5, ... in diffusers' order of attention processors."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) / shape[-1] ** 0.5  # noqa: E731
    norm = lambda n, p: {f"{p}.weight": 1 + 0.1 * torch.randn(n, generator=gen),  # noqa: E731
                         f"{p}.bias": 0.1 * torch.randn(n, generator=gen)}
    width = unet.config.context_dim
    if kind == "plain":
        proj = {"proj.weight": rand(4 * width, EMBED), "proj.bias": 0.1 * torch.randn(4 * width, generator=gen),
                **norm(width, "norm")}
    elif kind == "full":
        proj = {"proj.0.weight": rand(HIDDEN, HIDDEN), "proj.0.bias": torch.zeros(HIDDEN),
                "proj.2.weight": rand(width, HIDDEN), "proj.2.bias": torch.zeros(width), **norm(width, "proj.3")}
    else:  # plus: a perceiver resampler of 4 layers (as diffusers assumes), one head of 64, 8 queries
        hidden = 64
        proj = {"latents": torch.randn(1, 8, hidden, generator=gen) / hidden ** 0.5,
                "proj_in.weight": rand(hidden, HIDDEN), "proj_in.bias": torch.zeros(hidden),
                "proj_out.weight": rand(width, hidden), "proj_out.bias": torch.zeros(width), **norm(width, "norm_out")}
        for i in range(4):
            proj.update({**norm(hidden, f"layers.{i}.0.norm1"), **norm(hidden, f"layers.{i}.0.norm2"),
                         f"layers.{i}.0.to_q.weight": rand(hidden, hidden),
                         f"layers.{i}.0.to_kv.weight": rand(2 * hidden, hidden),
                         f"layers.{i}.0.to_out.weight": rand(hidden, hidden), **norm(hidden, f"layers.{i}.1.0"),
                         f"layers.{i}.1.1.weight": rand(4 * hidden, hidden),
                         f"layers.{i}.1.3.weight": rand(hidden, 4 * hidden)})
    layers = {}
    for i, (attn, _) in enumerate(cross_attentions(unet)):
        inner = attn.to_k.out_features
        layers[f"{2 * i + 1}.to_k_ip.weight"] = rand(inner, width)
        layers[f"{2 * i + 1}.to_v_ip.weight"] = rand(inner, width)
    return {"image_proj": proj, "ip_adapter": layers}


def write_adapter(folder, unet, kind, suffix):
    state = adapter_state(unet, kind)
    path = folder / f"ip-adapter_{kind}{suffix}"
    if suffix == ".bin":
        torch.save(state, path)
    else:
        save_file({f"{part}.{k}": v.contiguous() for part, tensors in state.items() for k, v in tensors.items()}, path)
    return path


def face(size=64, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind, suffix", [("plain", ".bin"), ("plus", ".safetensors"), ("full", ".bin")])
def test_a_whole_generation_equals_diffusers_load_ip_adapter_pipeline(tmp_path, kind, suffix):
    model = tiny_model(TINY_V15, seed=2)
    unet = model.model.diffusion_model
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, unet, kind, suffix)
    net = load_control_net(model, path)
    assert net.kind == kind
    common = dict(steps=3, seed=2, guidance_scale=7.0, sampler="UniPC", verbose=False, size=(64, 64))
    unit = ControlUnit(image=face(), control=str(path), strength=0.7)
    ours, _ = generate(model, None, PROMPT, units=(ControlUnit(), unit), nets={unit.control: net}, **common)
    plain, _ = generate(model, None, PROMPT, **common)
    pipe = sd15_pipeline(model)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        theirs = pipe(PROMPT, ip_adapter_image=Image.fromarray(face()), height=64, width=64, num_inference_steps=3,
                      guidance_scale=7.0, generator=torch.Generator().manual_seed(2), output_type="np").images[0]
    assert np.abs(ours[0].astype(int) - plain[0]).max() > 10
    assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0


def test_an_sdxl_generation_equals_diffusers_sdxl_pipeline_with_the_adapter(tmp_path):
    """SDXL's order of cross-attentions (its transformers 2 deep): the tiny SDXL base against
    StableDiffusionXLPipeline with load_ip_adapter, a plus adapter."""
    from diffusers import StableDiffusionXLPipeline

    from cldm.samplers import diffusers_scheduler
    from tests.test_sdxl import ID_WIDTH, diffusers_text_encoders, tiny_controlled_xl

    model, config = tiny_controlled_xl(seed=6)
    unet, _, vae = diffusers_parts(model, config, id_features=ID_WIDTH)
    pipe = StableDiffusionXLPipeline(vae, *diffusers_text_encoders(model.conditioner), unet,
                                     diffusers_scheduler(model, "UniPC"))
    pipe.set_progress_bar_config(disable=True)
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, model.model.diffusion_model, "plus", ".bin")
    assert len(cross_attentions(model.model.diffusion_model)) == 12  # 4 in the encoder, 6 in the decoder, 2 middle
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.8)
    unit = ControlUnit(image=face(), control=str(path), strength=0.8)
    ours, _ = generate(model, None, PROMPT, size=(64, 64), units=(ControlUnit(), unit),
                       nets={unit.control: load_control_net(model, path)}, steps=3, seed=1, guidance_scale=5.0,
                       sampler="UniPC", verbose=False)
    with torch.no_grad():
        theirs = pipe(PROMPT, ip_adapter_image=Image.fromarray(face()), height=64, width=64, num_inference_steps=3,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    assert np.abs(ours[0].astype(float) - (theirs * 255).round()).max() <= 1.0


@torch.no_grad()
def test_block_weights_and_region_masks_weigh_the_image_prompt_and_zero_is_the_plain_generation(tmp_path):
    model = tiny_model(TINY_V15, seed=2)
    unet = model.model.diffusion_model
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, unet, "plain", ".safetensors")
    net = load_control_net(model, path)
    n = len(spatial_transformers(unet))
    assert n == 7  # the tiny UNet: 2 in the encoder, 1 in the middle, 4 in the decoder

    def run(**values):
        unit = ControlUnit(image=face(), control=str(path), **values)
        return generate(model, None, PROMPT, size=(64, 64), steps=2, seed=1, verbose=False,
                        units=(ControlUnit(), unit), nets={unit.control: net})[0][0]

    plain = generate(model, None, PROMPT, size=(64, 64), steps=2, seed=1, verbose=False)[0][0]
    assert np.array_equal(run(strength=0.0), plain) and np.array_equal(run(block_weights=", ".join(["0"] * n)), plain)
    full, decoder_only = run(), run(block_weights="0, 0, 0, 1, 1, 1, 1")
    assert np.array_equal(run(block_weights=", ".join(["1"] * n)), full)
    assert np.abs(decoder_only.astype(int) - full).max() > 0 and np.abs(decoder_only.astype(int) - plain).max() > 0
    with pytest.raises(ValueError, match="control 1: got 3 block weights; this model's UNet has 7 attention blocks"):
        run(block_weights="1, 1, 1")
    white, right = np.full((64, 64), 255, np.uint8), np.zeros((64, 64), np.uint8)
    right[:, 32:] = 255
    assert np.array_equal(run(region_mask=white), full) and np.array_equal(run(region_mask=0 * white), plain)
    half = run(region_mask=right)
    assert np.abs(half.astype(int) - full).max() > 0 and np.abs(half.astype(int) - plain).max() > 0


def test_the_encoder_must_be_found_and_fit(tmp_path):
    model = tiny_model(TINY_V15)
    path = write_adapter(tmp_path, model.model.diffusion_model, "plain", ".bin")
    with pytest.raises(CheckpointError, match="24-wide image embeddings.*image_encoder"):
        load_control_net(model, path)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(CheckpointError, match="an IP-Adapter for another base: it has 7 cross-attention layers of "
                                              "width 32; the model's UNet has 12 of width 64"):
        from tests.test_sdxl import tiny_controlled_xl

        load_control_net(tiny_controlled_xl()[0], path)


def test_an_ip_adapter_unit_through_the_cli_beside_the_models_control(tmp_path, monkeypatch):
    """On the shipped model: --extra-control ip-adapter.bin picture.png 0.6 beside its own ControlNet, recorded
    and reproduced."""
    from PIL import Image

    import generate as cli
    from cldm.outputs import read_params
    from toy.model import load_default_model

    toy = load_default_model()
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, toy.model.diffusion_model, "plain", ".bin")
    Image.fromarray(face()).save(tmp_path / "face.png")
    out, plain = tmp_path / "ip.png", tmp_path / "plain.png"
    common = ["--resolution", "64", "--steps", "2", "--seed", "4"]
    cli.main([*common, "--extra-control", str(path), str(tmp_path / "face.png"), "0.6", "--out", str(out)])
    cli.main([*common, "--out", str(plain)])
    (unit,) = read_params(out)["controls"]
    assert unit["control"] == path.name and unit["strength"] == 0.6
    assert np.abs(np.asarray(Image.open(out)).astype(int) - np.asarray(Image.open(plain))).max() > 10
    cli.main(["--reproduce", str(out), "--out", str(tmp_path / "again.png")])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))


def test_an_ip_adapter_unit_in_an_app_reads_its_picture_as_it_is(tmp_path):
    """A unit of the canny app naming an IP-Adapter file of the server's folder: its picture is not run through
    the app's annotator (the saved unit map is the picture, fitted), and the image differs from the app's own."""
    import cv2
    from skimage import data

    from apps.runner import Runner
    from tests.test_apps import NOTE, task_of, values
    from toy.model import circle_outline, load_default_model

    toy = load_default_model()
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, toy.model.diffusion_model, "plain", ".bin")
    task = task_of("gradio_canny2image")
    runner = Runner(task, toy, NOTE, tmp_path / "out", toy=True, control_dirs=[tmp_path])
    once, _ = runner(circle_outline(256), **values(task))
    photo = data.astronaut()
    both, _ = runner(circle_outline(256), **values(task, unit2_enabled=True, unit2_image=photo,
                                                     unit2_control=path.name, unit2_strength=0.8))
    resized = cv2.resize(photo, both[1].shape[1::-1], interpolation=cv2.INTER_AREA)
    assert len(both) == 3 and np.abs(both[1].astype(int) - resized).mean() < 10  # the picture, not its edges
    assert np.abs(both[2].astype(int) - once[1]).max() > 10


@torch.no_grad()
def test_low_vram_moves_an_ip_adapter_with_its_encoder(tmp_path):
    from cldm.lowvram import low_vram

    model = tiny_model(TINY_V15, seed=2)
    write_encoder(tmp_path / "image_encoder")
    path = write_adapter(tmp_path, model.model.diffusion_model, "plus", ".bin")
    net = load_control_net(model, path)
    unit = ControlUnit(image=face(), control=str(path))
    common = dict(size=(64, 64), steps=2, seed=1, verbose=False, units=(ControlUnit(), unit), nets={unit.control: net})
    plain, _ = generate(model, None, PROMPT, **common)
    trace = []
    with low_vram(model, "cpu", trace, nets=[net]):
        offloaded, _ = generate(model, None, PROMPT, **common)
    assert np.array_equal(plain[0], offloaded[0])
    assert trace == ["text encoder", "control 1", "unet", "vae decoder"]  # the tokens once, before the steps
