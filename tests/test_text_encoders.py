"""Tokenizers built offline agree with open_clip's; the encoders keep the release's layer choices."""

import open_clip
import pytest
import torch

from ldm.text_encoders import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder

PROMPTS = [
    "a crimson circle on a light sky blue background",
    "Hello, World!!! It's 3:45pm -- don't panic; (really) [ok] {fine} #tags @you e=mc^2 café naïve",
    "  multiple   spaces\tand tabs\nand newlines  ",
    "",
    " ".join(["photograph of a very detailed landscape with mountains, rivers and trees"] * 12),  # > 77 tokens
]


def open_clip_ids(prompts, pad):
    ids = open_clip.tokenize(prompts)
    for row in ids:
        eot = int((row == 49407).nonzero()[0])
        row[eot + 1:] = pad
    return ids


def test_sd1_tokenizer_matches_open_clip_with_endoftext_padding():
    encoder = FrozenCLIPEmbedder(arch=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2))
    assert torch.equal(encoder.tokenize(PROMPTS), open_clip_ids(PROMPTS, pad=49407))


def test_the_sd1_vocabulary_is_open_clips_without_importing_it():
    from open_clip.tokenizer import SimpleTokenizer

    from ldm.text_encoders import clip_tokenizer

    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert clip_tokenizer().get_vocab() == {specials.get(k, k): i for k, i in SimpleTokenizer().encoder.items()}


def test_sd2_tokenizer_is_open_clips():
    encoder = FrozenOpenCLIPEmbedder(text_cfg=dict(width=8, heads=2, layers=1, output_dim=8))
    assert torch.equal(encoder.tokenize(PROMPTS), open_clip_ids(PROMPTS, pad=0))


def test_long_prompts_are_truncated_to_77_with_end_token():
    encoder = FrozenCLIPEmbedder(arch=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2))
    ids = encoder.tokenize(PROMPTS[-1:])
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_penultimate_layer_stops_one_block_early_and_applies_ln_final():
    torch.manual_seed(0)
    encoder = FrozenOpenCLIPEmbedder(layer="penultimate", text_cfg=dict(width=16, heads=2, layers=3, output_dim=16))
    m = encoder.model
    tokens = encoder.tokenize(["a prompt"])
    x = m.token_embedding(tokens) + m.positional_embedding
    for block in m.transformer.resblocks[:2]:
        x = block(x, attn_mask=m.attn_mask)
    expected = m.ln_final(x)
    torch.testing.assert_close(encoder(["a prompt"]), expected, rtol=0, atol=0)


def test_unknown_text_encoder_names_the_known_ones():
    with pytest.raises(ValueError, match="openai/clip-vit-large-patch14"):
        FrozenCLIPEmbedder(version="someone/other-clip")
    with pytest.raises(ValueError, match="architecture needs the keys"):
        FrozenCLIPEmbedder(arch=dict(hidden_size=8))


def test_three_windows_and_clip_skip_as_the_anime_lineart_control_was_trained():
    torch.manual_seed(0)
    encoder = FrozenCLIPEmbedder(arch=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                           num_attention_heads=2))
    one = encoder(PROMPTS)
    encoder.windows = 3
    very_long = " ".join(["a detailed landscape with mountains, rivers and trees"] * 30)  # 270 tokens
    ids = encoder.tokenize([very_long])
    plain = open_clip.tokenize([very_long], context_length=400)[0]
    words = plain[1:int((plain == 49407).nonzero()[0])]  # the tokens without start and end
    assert len(words) > 225 and ids.shape == (3, 77) and (ids[:, 0] == 49406).all() and (ids[:, 76] == 49407).all()
    assert all(torch.equal(ids[k, 1:76], words[75 * k:75 * (k + 1)]) for k in range(3))
    three = encoder(PROMPTS)
    assert three.shape == (len(PROMPTS), 231, 16)
    torch.testing.assert_close(three[:-1, :77], one[:-1], rtol=0, atol=1e-6)  # short prompts: first window equal
    encoder.clip_skip = 2
    model = encoder.transformer.text_model
    hidden = model(input_ids=encoder.tokenize(PROMPTS[:1]), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(encoder(PROMPTS[:1]), model.final_layer_norm(hidden).reshape(1, 231, 16))
