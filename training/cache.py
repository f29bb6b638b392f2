"""Cache VAE encodings and text encodings of a dataset on disk, for training with both frozen.

The cache stores the VAE posterior's moments (so each step still samples the latent, as without the
cache) and one text encoding per distinct prompt, plus the empty prompt's for prompt dropout.
"""

import hashlib
import json
from collections import defaultdict

import safetensors.torch
import torch
from torch.utils.data import Dataset

from ldm.checkpoint import save_safetensors
from training.data import require_one_size


def fingerprint(model, dataset):
    """Changes when the dataset's listing (or aspect buckets) or the frozen encoders' weights change."""
    h = hashlib.sha256()
    h.update(json.dumps([(it["source"], it["target"], it["prompt"]) for it in dataset.items]).encode())
    if getattr(dataset, "sizes", None) is not None:
        h.update(json.dumps(dataset.sizes).encode())
    for module in (model.first_stage_model, model.cond_stage_model):
        for name, value in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().flatten()[:1024].float().cpu().numpy().tobytes())  # a sample, not the whole tensor
    return h.hexdigest()[:16]


def moments_key(shape):
    return "moments.{}x{}".format(*shape)


@torch.no_grad()
def build_cache(model, dataset, path, batch_size=16):
    """Encode every target and prompt once; reuse the file when its fingerprint matches.

    Encodings of one size share a tensor (`moments.HxW`, latent sizes; one per aspect bucket); the metadata
    maps each item to its tensor and row.
    """
    key = fingerprint(model, dataset)
    if path.is_file():
        with safetensors.safe_open(str(path), "pt") as f:
            if f.metadata().get("fingerprint") == key and "rows" in f.metadata():
                return path
    device = model.betas.device
    sizes = getattr(dataset, "sizes", None) or [None] * len(dataset)
    by_size = defaultdict(list)
    for i, size in enumerate(sizes):
        by_size[size].append(i)
    tensors, rows = {}, [None] * len(dataset)
    for indices in by_size.values():
        moments = []
        for start in range(0, len(indices), batch_size):
            batch = [dataset[i]["jpg"] for i in indices[start:start + batch_size]]
            require_one_size(batch)
            x = torch.stack([torch.from_numpy(b) for b in batch]).permute(0, 3, 1, 2).to(device)
            posterior = model.encode_first_stage(x)
            moments.append(torch.cat([posterior.mean, posterior.logvar], dim=1).cpu())
        moments = torch.cat(moments)
        name = moments_key(moments.shape[2:])
        tensors[name] = moments
        for row, i in enumerate(indices):
            rows[i] = (name, row)
    prompts = sorted({item["prompt"] for item in dataset.items})
    contexts = torch.cat([model.get_learned_conditioning(prompts[i:i + batch_size]).cpu()
                          for i in range(0, len(prompts), batch_size)])
    empty = model.get_learned_conditioning([""]).cpu()
    save_safetensors({**tensors, "contexts": contexts, "empty_context": empty[0]}, path,
                     metadata={"fingerprint": key, "prompts": json.dumps(prompts), "rows": json.dumps(rows)})
    return path


class CachedPairs(Dataset):
    """The items of a PairDataset with `moments` in place of the image, and unless the text encoder is
    being trained (with_text=False), `context` and `empty_context` beside the prompt."""

    def __init__(self, dataset, cache_path, with_text=True):
        self.dataset, self.with_text = dataset, with_text
        self.sizes = getattr(dataset, "sizes", None)
        self.tensors = safetensors.torch.load_file(str(cache_path))
        with safetensors.safe_open(str(cache_path), "pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            self.rows = json.loads(f.metadata()["rows"])
        self.contexts, self.empty = self.tensors["contexts"], self.tensors["empty_context"]
        self.prompt_index = {p: i for i, p in enumerate(prompts)}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset.items[i]
        name, row = self.rows[i]
        out = {"moments": self.tensors[name][row], "txt": item["prompt"], "hint": self.dataset.hint(i)}
        if self.with_text:
            out["context"] = self.contexts[self.prompt_index[item["prompt"]]]
            out["empty_context"] = self.empty
        return out
