"""What the text encoders give the denoising networks, as one value: the sampler, classifier-free guidance,
low-VRAM, the training step and the latent cache pass it along without opening it, and only the layers that use
a part read it. SD 1.x and 2.x fill `crossattn` alone; SDXL adds `vector` (the pooled text embedding and the
size and crop ids its UNet's label embedding takes), as sgm's {"crossattn", "vector"} and diffusers'
`added_cond_kwargs` do; an LCM-distilled UNet reads `guidance`, the guidance scale's embedding (diffusers'
`timestep_cond`). A model family adds a field here, not a parameter to every signature on the way.
"""

from dataclasses import dataclass, fields

import torch

FIELDS = ("crossattn", "vector", "guidance")


@dataclass(frozen=True)
class Conditioning:
    crossattn: torch.Tensor  # (B, T, D): the token features cross-attention attends to
    vector: torch.Tensor | None = None  # (B, V): one vector per sample, for the UNet's label embedding
    guidance: torch.Tensor | None = None  # (B, G): the guidance scale's embedding, for LCM-distilled UNets

    @classmethod
    def of(cls, value):
        """A Conditioning from what callers hand over: one already; a tensor of token features (what the release's
        `get_learned_conditioning` returns); or the release's list of them under c_crossattn, joined along the
        tokens as the release joins them."""
        if isinstance(value, cls):
            return value
        if isinstance(value, torch.Tensor):
            return cls(value)
        if isinstance(value, (list, tuple)) and value:
            parts = [cls.of(part) for part in value]
            if len(parts) == 1:
                return parts[0]
            if any(part.vector is not None for part in parts):
                raise ValueError("conditionings with a vector part cannot be joined along the tokens")
            return cls(torch.cat([part.crossattn for part in parts], 1))
        raise TypeError(f"expected a Conditioning, a tensor of token features or a list of them, got {type(value)}")

    @staticmethod
    def cat(parts):
        """Conditionings batched into one (guidance's [unconditional; conditional])."""
        return Conditioning(*(None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])
                              for name in FIELDS))

    def map(self, fn):
        """The same conditioning with `fn` applied to each of its tensors."""
        return Conditioning(*(None if (t := getattr(self, name)) is None else fn(t) for name in FIELDS))

    def to(self, *args, **kwargs):
        return self.map(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, index):
        """The samples at `index` (a slice or indices along the batch)."""
        return self.map(lambda t: t[index])

    def __len__(self):
        return self.crossattn.shape[0]

    @property
    def device(self):
        return self.crossattn.device

    def where(self, take_other, other):
        """Per sample, `other`'s conditioning where `take_other` (B,) is true, this one's elsewhere (prompt
        dropout: the empty prompt's in place of some)."""
        def pick(mine, theirs):
            mask = take_other.reshape(-1, *[1] * (mine.dim() - 1))
            return torch.where(mask, theirs.to(mine.dtype), mine)

        return Conditioning(*(None if getattr(self, name) is None else pick(getattr(self, name), getattr(other, name))
                              for name in FIELDS))

    def tensors(self):
        """{field: tensor} of the parts it has."""
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, tensors):
        return cls(**{f.name: tensors.get(f.name) for f in fields(cls)})

    def rows(self):
        """(B, N): each sample's parts flattened and joined, for a cache that keeps one row a sample."""
        return torch.cat([t.flatten(1) for t in self.tensors().values()], 1)

    @classmethod
    def from_row(cls, row, like):
        """One sample's conditioning from its row (rows()), its parts shaped as those of `like` (one sample's
        conditioning from the same encoders)."""
        parts, start = {}, 0
        for name, part in like.tensors().items():
            parts[name] = row[start:start + part.numel()].reshape(part.shape)
            start += part.numel()
        return cls.from_tensors(parts)
