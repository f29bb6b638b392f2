"""The two text encoders of Stable Diffusion, built offline from their architecture (no hub access).

- SD 1.x: CLIP ViT-L/14's text transformer (transformers `CLIPTextModel`), last layer.
- SD 2.x: OpenCLIP ViT-H-14's text transformer (open_clip), penultimate layer, then the final LayerNorm.
- SDXL: CLIP ViT-L/14's penultimate layer beside OpenCLIP ViT-bigG-14's (as they are, no final LayerNorm), and
  bigG's pooled embedding (ldm.sdxl.Conditioner holds both, under sgm's `conditioner.embedders.<i>` keys).

The CLIP BPE vocabulary ships inside the open_clip package, so both tokenizers build from it.
Weights come from the Stable Diffusion checkpoint (`cond_stage_model.*`).
"""

import functools
import gzip
import importlib.util
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Architectures of the text towers the releases use, by the names their yamls give.
CLIP_TEXT_ARCHS = {
    "openai/clip-vit-large-patch14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12),
}
OPEN_CLIP_TEXT_ARCHS = {"ViT-H-14": dict(width=1024, heads=16, layers=24, output_dim=1024),
                        "ViT-bigG-14": dict(width=1280, heads=20, layers=32, output_dim=1280)}
OPTIONAL_ARCH_KEYS = {"hidden_act", "mlp_ratio"}  # as the released towers have them unless given (small test models)
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408


def byte_symbols():
    """The 256 symbols byte-level BPE writes bytes as, in CLIP's vocabulary order: the printable bytes as
    themselves, then each of the others (controls, space, a few more) as the next character from U+0100 on, so
    that no symbol is whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = 256 - len(printable)
    return [*map(chr, printable), *(chr(256 + i) for i in range(others))]


@functools.cache
def clip_tokenizer(pad_token="<|endoftext|>"):
    """transformers' CLIPTokenizer with the vocabulary and merges of OpenAI CLIP, padding with `pad_token` (SD's
    and SDXL's first tokenizer: <|endoftext|>; SDXL's second pads with "!", id 0, as open_clip does). The merges
    are read from the copy open_clip ships, without importing open_clip (which pulls in torchvision and its
    models: seconds at every start); the ids are CLIP's: the byte symbols, each again with the end-of-word mark,
    one per merge in rank order, then the two special tokens."""
    package = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    with gzip.open(Path(package) / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + VOCAB_SIZE - 2 * 256 - 2]]  # after a header line
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), "<|startoftext|>",
              "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=CONTEXT_LENGTH,
                         pad_token=pad_token)


def _check_layer(layer, allowed):
    if layer not in allowed:
        raise ValueError(f"text encoder layer {layer!r} is not one of {sorted(allowed)}")


def _architecture(given, name, known):
    """The architecture dict for a named text tower, or the explicitly given one (small test models)."""
    if given is None:
        if name not in known:
            raise ValueError(f"unknown text encoder {name!r}; known: {sorted(known)}, or give its architecture")
        return known[name]
    expected = set(next(iter(known.values())))
    if not expected <= set(given) <= expected | OPTIONAL_ARCH_KEYS:
        raise ValueError(f"text encoder architecture needs the keys {sorted(expected)} (and may give "
                         f"{sorted(OPTIONAL_ARCH_KEYS)}), got {sorted(given)}")
    return dict(given)


class _Nest(nn.Module):
    """Holds a module under one extra name level, to keep the released checkpoints' key paths."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


def _keep_position_ids(module, state_dict, prefix, *_):
    # position_ids are always 0..T-1; files may lack them or store them as floats (76.9999...).
    state_dict[prefix + "position_ids"] = module.position_ids.clone()


class FrozenCLIPEmbedder(nn.Module):
    """SD 1.x conditioning: prompts -> (B, 77, 768) hidden states of CLIP ViT-L/14's text transformer."""

    def __init__(self, version="openai/clip-vit-large-patch14", device=None, max_length=CONTEXT_LENGTH, freeze=True,
                 layer="last", layer_idx=None, arch=None, windows=1, clip_skip=1):
        super().__init__()
        _check_layer(layer, {"last", "hidden"})
        if layer == "hidden" and layer_idx is None:
            raise ValueError("layer: hidden needs layer_idx (e.g. -2 for the penultimate layer)")
        arch = _architecture(arch, version, CLIP_TEXT_ARCHS)
        config = CLIPTextConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=max_length, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=49407, **{"hidden_act": "quick_gelu", **arch})
        # Checkpoints keep the `transformer.text_model.` level of transformers 4.x; today's CLIPTextModel
        # has no such level, so one is added by nesting.
        self.transformer = _Nest(text_model=CLIPTextModel(config))
        embeddings = self.transformer.text_model.embeddings
        # Released files store position_ids; keep it in our state_dict so saved files have the same keys.
        embeddings.register_buffer("position_ids", torch.arange(max_length)[None], persistent=True)
        embeddings.register_load_state_dict_pre_hook(_keep_position_ids)
        self.max_length, self.layer, self.layer_idx = max_length, layer, layer_idx
        # Some fine-tunes were trained on longer prompts and an earlier layer (the 1.1 anime lineart control:
        # 3 windows of 75 tokens, the penultimate layer); `windows` and `clip_skip` reproduce that.
        self.windows, self.clip_skip = int(windows), int(clip_skip)
        if freeze:
            self.requires_grad_(False)

    @property
    def device(self):
        return self.transformer.text_model.embeddings.token_embedding.weight.device

    def tokenize(self, text):
        """(B * windows, 77) token ids: each prompt's first windows * 75 tokens, 75 to a window, each window
        between <|startoftext|> and <|endoftext|> and padded with <|endoftext|> (49407) as the SD 1.x tokenizer
        pads; padded positions matter to the UNet. One window is the usual truncating tokenization."""
        tokenizer, inner = clip_tokenizer(), self.max_length - 2
        rows = []
        for ids in tokenizer(list(text), add_special_tokens=False, verbose=False)["input_ids"]:
            for k in range(self.windows):
                row = [tokenizer.bos_token_id, *ids[k * inner:(k + 1) * inner], tokenizer.eos_token_id]
                rows.append(row + [tokenizer.pad_token_id] * (self.max_length - len(row)))
        return torch.tensor(rows)

    def forward(self, text):
        tokens = self.tokenize(text).to(self.device)
        model = self.transformer.text_model
        hidden = self.layer == "hidden" or self.clip_skip > 1
        out = model(input_ids=tokens, output_hidden_states=hidden)
        if self.clip_skip > 1:
            states = model.final_layer_norm(out.hidden_states[-self.clip_skip])
        elif self.layer == "last":
            states = out.last_hidden_state
        else:
            states = out.hidden_states[self.layer_idx]
        return states.reshape(len(text), self.windows * self.max_length, -1)

    def encode(self, text):
        return self(text)


class FrozenOpenCLIPEmbedder(nn.Module):
    """SD 2.x conditioning: prompts -> (B, 77, 1024) from OpenCLIP ViT-H-14's text transformer."""

    LAYERS = {"last": 0, "penultimate": 1}

    def __init__(self, arch="ViT-H-14", version="laion2b_s32b_b79k", device=None, max_length=CONTEXT_LENGTH,
                 freeze=True, layer="last", text_cfg=None):
        super().__init__()
        _check_layer(layer, set(self.LAYERS))
        text_cfg = _architecture(text_cfg, arch, OPEN_CLIP_TEXT_ARCHS)
        # Only the text tower: the released checkpoints do not store the visual one.
        import open_clip  # slow to import; only SD 2.x's text encoder needs it

        self.model = open_clip.transformer.TextTransformer(
            context_length=max_length, vocab_size=VOCAB_SIZE, width=text_cfg["width"], heads=text_cfg["heads"],
            layers=text_cfg["layers"], output_dim=text_cfg["output_dim"], mlp_ratio=text_cfg.get("mlp_ratio", 4.0),
        )
        self.model.logit_scale = nn.Parameter(torch.ones([]))
        self.layer_idx = self.LAYERS[layer]
        if freeze:
            self.requires_grad_(False)

    @property
    def device(self):
        return self.model.token_embedding.weight.device

    def tokenize(self, text):
        import open_clip

        return open_clip.tokenize(list(text))

    def forward(self, text):
        tokens = self.tokenize(text).to(self.device)
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding  # (B, T, width)
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=m.attn_mask)
        return m.ln_final(x)

    def encode(self, text):
        return self(text)


class FrozenOpenCLIPEmbedder2(FrozenOpenCLIPEmbedder):
    """SDXL's second text encoder (sgm's name and parameters): OpenCLIP ViT-bigG-14's text transformer. With
    legacy: False (SDXL's yaml), the chosen layer as it is, without the final LayerNorm, and with
    always_return_pooled the pooled embedding beside it: the last layer's end-of-text token, normed and
    projected (what diffusers calls text_embeds)."""

    def __init__(self, arch="ViT-bigG-14", version="laion2b_s39b_b160k", device=None, max_length=CONTEXT_LENGTH,
                 freeze=True, layer="last", always_return_pooled=False, legacy=True, text_cfg=None):
        super().__init__(arch, version, device, max_length, freeze, layer, text_cfg)
        if always_return_pooled and legacy:
            raise ValueError("always_return_pooled needs legacy: False (as sgm's FrozenOpenCLIPEmbedder2)")
        self.return_pooled, self.legacy = always_return_pooled, legacy

    def forward(self, text):
        tokens = self.tokenize(text).to(self.device)
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding
        *blocks, last_block = m.transformer.resblocks
        for block in blocks:
            x = block(x, attn_mask=m.attn_mask)
        penultimate, last = x, last_block(x, attn_mask=m.attn_mask)
        chosen = penultimate if self.layer_idx else last
        if self.legacy:
            return m.ln_final(chosen)
        if not self.return_pooled:
            return chosen
        pooled = m.ln_final(last)[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ m.text_projection
        return chosen, pooled
