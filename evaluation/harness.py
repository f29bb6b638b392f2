"""Controllability of a model on held-out cases: generate from each condition map, re-detect the condition on
every image with the same annotator, score it (evaluation.conditions), with the control on and at strength 0.
Used by bench/controllability.py and by train.py's --eval-every."""

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from cldm.pipeline import generate
from cldm.settings import Settings
from evaluation import metrics
from evaluation.conditions import score_case


@dataclass
class Case:
    name: str
    hint: np.ndarray  # the condition map, HWC uint8, sides multiples of 64
    prompt: str


@dataclass
class Run:
    """One way of generating: a name for its rows, the model, the control strength."""

    name: str
    model: object
    strength: float = 1.0


def evaluate(condition, cases, runs, settings, weights=None, progress=True, clip=None):
    """{run name: {"cases": [per-case scores], "summary": {metric: value}}} and the re-detected maps and images
    of the first run, per case (for the grid). Case i uses seed settings.seed + i in every run."""
    results, shown = {}, []
    for run in runs:
        segmentation = metrics.SegmentationIoU()
        rows = []
        for i, case in enumerate(tqdm(cases, desc=f"{condition.name}: {run.name}", disable=not progress)):
            images, _ = generate(run.model, case.hint, case.prompt, settings=replace(settings, seed=settings.seed + i),
                                 strength=run.strength, verbose=False)
            scores, detected = score_case(condition, case.hint, images, case.prompt, weights, segmentation)
            if clip is not None:
                scores["clip_score"] = clip(images, case.prompt)
            rows.append({"case": case.name, "prompt": case.prompt, **scores})
            if run is runs[0]:
                shown.append((images[0], detected[0]))
        summary = {k: nan_mean([r[k] for r in rows]) for k in rows[0] if k not in ("case", "prompt")}
        if condition.name == "seg":  # over the dataset, as mmseg sums it, not the mean of the images'
            summary["miou"] = segmentation.compute()
        results[run.name] = {"cases": rows, "summary": summary}
    return results, shown


def nan_mean(values):
    kept = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(kept)) if kept else float("nan")


def clip_scorer(path):
    """CLIP score (torchmetrics, 100 * cosine of image and prompt embeddings) with the transformers CLIP model in
    folder `path` (ControlNet++ uses openai/clip-vit-base-patch16); a function (images, prompt) -> mean score."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    # torchmetrics takes hub names, or a function giving (model, processor) for a folder of any name
    metric = CLIPScore(model_name_or_path=lambda: (TensorFeatures(CLIPModel.from_pretrained(path).eval()),
                                                   CLIPProcessor.from_pretrained(path)))

    def score(images, prompt):
        metric.reset()
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        metric.update(pixels, [prompt] * len(images))
        return float(metric.compute())

    return score


class TensorFeatures:
    """A transformers CLIPModel whose get_image/text_features return the projected features themselves:
    transformers 5 returns them as an output's pooler_output, which torchmetrics' CLIP score (1.9) cannot use."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def to(self, device):
        self.model.to(device)
        return self

    def get_image_features(self, *args, **kwargs):
        return projected(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return projected(self.model.get_text_features(*args, **kwargs))


def projected(features):
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def write(folder, condition, cases, results, shown, settings, extra=None):
    """results.json (settings, summaries, every case's scores), results.csv (a row per case and run) and
    grid.png (the best and worst cases of the first run: condition, image, re-detected) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"condition": condition.name, "headline": condition.headline, "settings": settings.record(),
              **(extra or {}), "runs": results}
    (folder / "results.json").write_text(json.dumps(record, indent=1, default=float))
    with open(folder / "results.csv", "w", newline="") as f:
        keys = sorted({k for r in results.values() for row in r["cases"] for k in row} - {"case", "prompt"})
        writer = csv.writer(f)
        writer.writerow(["run", "case", "prompt", *keys])
        for name, r in results.items():
            for row in r["cases"]:
                writer.writerow([name, row["case"], row["prompt"], *(row.get(k, "") for k in keys)])
    first = next(iter(results.values()))["cases"]
    finite = lambda key: any(not math.isnan(row.get(key, float("nan"))) for row in first)  # noqa: E731
    rank_by = next((k for k in (condition.headline, *first[0]) if k not in ("case", "prompt") and finite(k)), None)
    values = [row.get(rank_by, float("nan")) for row in first] if rank_by else []
    order = [i for i in np.argsort(values) if not math.isnan(values[i])]
    if rank_by == condition.headline and not condition.higher_is_better:
        order = order[::-1]
    picked = list(dict.fromkeys([*order[::-1][:3], *order[:3]]))  # the best three, then the worst three
    if picked:
        strips = [strip(cases[i].hint, *shown[i]) for i in picked]
        width = max(s.shape[1] for s in strips)
        grid = np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips], axis=0)
        cv2.imwrite(str(folder / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return folder


def strip(hint, image, detected, height=128):
    """One row of the grid: condition, generated image and the condition re-detected on it, side by side."""
    tiles = [np.asarray(p)[..., :3] for p in (hint, image, detected)]
    tiles = [cv2.resize(t, (round(t.shape[1] * height / t.shape[0]), height), interpolation=cv2.INTER_AREA)
             for t in tiles]
    return np.concatenate(tiles, axis=1)


def default_settings(condition, **changes):
    """The condition's evaluation sampling (ControlNet++'s, or the toy's for shapes) with `changes`."""
    return Settings(**{**condition.sampling, **changes})
