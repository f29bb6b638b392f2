"""Evaluation cases (evaluation.harness.Case: an id, a condition map, a prompt) from where training data lives:
the toy's generated outlines, a release-layout dataset folder, or a folder of photos run through the condition's
annotator. train.py's evaluations and bench/controllability.py read them here."""

from pathlib import Path

import numpy as np

from annotators import fit, list_pictures, read_image, resize_image
from evaluation.conditions import detect
from evaluation.harness import Case
from toy.shapes import SHAPES, make_sample
from training.data import PairDataset, caption


def cases_from(condition, data=None, count=200, size=512, seed=1000, weights=None, shapes=None):
    """Up to `count` held-out cases (0: all of a folder's): a dataset folder in the release's layout (prompt.json
    with source, target and prompt: the sources are the maps), or a folder of photos with captions beside them
    (photo.jpg + photo.txt; the condition's annotator makes the maps), or for shapes the generator's outlines of
    `seed` (of `shapes`, default the three trained on)."""
    if data is None:
        if condition.annotator is not None:
            raise ValueError(f"the {condition.name} condition needs --data: a folder of condition maps and prompts "
                             "(the release's layout) or of photos with captions")
        samples = (make_sample(seed, i, size, tuple(shapes or SHAPES)) for i in range(count))
        return [Case(f"outline-{i}", hint, prompt) for i, (hint, _, prompt, _) in enumerate(samples)]
    data = Path(data)
    if (data / "prompt.json").is_file():
        pairs = PairDataset(data)
        cases = []
        for i in range(min(count or len(pairs), len(pairs))):
            hint = (pairs.hint(i) * 255).round().astype(np.uint8)
            hint = fit(hint, resize_image(hint, size).shape[:2], nearest=condition.nearest)
            cases.append(Case(Path(pairs.items[i]["source"]).stem, hint, pairs.items[i]["prompt"]))
        return cases
    cases = []
    for path in list_pictures(data)[:count or None]:
        photo = resize_image(read_image(str(path)), size)
        cases.append(Case(path.stem, detect(condition, photo, weights), caption(path)))
    return cases
