"""The model behind an app: the page's values in, the detected map and the images out, saved with their
parameters."""

import inspect
import os
import warnings
from dataclasses import replace

import cv2
import numpy as np

import config
from annotators import (
    ANNOTATORS,
    AnnotatorNotice,
    ImageError,
    condition_map,
    fit,
    read_image,
    resize_image,
    to_rgb_uint8,
)
from apps.pose_editor import detected_json, picture_or_none, pose_picture
from apps.task import NEAREST_ANNOTATORS, NO_ANNOTATOR
from apps.units import EXTRA_UNITS, control_choices, marked, pop_unit, region_of
from cldm.img2img import condition_picture, inpaint_condition
from cldm.ip_adapter import IPAdapter
from cldm.loras import named_loras
from cldm.model import ModelOptions, load_control_net
from cldm.outputs import BESIDE, next_path
from cldm.request import Paths, Request, run
from cldm.settings import SettingError, short
from cldm.union import typed
from ldm.files import MODELS, find_model_file
from ldm.precision import precision_of
from ldm.sdxl import SDXL_RESOLUTION, DiffusionEngine
from toy.model import TOY_PHOTO_NOTE, looks_like_a_photo


class Runner:
    """The model behind an app, turning the UI's values into a detected map and images saved with parameters."""

    def __init__(self, task, model, note, output_dir=config.OUTPUT_DIR, annotator_weights=None, low_vram_device=None,
                 toy=False, control_dirs=(MODELS,)):
        self.task, self.model, self.note, self.toy = task, model, note, toy
        self.control_dirs = tuple(control_dirs)  # the folders whose control files the units may name
        self.output_dir, self.annotator_weights = output_dir, annotator_weights
        self.low_vram_device = low_vram_device  # keep the model in CPU memory, run it part by part there
        self.nets = {}  # the units' ControlNets by file
        self.precision = precision_of(model) if model is not None else None
        self.options = ModelOptions() if toy else task.options  # what the model was built with (apps.launch)
        self.generates = model is not None and not (toy and task.toy is None)
        if model is not None and not self.generates:
            self.note += ("\n\nThe toy model follows outlines only, not these maps: the app shows the map, and "
                          "generates once the control file is in place.")
        elif model is not None:
            self.note += f"\n\nComputing in {self.precision}."

    def defaults(self):
        """The Settings the page starts from: the task's, at the size the model's family was trained at (SDXL:
        1024)."""
        defaults = self.task.defaults(self.toy)
        if isinstance(self.model, DiffusionEngine):
            defaults = replace(defaults, image_resolution=SDXL_RESOLUTION, detect_resolution=SDXL_RESOLUTION)
        return defaults

    def detect(self, picture, image_resolution, detect_resolution=None, annotator=None, **params):
        """The condition map at the generation size: image resolution's grid, sides multiples of 64."""
        annotator = annotator or self.task.annotator
        if annotator not in (*ANNOTATORS, NO_ANNOTATOR, None):
            raise SettingError(f"preprocessor {short(annotator)} is not one of {NO_ANNOTATOR}, {', '.join(ANNOTATORS)}")
        nearest = self.task.nearest if annotator in (self.task.annotator, NO_ANNOTATOR) else (
            annotator in NEAREST_ANNOTATORS)
        if annotator in (None, NO_ANNOTATOR):
            return condition_map(picture, None, image_resolution, nearest=nearest)
        accepted = inspect.signature(ANNOTATORS[annotator]).parameters  # the page's sliders serve several
        params = {k: v for k, v in params.items() if k in accepted}
        return condition_map(picture, annotator, image_resolution, detect_resolution, nearest,
                             self.annotator_weights, **params)

    def prepare(self, image, resolution, detect_resolution, params, preprocessor, mask_blur, edited=None):
        """(the control's condition, the map shown and saved, the starting picture, the mask, the picture the
        condition comes from) for the UI's input (and the pose editor's map, which replaces the detection)."""
        if edited is not None:
            detected = self.detect(edited, resolution, annotator=NO_ANNOTATOR)
            return detected, detected, None, None, edited if image is None else image
        if image is None:
            raise ImageError("no picture was given: upload one" + (" or add a person in the pose editor"
                                                                   if self.task.pose_editor else ""))
        if self.task.workflow == "inpaint":
            picture, mask = painted(image)
            init = resize_image(picture, resolution)
            mask = cv2.resize(mask, (init.shape[1], init.shape[0]), interpolation=cv2.INTER_LINEAR)
            condition = inpaint_condition(init, mask, mask_blur)
            return condition, condition_picture(condition), init, mask, picture
        picture = drawing(image) if self.task.canvas else image
        detected = self.detect(picture, resolution, detect_resolution, preprocessor, **params)
        init = resize_image(to_rgb_uint8(picture), resolution) if self.task.workflow == "img2img" else None
        return detected, detected, init, None, picture

    def ready_units(self, units, picture, size, settings, detect_resolution):
        """The enabled extra units ready to run: each one's map detected (from its picture, else the app's; an
        IP-Adapter unit's picture as it is) and fitted to the generation's `size`, its region mask fitted, the
        preprocessor that ran named."""
        ready = []
        for unit in units:
            preprocessor = unit.preprocessor or self.task.unit_preprocessor
            if unit.control and isinstance(self.control_net(unit.control), IPAdapter):
                preprocessor = NO_ANNOTATOR  # an image prompt: the picture itself, which the adapter's encoder reads
            detected = self.detect(unit.image if unit.image is not None else picture, settings.image_resolution,
                                   detect_resolution, preprocessor)
            detected = fit(detected, size, settings.resize_mode, nearest=preprocessor in NEAREST_ANNOTATORS)
            region = None if unit.region_mask is None else fit(unit.region_mask, size, settings.resize_mode)
            unit = replace(unit, image=detected, preprocessor=preprocessor, region_mask=region)
            ready.append(unit)
        return ready

    def pose_json(self, picture, detector, include_hand, include_face, detect_resolution, pixel_perfect,
                  image_resolution):
        """The pose editor's JSON for a picture, detected at the resolution a generation would detect at."""
        resolution = image_resolution if pixel_perfect else detect_resolution
        return detected_json(picture_or_none(picture), detector, include_hand, include_face, resolution,
                             self.annotator_weights)

    def control_net(self, name):
        """A unit's ControlNet file, loaded once, in the model's dtype and on its device: only a file of the
        server's control folders, by name (a caller learns nothing of other paths, whether they exist or not)."""
        offered = control_choices(self.control_dirs)[1:]
        if name not in offered:
            raise SettingError(f"control {short(name)} is not one of the control files this server offers: "
                               f"{', '.join(offered) or 'none'}")
        path = find_model_file(name, self.control_dirs)
        if path not in self.nets:
            self.nets[path] = load_control_net(self.model, path).to(self.model.betas.device)
        return self.nets[path]

    def __call__(self, image, **values):
        """The page's input picture and its other inputs by name (Task.inputs(); any left out take the page's
        defaults) -> (the maps and the images, what happened)."""
        if isinstance(image, (str, os.PathLike)):  # a file, as Gradio hands over an example's picture
            image = read_image(image)
        params = {p.name: p.checked(values.pop(p.name)) for p in self.task.annotator_params if p.name in values}
        units = [unit for k in EXTRA_UNITS if (unit := pop_unit(k, values)) is not None]
        preprocessor, region = values.pop("preprocessor", None), region_of(values.pop("region_mask", None))
        pose = values.pop("pose", None)
        if str(values.get("block_weights", "")).strip() == "":  # an emptied box: the default
            values.pop("block_weights", None)
        settings = self.defaults().with_values(**values)
        named_loras(settings, paths=False)  # a page's LoRAs are the server's files in models/loras/, by name
        detect_resolution = None if self.task.detect_resolution is None else settings.detect_resolution
        if settings.pixel_perfect:  # the annotator sees the picture at the size it is generated at
            detect_resolution = settings.image_resolution
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always", AnnotatorNotice)
            edited = pose_picture(pose) if self.task.pose_editor else None  # says who found the pose
            condition, shown, init, mask, picture = self.prepare(image, settings.image_resolution,
                                                                 detect_resolution, params, preprocessor,
                                                                 settings.mask_blur, edited)
            units = self.ready_units(units, picture, shown.shape[:2], settings, detect_resolution)
        unit_maps = [unit.image for unit in units]
        said = "".join(f" {n.message}" for n in notices if issubclass(n.category, AnnotatorNotice))
        if not self.generates:
            return [shown, *unit_maps], self.note + said
        if self.toy and looks_like_a_photo(to_rgb_uint8(picture)):
            said += " " + TOY_PHOTO_NOTE
        if region is not None:
            region = fit(region, shown.shape[:2], settings.resize_mode)
        hint = None if self.toy and self.task.toy == "plain" else condition
        notes = {"annotator": params, "preprocessor": preprocessor, "size": list(shown.shape[:2]),
                 **({"pose": pose} if edited is not None else {})}
        own = getattr(self.model, "control_model", None)
        kind = preprocessor or self.task.annotator or self.task.name  # the app's map: inpaint's, ip2p's
        first = typed(replace(settings.units[0], region_mask=region), own, kind)
        units = [typed(unit, self.control_net(unit.control) if unit.control else own, unit.preprocessor)
                 for unit in units]
        request = Request(settings.with_values(units=(first, *units)), hint, shown, init, mask, self.options,
                          inpaint_control=self.task.workflow == "inpaint" and hint is not None, notes=notes)
        nets = {unit.control: self.control_net(unit.control) for unit in units if unit.control is not None}
        paths = Paths.numbered(next_path(self.output_dir, self.task.name))  # one number for the request's files
        images, seed, record, saved = run(self.model, request, paths, nets, self.low_vram_device,
                                          map_params={"annotator": params})
        files = [record[k] for k in BESIDE if k in record]
        files += [unit[k] for unit in record.get("controls", []) for k in BESIDE if k in unit]
        saved = ", ".join(path.name for path in saved)
        info = f"Seed {seed}. Saved {saved} and {', '.join(files)} in {self.output_dir}/.{said}"
        return [shown, *unit_maps, *images], info


def painted(editor_value):
    """An inpaint editor's value -> (the picture RGB uint8, the mask: 255 where painted over)."""
    if not isinstance(editor_value, dict) or editor_value.get("background") is None:
        raise ImageError("no picture was given: upload one, then paint over what to redraw")
    picture = to_rgb_uint8(editor_value["background"])
    marks = [marked(np.asarray(layer)) for layer in editor_value.get("layers") or [] if layer is not None]
    if not any(m.any() for m in marks):
        raise ImageError("paint over the part of the picture to redraw (the brush marks the mask; through the "
                         "API, give the mask as a layer: white where to redraw, black elsewhere)")
    mask = np.max([cv2.resize(m, picture.shape[1::-1], interpolation=cv2.INTER_NEAREST) for m in marks], axis=0)
    return picture, mask


def drawing(editor_value):
    """A canvas value (gradio ImageEditor dict, or a plain array) -> RGB, strokes dark on white."""
    if isinstance(editor_value, dict):  # the drawing; a picture sent alone through the API is its background
        composite = editor_value.get("composite")
        editor_value = editor_value.get("background") if composite is None else composite
    if editor_value is None:
        raise ImageError("the canvas is empty: draw something first")
    return to_rgb_uint8(editor_value)
