"""The files a person names, checked before anything slow: these need neither torch nor the models, so an entry
point can look at every file it was given within a second and say what is wrong, before it builds a model.
"""

from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"  # where bare file names are looked for

# Where the well-known files come from, for the message when one is missing.
KNOWN_SOURCES = {
    "v1-5-pruned.ckpt": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v1-5-pruned-emaonly.safetensors": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v2-1_512-ema-pruned.ckpt": "https://huggingface.co/stabilityai/stable-diffusion-2-1-base",
    "v2-1_768-ema-pruned.ckpt": "https://huggingface.co/stabilityai/stable-diffusion-2-1",
}
CONTROL_V10_SOURCE = "https://huggingface.co/lllyasviel/ControlNet/tree/main/models"
CONTROL_V11_SOURCE = "https://huggingface.co/lllyasviel/ControlNet-v1-1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for the model at hand; the message says why and what to do."""


def where_to_get(name):
    if name in KNOWN_SOURCES:
        return KNOWN_SOURCES[name]
    if name.startswith("control_sd15_") or name.startswith("control_sd21_"):
        return CONTROL_V10_SOURCE
    if name.startswith("control_v11"):
        return CONTROL_V11_SOURCE
    return None


def missing_file_message(path):
    path = Path(path)
    source = where_to_get(path.name)
    hint = f"download it from {source} and put it in {path.parent}/" if source else "check the path"
    return f"checkpoint {path} not found: {hint}"


def check_checkpoint_file(path):
    """`path` if its first bytes are those of a checkpoint this project reads (safetensors, a torch zip or a
    legacy pickle) or it is a diffusers folder; else an error saying what is wrong. Entry points call it on every
    file they are given before building a model, so a wrong path fails in a moment, not after the build."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and not is_diffusers_base(path):
            raise CheckpointError(f"{path} is a folder without config.json or model_index.json: give a checkpoint "
                                  "file, or a diffusers model or pipeline folder")
        return path
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path))
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix.lower() == ".safetensors":  # a little-endian header length, then the JSON header
        readable = len(head) == 9 and int.from_bytes(head[:8], "little") < size and head[8:] == b"{"
    else:
        readable = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")
    if not readable:
        raise CheckpointError(f"{path} could not be read as a checkpoint (truncated or not a checkpoint file?): it "
                              f"starts with {head[:8]!r}; give a .safetensors, .ckpt or .pth file")
    return path


def plain_name(name):
    """Whether `name` is a file name with no folder in it (no separator, no '..', not absolute)."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and not any(
        c in name for c in "\\\0")


def find_model_file(name, folders=None):
    """A file named on the command line -> its path (a bare name is looked for in models/). With `folders` (a
    record's, or what a server offers), only a plain file name in one of them: a record or a caller cannot
    point at other files, nor tell from the message whether a path exists elsewhere."""
    if folders is not None:
        found = [Path(folder) / name for folder in folders if plain_name(name) and (Path(folder) / name).is_file()]
        if not found:
            raise CheckpointError(f"{str(name)[:100]!r} is not a file in {', '.join(map(str, folders))}: name one "
                                  "of the files there (put the file there first)")
        return found[0]
    path = Path(name)
    if not path.exists() and (MODELS / name).exists():
        path = MODELS / name
    if not path.exists():
        raise CheckpointError(f"{name} not found (in models/ or as a path): put the file in {MODELS}/ or give its "
                              "path")
    return path


def check_config_file(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"config {path} not found: give the model's yaml (the shipped ones are in models/, "
                                "e.g. models/cldm_v15.yaml)")
    return Path(path)


def check_picture_file(path):
    """`path` if it opens as a picture (its header only; the pixels are decoded later)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"picture {path} not found: check the path")
    try:
        with Image.open(path):
            return path
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not a readable image ({error}); give a PNG, JPEG or WebP file") from None


def check_output_file(path, force=False):
    """`path` if it is a free .safetensors name (the format this project writes), or `force` allows replacing it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: outputs are written as .safetensors; name the output *.safetensors")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force to replace it")
    return path


def is_diffusers_base(path):
    """Whether `path` is a diffusers pipeline folder (model_index.json beside the parts' folders)."""
    path = Path(path)
    return path.is_dir() and (path / "model_index.json").is_file()
