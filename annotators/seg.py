"""ADE20K semantic segmentation (UperNet, through transformers) drawn in the ADE20K palette the seg control knows."""

from functools import lru_cache

import cv2
import numpy as np
import torch

from annotators.util import device, prepare
from annotators.weights import seg_dir


@lru_cache(maxsize=2)
def upernet(location=None):
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    folder = seg_dir(location)
    model = UperNetForSemanticSegmentation.from_pretrained(folder).to(device()).eval()
    return AutoImageProcessor.from_pretrained(folder), model


def palette():
    from controlnet_aux.util import ade_palette

    return np.asarray(ade_palette(), np.uint8)


@torch.no_grad()
def seg(image, detect_resolution=512, weights=None):
    img = prepare(image, detect_resolution)
    processor, model = upernet(weights)
    inputs = processor(images=img, return_tensors="pt").to(model.device)
    logits = model(**inputs).logits  # (1, classes, h, w) at the processor's size
    labels = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
    colors = palette()
    if model.config.num_labels > len(colors):
        raise ValueError(f"the seg model has {model.config.num_labels} classes; the ADE20K palette has {len(colors)}")
    labels = cv2.resize(labels, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    return colors[labels]
