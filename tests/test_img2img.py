"""Image-to-image and inpainting in generate(): denoise at its ends, what a mask keeps and what it changes,
the inpaint control's condition."""

import numpy as np
import pytest
import torch

from cldm.img2img import inpaint_condition, start_from
from cldm.pipeline import generate
from cldm.samplers import SAMPLERS
from tests.helpers import TINY_V15, tiny_model
from toy.model import load_default_model

PROMPT = "a crimson circle on a light sky blue background"


@pytest.fixture(scope="module")
def model():
    return tiny_model(TINY_V15)


@pytest.fixture(scope="module")
def toy():
    return load_default_model()


def picture(seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def square_mask(size, lo, hi):
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_denoise_one_is_the_plain_generation_and_zero_the_picture_through_the_vae(model, sampler):
    settings = dict(steps=4, seed=1, sampler=sampler, verbose=False)
    plain, _ = generate(model, picture(1), PROMPT, **settings)
    full, _ = generate(model, picture(1), PROMPT, init_image=picture(2), denoise=1.0, **settings)
    assert np.array_equal(plain[0], full[0])
    kept, _ = generate(model, picture(1), PROMPT, init_image=picture(2), denoise=0.0, **settings)
    start = start_from(model, picture(2), 1)
    through_vae = (model.decode_first_stage(start.latent)[0].permute(1, 2, 0) * 127.5 + 127.5).clamp(0, 255)
    assert np.array_equal(kept[0], through_vae.to(torch.uint8).numpy())
    half, _ = generate(model, picture(1), PROMPT, init_image=picture(2), denoise=0.5, **settings)
    again, _ = generate(model, picture(1), PROMPT, init_image=picture(2), denoise=0.5, **settings)
    assert np.array_equal(half[0], again[0])
    assert not np.array_equal(half[0], plain[0]) and not np.array_equal(half[0], kept[0])


def test_image_to_image_stays_near_the_picture_as_denoise_falls(toy):
    """On the toy model: a picture of a circle, asked for a circle elsewhere; the lower the denoise, the closer
    the result stays to the picture (denoise 0: the toy VAE's own error, about 16)."""
    from generate import circle_outline

    picture_, _ = generate(toy, circle_outline(128), PROMPT, steps=10, seed=3, verbose=False)
    shifted = np.roll(circle_outline(128), 30, axis=1)
    errors = []
    for denoise in (0.2, 0.4, 1.0):
        out, _ = generate(toy, shifted, PROMPT, steps=10, seed=7, verbose=False, init_image=picture_[0],
                          denoise=denoise)
        errors.append(np.abs(out[0].astype(float) - picture_[0]).mean())
    assert errors[0] < 30 and errors[0] + 5 < errors[1] < errors[2] - 3, errors


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_inpainting_keeps_the_picture_outside_the_mask_and_repaints_inside(toy, sampler):
    from generate import circle_outline

    size = 128
    background = np.full((size, size, 3), (135, 206, 250), np.uint8)  # light sky blue, as the toy draws it
    mask = square_mask(size, 32, 96)
    captured = {}
    decode = toy.decode_first_stage
    toy.decode_first_stage = lambda z: captured.setdefault("decoded", decode(z))
    try:
        out, _ = generate(toy, circle_outline(size), PROMPT, steps=10, seed=4, sampler=sampler, verbose=False,
                          init_image=background, mask=mask, mask_blur=0)
    finally:
        toy.decode_first_stage = decode
    out = out[0].astype(float)
    outside, inside = mask == 0, mask > 0
    assert np.array_equal(out[outside], background[outside].astype(float))  # the final composite
    # before the composite, the kept latents already decode to the picture within the VAE's own error
    through_vae = decode(start_from(toy, background, 1).latent)[0].permute(1, 2, 0) * 127.5 + 127.5
    vae_error = np.abs(through_vae.numpy() - background)[outside].mean()
    decoded = (captured["decoded"][0].permute(1, 2, 0) * 127.5 + 127.5).numpy()
    ring = outside.copy()
    ring[24:104, 24:104] = False  # latents next to the mask blend with the repainted ones
    assert np.abs(decoded - background)[ring].mean() <= vae_error + 3.0
    # inside, the crimson circle the outline asks for is painted over the blue
    assert np.abs(out[inside] - background[inside]).mean() > 30


def test_mask_blur_softens_the_seam(model):
    mask = square_mask(64, 16, 48)
    sharp = start_from(model, picture(3), 1, mask, blur=0)
    soft = start_from(model, picture(3), 1, mask, blur=5)
    assert set(np.unique(sharp.repaint.numpy())) == {0.0, 1.0}
    assert 0 < soft.repaint[0, 0, 14, 32] < 1 and 0 < soft.repaint[0, 0, 32, 14] < 1
    assert torch.allclose(sharp.keep + torch.nn.functional.avg_pool2d(sharp.repaint, 8), torch.ones(1))


def test_inpaint_condition_is_minus_one_exactly_under_the_mask():
    image, mask = picture(4), square_mask(64, 10, 30)
    condition = inpaint_condition(image, mask)
    assert condition.dtype == np.float32
    assert (condition[mask > 0] == -1.0).all()
    assert np.array_equal(condition[mask == 0], image[mask == 0] / np.float32(255.0))
    blurred = inpaint_condition(image, mask, blur=5)  # the blurred mask above one half, as the 1.1 app does
    assert (blurred == -1).all(axis=2).sum() < (mask > 0).sum() and (blurred[20, 20] == -1).all()


def test_a_float_condition_drives_the_control(model):
    image, mask = picture(5), square_mask(64, 16, 48)
    settings = dict(steps=3, seed=2, verbose=False, init_image=image, mask=mask)
    float_map, _ = generate(model, inpaint_condition(image, mask), PROMPT, **settings)
    uint8_map, _ = generate(model, image, PROMPT, **settings)
    assert not np.array_equal(float_map[0], uint8_map[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask=np.zeros((64, 64), np.uint8)), "needs the picture"),
    (dict(init_image=picture(0, 128)), "same size"),
    (dict(init_image=picture(0), mask=np.zeros((32, 32), np.uint8)), "must be 64x64"),
    (dict(init_image=picture(0), denoise=1.5), "denoise must be a number from 0.0 to 1.0"),
    (dict(init_image=picture(0), mask=np.zeros((64, 64), np.uint8), mask_blur=-1), "blur must be"),
])
def test_bad_img2img_inputs_are_refused_clearly(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, picture(1), PROMPT, steps=2, verbose=False, **kwargs)


def test_float_condition_outside_its_range_is_refused(model):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        generate(model, np.full((64, 64, 3), 2.0, np.float32), PROMPT, steps=2, verbose=False)


@pytest.mark.parametrize("dtype,sampler,bound", [(torch.bfloat16, "DDIM", 12), (torch.float16, "DPM++ 2M Karras", 2)])
def test_image_to_image_and_inpainting_in_half_precision(dtype, sampler, bound):
    """Measured against fp32 on the random tiny model: bf16 7.0, fp16 0.7 (of 255) mean inside the mask,
    where the result differs from the picture by about 97."""
    model = tiny_model(TINY_V15).to(dtype)
    mask = square_mask(64, 16, 48)
    settings = dict(steps=3, seed=2, sampler=sampler, verbose=False, init_image=picture(2), denoise=0.7, mask=mask,
                    mask_blur=0)
    out, _ = generate(model, picture(1), PROMPT, **settings)
    assert model.first_stage_model.encoder.conv_in.weight.dtype == dtype  # no fp32 copy was made
    assert np.array_equal(out[0][mask == 0], picture(2)[mask == 0])
    reference, _ = generate(model.float(), picture(1), PROMPT, **settings)
    assert np.abs(out[0].astype(float) - reference[0])[mask > 0].mean() < bound
