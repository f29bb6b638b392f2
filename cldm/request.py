"""One generation as it is run and as it is saved: a Request holds everything the images follow from (the
settings with their control units, the pictures ready at the generation's size, the model options), and
`run(model, request, paths)` generates it and saves the images with the request as their record. The apps and
generate.py each turn their inputs into a Request and call run; `--reproduce` reads the record back.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cldm.lowvram import low_vram
from cldm.model import ModelOptions
from cldm.outputs import save_beside, save_png, save_units
from cldm.pipeline import generate
from cldm.settings import Settings
from ldm.precision import precision_of
from ldm.runtime import backend_of


@dataclass(frozen=True)
class Request:
    settings: Settings  # its units: the first's region mask, and the others' condition maps as their image
    hint: np.ndarray | None = None  # the first unit's condition (a map, or the inpaint control's float one)
    shown: np.ndarray | None = None  # the condition as a picture, saved beside the images (default: `hint`)
    init_image: np.ndarray | None = None  # image-to-image's and inpainting's starting picture
    mask: np.ndarray | None = None  # inpainting: white where to redraw
    options: ModelOptions = ModelOptions()
    inpaint_control: bool = False  # the hint is the inpaint control's condition of init_image and mask
    size: tuple | None = None  # (H, W) of a generation from the text alone (no map, no starting picture)
    notes: dict = field(default_factory=dict)  # more for the record: how the maps were made (annotator, pose...)

    def record(self, seed, model):
        """The images' saved parameters (their pictures' file names are added as they are saved)."""
        return {**self.settings.record(), "seed": seed, "precision": precision_of(model),
                "threads": torch.get_num_threads(), "backend": backend_of(model.model.diffusion_model),
                "model_options": self.options.record(),
                "inpaint_control": self.inpaint_control, **self.notes}


@dataclass(frozen=True)
class Paths:
    """Where a request's files go: `image(i, n)` for image i of n, `beside(suffix)` for the pictures beside."""

    image: object
    beside: object

    @classmethod
    def numbered(cls, first):
        """<name>-NNNNN.png (reserved: cldm.outputs.next_path), its samples _1, _2, ...; beside it
        <name>-<suffix>-NNNNN.png, so one number names every file of a request."""
        name, number = first.stem.rsplit("-", 1)
        return cls(lambda i, n: first if i == 0 else first.with_name(f"{first.stem}_{i}.png"),
                   lambda suffix: first.with_name(f"{name}-{suffix}-{number}.png"))

    @classmethod
    def at(cls, out):
        """`out` (<out>_<i> for several images); beside it <out>-<suffix>.png."""
        out = Path(out)
        return cls(lambda i, n: out if n == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}"),
                   lambda suffix: out.with_name(f"{out.stem}-{suffix}.png"))


def run(model, request, paths, nets=None, low_vram_device=None, verbose=False, map_params=None, last=False):
    """Generate `request` (its extra units running their ControlNets from `nets`, by control file; low-VRAM on
    `low_vram_device` if given), then save its pictures and images where `paths` say, the request as their
    record. `last`: the model's last request, whose text encoders are freed once its prompts are encoded (not
    in low-VRAM mode, whose parts travel between devices).
    Returns (images, seed, the record with the files' names, the image files)."""
    nets = nets or {}
    offload = low_vram(model, low_vram_device, nets=list(nets.values()))
    with offload if low_vram_device else nullcontext():
        images, seed = generate(model, request.hint, settings=request.settings, nets=nets,
                                init_image=request.init_image, mask=request.mask, size=request.size,
                                verbose=verbose, release_text_encoders=last and not low_vram_device)
    record = request.record(seed, model)
    shown = request.hint if request.shown is None else request.shown
    pictures = {"hint": None if request.hint is None else shown, "init_image": request.init_image,
                "mask": request.mask, "region_mask": request.settings.units[0].region_mask}
    record.update(save_beside(pictures, paths.beside, {"hint": map_params or {}}))
    if len(request.settings.units) > 1:
        record["controls"] = save_units(request.settings.units[1:], paths.beside)
    files = [save_png(image, paths.image(i, len(images)), {**record, "sample": i}) for i, image in enumerate(images)]
    return images, seed, record, files
