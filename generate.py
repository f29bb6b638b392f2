"""Generate images from a condition and a prompt on the command line: the apps' generation, scriptable.

    # a photo through an annotator, on real SD weights
    python generate.py --prompt "a house" --image house.jpg --annotator canny \
        --ckpt models/control_sd15_canny.pth --out outputs/house.png
    # every picture of a folder, two samples each
    python generate.py --prompt "a house" --input-dir photos/ --annotator hed --samples 2 --out-dir outputs/houses
    # a ready-made condition map, a second ControlNet with its own map and scale, another sampler
    python generate.py --prompt "a dancer" --hint pose.png --extra-control control_depth.safetensors depth.png 0.6 \
        --sampler "DPM++ 2M Karras"
    # image-to-image, and inpainting with the 1.1 inpaint control (its condition is the masked picture)
    python generate.py --prompt "a stone house" --image house.jpg --annotator canny --init-image house.jpg --denoise 0.6
    python generate.py --prompt "a red door" --init-image house.jpg --mask door-mask.png --inpaint-control \
        --ckpt models/v1-5-pruned.ckpt models/control_v11p_sd15_inpaint.pth
    # the same image again, from the parameters saved in a result
    python generate.py --reproduce outputs/house-00001.png

With no checkpoint, the project's shipped default model (a small SD trained on generated shapes, with a
shape-outline ControlNet) is used, so everything runs offline. Every result is saved as PNG with its
generation parameters (and its condition map beside it).
"""

import argparse
import os
from pathlib import Path

from ldm.errors import add_debug_argument, run_main
from ldm.files import MODELS, check_checkpoint_file, check_config_file, check_picture_file, find_model_file

PICTURE_FLAGS = ("hint", "image", "reproduce", "region_mask", "init_image", "mask")


def add_file_arguments(p):
    """The flags that name files (checked before anything slow is imported)."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--hint", help="a condition map (edges, pose, ...) used as it is")
    source.add_argument("--image", help="a picture turned into a condition map by --annotator")
    source.add_argument("--input-dir", help="every picture in this folder, through --annotator (or as maps)")
    source.add_argument("--pose", help="an OpenPose JSON file with its canvas size (the pose editor's download) "
                        "drawn as the condition map")
    source.add_argument("--reproduce", help="a PNG saved by this project: generate it again from its parameters")
    p.add_argument("--config", help="model yaml, used with --ckpt (default: the base's family, from its keys: "
                                   "models/cldm_v15.yaml, cldm_v21.yaml or sd_xl_base.yaml)")
    p.add_argument("--ckpt", nargs="*", default=[], help="checkpoints to load in order (base, then control)")
    p.add_argument("--vae", help="a VAE file to decode (and encode) with instead of the base's: SDXL's fp16-fix "
                                "VAE, a fine-tuned one (the release's layout, the VAE's own keys, or diffusers')")
    p.add_argument("--extra-control", nargs=3, action="append", default=[], metavar=("CKPT", "HINT", "SCALE"),
                   help="another control file (a ControlNet, T2I-Adapter...) with its own condition map and scale "
                        "(repeatable); for a ControlNet-Union, TYPE:SCALE says which kind of map it is (depth:0.6); "
                        "reference_only, reference_adain or reference_adain+attn in place of the file: the picture "
                        "is a reference")
    p.add_argument("--region-mask", help="a picture, white where the control acts (default: everywhere)")
    p.add_argument("--init-image", help="image-to-image: start from this picture instead of pure noise "
                                        "(--denoise says how much of it is redrawn)")
    p.add_argument("--mask", help="inpainting: redraw --init-image only where this picture is white")
    p.add_argument("--out", default="outputs/sample.png", help="output file; the condition map goes beside it")
    p.add_argument("--out-dir", default="outputs", help="output folder for --input-dir")
    p.add_argument("--inpaint-control", action="store_true",
                   help="the ControlNet is an inpaint one (control_v11p_sd15_inpaint): its condition is "
                        "--init-image with the --mask pixels at -1")


def check_files(args):
    """Every file the flags name, looked at (headers only) before a model is built: a wrong one fails at once."""
    if args.mask and not args.init_image:
        raise ValueError("--mask needs --init-image: the picture the mask applies to")
    if args.inpaint_control and not args.mask:
        raise ValueError("--inpaint-control needs --init-image and --mask")
    if args.ckpt and args.config:
        check_config_file(args.config)
    for path in [*args.ckpt, *([args.vae] if args.vae else [])]:
        check_checkpoint_file(path)
    for ckpt, hint, scale in args.extra_control:
        if Path(ckpt).suffix or Path(ckpt).exists():  # a bare name is checked once read: it may be a reference mode
            check_checkpoint_file(find_model_file(ckpt))
        check_picture_file(hint)
        kind, scale = split_scale(scale)
        try:
            float(scale)
        except ValueError:
            raise ValueError(f"--extra-control {ckpt}: its scale {scale!r} is not a number") from None
        if kind not in (AUTO, *UNION_TYPES):
            raise ValueError(f"--extra-control {ckpt}: control type {kind!r} is not one of {', '.join(UNION_TYPES)}")
    for flag in PICTURE_FLAGS:
        if getattr(args, flag):
            check_picture_file(getattr(args, flag))
    if args.pose and not Path(args.pose).is_file():
        raise FileNotFoundError(f"--pose {args.pose} not found: check the path")
    if args.input_dir and not Path(args.input_dir).is_dir():
        raise FileNotFoundError(f"--input-dir {args.input_dir} is not a folder")
    folder = Path(args.out_dir) if args.input_dir else Path(args.out).parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PermissionError(f"cannot write the outputs in {folder}: choose another --out / --out-dir")


def check_command_line(argv=None):
    p = argparse.ArgumentParser(add_help=False)
    add_file_arguments(p)
    check_files(p.parse_known_args(argv)[0])


if __name__ == "__main__":  # before the slow imports below: a wrong file fails in a moment, not after them
    run_main(check_command_line)

# ruff: noqa: E402
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from annotators import (
    ANNOTATORS,
    REFERENCE_MODES,
    ImageError,
    condition_map,
    fit,
    list_pictures,
    read_image,
    resize_image,
)
from annotators.pose import draw
from annotators.pose_json import read_pose_file
from cldm.img2img import condition_picture, inpaint_condition
from cldm.model import ModelOptions, load_control_net, load_model
from cldm.outputs import BESIDE, RecordError, beside_record, read_params
from cldm.request import Paths, Request, run
from cldm.settings import ControlUnit, SettingError, Settings, add_arguments, from_args, short
from cldm.speed import speed_up
from cldm.union import AUTO, UNION_TYPES, split_scale, typed
from cldm.vae_files import load_vae
from ldm.precision import PRECISIONS, add_precision_argument, resolve_precision
from ldm.runtime import BACKENDS, backend_precision
from ldm.sdxl import SDXL_RESOLUTION, DiffusionEngine
from ldm.threads import add_threads_argument, use_threads
from toy.model import TOY_PROMPT, TOY_SAMPLING, circle_outline, load_default_model

# the command line's own defaults: the shipped toy model's prompt and size
CLI_DEFAULTS = Settings(prompt=TOY_PROMPT, image_resolution=128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_file_arguments(p)
    add_debug_argument(p)
    p.add_argument("--annotator", choices=sorted(ANNOTATORS), help="detector for --image / --input-dir")
    add_arguments(p, CLI_DEFAULTS)  # every generation setting: --steps, --sampler, --image-resolution, ...
    p.add_argument("--lora", action="append", default=[], metavar="FILE:WEIGHT",
                   help="a LoRA merged into the base for the generation (repeatable; a file, or a name in "
                        "models/loras/; :WEIGHT defaults to 1); with --loras and <lora:name:weight> prompt tags")
    p.add_argument("--low-vram", action="store_true", help="keep only the running part of the model on the GPU")
    add_precision_argument(p, default=None)  # None: the saved one with --reproduce, else auto
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNets")
    p.add_argument("--backend", choices=BACKENDS, help="what runs the UNet, ControlNets and VAE decoder: torch, or "
                   'OpenVINO on the CPU (fp32; pip install -e ".[openvino]"); default torch, or the saved one')
    add_threads_argument(p)  # None: the saved count with --reproduce, else the default policy
    p.add_argument("--text-windows", type=int, help="prompt windows of 75 tokens the CLIP text encoder reads, as "
                   "the control was trained (the 1.1 anime line-art control: 3; default 1, or the saved one)")
    p.add_argument("--clip-skip", type=int, help="the CLIP layer the prompt is read from, counted from the last "
                   "(the 1.1 anime line-art control: 2; default 1, or the saved one)")
    p.add_argument("--pooled", action=argparse.BooleanOptionalAction, help="the control's residuals pooled, as the "
                   "1.1 shuffle control was trained (default: no, or the saved choice)")
    # not given: the family's (SDXL: 1024), else CLI_DEFAULTS's; the shipped model's own sampling
    p.set_defaults(image_resolution=None, **{name: None for name in TOY_SAMPLING})
    return p.parse_args(argv)


def detected_map(args, settings, picture):
    """A picture -> the condition map at the generation size (through the annotator, if one is named)."""
    if args.annotator:
        detect = settings.image_resolution if settings.pixel_perfect else settings.detect_resolution
        return condition_map(picture, args.annotator, settings.image_resolution, detect)
    return resize_image(picture, settings.image_resolution)


def model_options(args, saved):
    """The ModelOptions the flags give, over those saved with a reproduced image (else the defaults)."""
    options = saved.options if saved is not None else ModelOptions()
    given = {"text_windows": args.text_windows, "clip_skip": args.clip_skip, "pooled": args.pooled}
    return replace(options, **{k: v for k, v in given.items() if v is not None})


def model_for(args, device, precision, options):
    dtype = PRECISIONS[precision]
    if not args.ckpt:
        model = load_default_model(device, dtype, options)
    else:
        model = load_model(args.config, *args.ckpt, dtype=dtype, device=device, options=options)
    return load_vae(model, args.vae) if args.vae else model


@dataclass
class Pictures:
    """What a generation reads beside its condition map (HWC / HW uint8): image-to-image's starting picture,
    inpainting's mask and whether the control is inpaint's, and the control's region mask."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    inpaint_control: bool = False
    region: np.ndarray | None = None

    def sized(self, size, mode="just_resize"):
        """The pictures at the generation size (H, W), fitted by resize `mode`."""
        sized = lambda a: None if a is None else fit(a, size, mode)  # noqa: E731
        return replace(self, image=sized(self.image), mask=sized(self.mask), region=sized(self.region))

    def inpaint_condition(self, blur):
        """The inpaint control's condition, and the map saved to show it (the -1 pixels black)."""
        condition = inpaint_condition(self.image, self.mask, blur)
        return condition, condition_picture(condition)


def pictures_of(args, pictures, resolution):
    image = pictures["init_image"]
    if image is not None:
        image = resize_image(image, resolution)
    return Pictures(image, pictures["mask"], args.inpaint_control, pictures["region_mask"])


def generate_and_save(model, hint, settings, units, nets, out, device, low_vram_mode, start=Pictures(),
                      options=ModelOptions(), last=True):
    """The request the flags make (cldm.request), run and saved: the images as <out> (<out>_<i> for several),
    the map, starting picture, mask and region mask beside them as <out>-map.png, -init.png, -mask.png and
    -region.png, each extra unit's as <out>-unit<k>-map.png and -region.png. `units`: the extra control units
    (ControlUnits whose image is their map); `nets`: their ControlNets by control file. `last`: the run's last
    request (the text encoders are freed once its prompts are encoded)."""
    text_alone = hint is None and start.image is None
    if text_alone and hasattr(model, "control_model"):
        raise ValueError("nothing to generate from: give --hint, --image, --pose or --init-image")
    side = int(np.round(settings.image_resolution / 64.0)) * 64  # a square, from the text alone (a base only)
    size = (side, side) if text_alone else hint.shape[:2] if hint is not None else start.image.shape[:2]
    sized = lambda picture: None if picture is None else fit(picture, size, settings.resize_mode)  # noqa: E731
    units = [replace(unit, image=sized(unit.image), region_mask=sized(unit.region_mask)) for unit in units]
    start = start.sized(size, settings.resize_mode)
    shown = hint
    if start.inpaint_control:
        hint, shown = start.inpaint_condition(settings.mask_blur)
    first = replace(settings.units[0], region_mask=start.region)
    request = Request(settings.with_values(units=(first, *units)), hint, shown, start.image, start.mask, options,
                      start.inpaint_control, size=size if text_alone else None)
    _, seed, _, files = run(model, request, Paths.at(out), nets, device if low_vram_mode else None, verbose=True,
                            last=last)
    for path in files:
        print(f"wrote {path} (seed {seed})")


@dataclass(frozen=True)
class Saved:
    """A saved image's record, read and checked before any model is built: its settings (seed included) and
    control units, the files beside it, how its model was built and run."""

    settings: Settings
    pictures: dict  # BESIDE key -> the file beside the record
    units: list  # (ControlUnit, {BESIDE key: file}) of each extra unit
    precision: str
    threads: int | None
    backend: str
    options: ModelOptions
    inpaint_control: bool

    @classmethod
    def read(cls, path):
        try:
            return cls.checked(path, read_params(path))
        except SettingError as error:
            raise RecordError(f"{path}: {error}") from None

    @classmethod
    def checked(cls, path, saved):
        settings = Settings.from_record(saved).with_values(seed=saved["seed"])
        files = lambda record: {key: beside_record(path, record[key], key) for key in BESIDE  # noqa: E731
                                if record.get(key) is not None}
        controls = saved.get("controls", [])
        if not isinstance(controls, list):
            raise RecordError(f"{path}: its controls must be a list of control units, not {short(controls)}")
        units = [(ControlUnit.from_record(record), files(record)) for record in controls]
        for unit, _ in units:
            if unit.control is not None:
                check_checkpoint_file(find_model_file(unit.control, [MODELS, Path(path).parent]))
        precision = saved.get("precision", "fp32")  # images saved before precisions existed were fp32
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise RecordError(f"{path}: precision {short(precision)} is not one of {', '.join(PRECISIONS)}")
        threads = saved.get("threads")
        if threads is not None and not (type(threads) is int and 1 <= threads <= 1024):
            raise RecordError(f"{path}: threads must be a whole number from 1 to 1024, not {short(threads)}")
        backend = saved.get("backend", "torch")
        if backend not in BACKENDS:
            raise RecordError(f"{path}: backend {short(backend)} is not one of {', '.join(BACKENDS)}")
        inpaint_control = saved.get("inpaint_control", False)
        if not isinstance(inpaint_control, bool):
            raise RecordError(f"{path}: inpaint_control must be true or false, not {short(inpaint_control)}")
        return cls(settings, files(saved), units, precision, threads, backend, ModelOptions.from_record(
            saved.get("model_options")), inpaint_control)

    def read_units(self):
        """The extra control units with their maps and region masks read from beside the record."""
        read = lambda files, key: read_image(str(files[key])) if key in files else None  # noqa: E731
        return [replace(unit, image=read(files, "hint"), region_mask=read(files, "region_mask"))
                for unit, files in self.units]


def unit_control(ckpt, loaded):
    """An extra unit's control: None (the model's own ControlNet) for a file the model was loaded from, so that
    a ControlNet-Union given a second map runs both in one pass; else the file."""
    return None if Path(find_model_file(ckpt)).resolve() in {Path(p).resolve() for p in loaded} else ckpt


def unit_nets(model, units, folders=None):
    """The ControlNets the units' control files name, loaded once each, in the model's dtype and on its device."""
    files = {unit.control for unit in units if unit.control is not None}
    return {name: load_control_net(model, find_model_file(name, folders)).to(model.betas.device) for name in files}


def read_pictures(args):
    """The pictures the flags name, read (and so checked) before any model is built."""
    names = ("hint", "image", "init_image", "mask", "region_mask")
    return {name: read_image(getattr(args, name)) if getattr(args, name) else None for name in names} | {
        "extra": [read_image(hint) for _, hint, _ in args.extra_control],
        "pose": draw(*read_pose_file(args.pose)[:2]) if args.pose else None}


def main(argv=None):
    args = parse_args(argv)
    check_files(args)
    saved = Saved.read(args.reproduce) if args.reproduce else None
    resolution_given = args.image_resolution is not None
    if not resolution_given:
        args.image_resolution = CLI_DEFAULTS.image_resolution
    for name, toy_value in TOY_SAMPLING.items():
        if getattr(args, name) is None:
            setattr(args, name, getattr(CLI_DEFAULTS, name) if args.ckpt else toy_value)
    settings = from_args(args, CLI_DEFAULTS) if saved is None else saved.settings
    args.backend = args.backend or (saved.backend if saved is not None else "torch")  # the saved one: the same bits
    if args.lora:
        settings = settings.with_values(loras=", ".join(p for p in (settings.loras, *args.lora) if p))
    pictures = read_pictures(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.precision is None and saved is not None:
        precision = saved.precision
    else:
        precision = resolve_precision(backend_precision(args.backend, args.precision) or "auto", device)
    saved_threads = saved.threads if saved is not None else None  # the saved count gives the same bits
    threads = use_threads(args.threads if args.threads is not None else saved_threads)
    print(f"computing in {precision} on {device}" + (f" ({threads} threads)" if device == "cpu" else ""))
    options = model_options(args, saved)
    model = model_for(args, "cpu" if args.low_vram else device, precision, options)
    if isinstance(model, DiffusionEngine) and saved is None and not resolution_given:
        settings = settings.with_values(image_resolution=SDXL_RESOLUTION)  # the size SDXL was trained at
    if saved is not None:
        beside = {name: read_image(str(saved.pictures[name])) if name in saved.pictures else None for name in BESIDE}
        start = Pictures(beside["init_image"], beside["mask"], saved.inpaint_control, beside["region_mask"])
        units = saved.read_units()
        nets = unit_nets(model, units, [MODELS, Path(args.reproduce).parent])
        speed_up(model, compile=args.compile, nets=list(nets.values()), backend=args.backend)
        generate_and_save(model, None if start.inpaint_control else beside["hint"], settings, units, nets,
                          args.out, device, args.low_vram, start, options)
        return
    scales = [split_scale(scale) for _, _, scale in args.extra_control]
    units = [ControlUnit(image=hint, strength=float(scale), control_type=kind, preprocessor=ckpt)
             if ckpt in REFERENCE_MODES else
             ControlUnit(image=hint, control=unit_control(ckpt, args.ckpt), strength=float(scale), control_type=kind)
             for (ckpt, _, _), (kind, scale), hint in zip(args.extra_control, scales, pictures["extra"])]
    nets = unit_nets(model, units)
    annotator = "inpaint" if args.inpaint_control else args.annotator  # the kind of the first unit's map
    first = typed(settings.units[0], getattr(model, "control_model", None), annotator)
    settings = settings.with_values(units=(replace(first, preprocessor=args.annotator), *settings.units[1:]))
    speed_up(model, compile=args.compile, nets=list(nets.values()), backend=args.backend)
    if args.input_dir:
        skipped = []
        for path in tqdm(list_pictures(args.input_dir), desc="pictures"):
            try:
                picture = read_image(str(path))
            except ImageError as error:  # one unreadable file does not stop the others
                print(f"skipped {path.name}: {error}")
                skipped.append(path.name)
                continue
            hint = detected_map(args, settings, picture)
            generate_and_save(model, hint, settings, units, nets, Path(args.out_dir) / f"{path.stem}.png", device,
                              args.low_vram, options=options, last=False)
        if skipped:
            raise ImageError(f"{len(skipped)} of the pictures in {args.input_dir} could not be read: "
                             f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
        return
    start = pictures_of(args, pictures, settings.image_resolution)
    if pictures["hint"] is not None:
        hint = resize_image(pictures["hint"], settings.image_resolution)
    elif pictures["image"] is not None:
        hint = detected_map(args, settings, pictures["image"])
    elif pictures["pose"] is not None:
        hint = condition_map(pictures["pose"], None, settings.image_resolution, nearest=True)
    elif start.image is not None:
        hint = None  # image-to-image or inpainting without a map (or with inpaint's own condition)
    elif hasattr(model, "control_model"):
        hint = circle_outline(settings.image_resolution)  # the shipped model's example outline
    else:
        hint = None  # a base alone: from the text
    generate_and_save(model, hint, settings, units, nets, args.out, device, args.low_vram, start, options)


if __name__ == "__main__":
    run_main(main)
