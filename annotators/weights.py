"""Where the detectors' weights come from: a folder the user names, else annotators/ckpts, else the model hub.

The files and their names are those of the lllyasviel/Annotators repository that every ControlNet tool uses,
so a folder of them from another install works here unchanged.
"""

import http.client
import os
import threading
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

CKPT_DIR = Path(__file__).resolve().parent / "ckpts"
HUB_REPO = "lllyasviel/Annotators"
ENV_VAR = "CONTROLNET_ANNOTATOR_CKPTS"

# file -> approximate size, for the message that tells a user what to download
FILES = {
    "ControlNetHED.pth": "29 MB",
    "mlsd_large_512_fp32.pth": "6 MB",
    "body_pose_model.pth": "209 MB",
    "hand_pose_model.pth": "147 MB",
    "facenet.pth": "154 MB",
    "dpt_hybrid-midas-501f0c75.pt": "492 MB",
    "sk_model.pth": "17 MB",
    "sk_model2.pth": "17 MB",
    "netG.pth": "218 MB",
    "table5_pidinet.pth": "3 MB",
    "res101.pth": "531 MB",
    "latest_net_G.pth": "218 MB",
    "ZoeD_M12_N.pt": "1.4 GB",
    "scannet.pt": "291 MB",
}
SEG_REPO = "openmmlab/upernet-convnext-small"  # UperNet + ConvNeXt trained on ADE20K, a transformers folder
FILES[SEG_REPO] = "330 MB"

# What each annotator of annotators.ANNOTATORS loads at its default parameters, so that a page can say before
# running which of them need weights (a hub repository stands for its transformers folder). Those not named
# need none; "pose" uses OpenPose's files when they are on disk and mediapipe's bundled model otherwise.
NEEDS = {
    "hed": ("ControlNetHED.pth",),
    "fake_scribble": ("ControlNetHED.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "normal": ("dpt_hybrid-midas-501f0c75.pt",),
    "seg": (SEG_REPO,),
    "lineart": ("sk_model.pth", "sk_model2.pth"),
    "lineart_anime": ("netG.pth",),
    "softedge": ("table5_pidinet.pth",),
    "scribble_from_photo": ("ControlNetHED.pth",),
    "depth_leres": ("res101.pth", "latest_net_G.pth"),
    "depth_zoe": ("ZoeD_M12_N.pt",),
    "normalbae": ("scannet.pt",),
}
PROBE_TIMEOUT = 1.5  # seconds the hub gets to answer before the machine counts as offline


class WeightsError(FileNotFoundError):
    """A detector's weights are neither on disk nor downloadable; the message names the file and where it goes."""


def search_dirs(location=None):
    dirs = [Path(location)] if location else []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    return dirs + [CKPT_DIR]


def weights_on_disk(filenames, location=None):
    """The folder holding every one of `filenames`, looked for without downloading; None if none does."""
    return next((folder for folder in search_dirs(location) if all((folder / n).is_file() for n in filenames)), None)


def found_on_disk(names, location=None):
    """The folder holding `names` (files, or one hub repository's transformers folder) without downloading."""
    if len(names) == 1 and "/" in names[0]:
        return transformers_on_disk(names[0], location)
    return weights_on_disk(names, location)


def hub_set_offline():
    """The hub's own offline switch (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now rather than at import."""
    from huggingface_hub import constants

    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


@lru_cache(maxsize=1)
def hub_reachable():
    """Whether the model hub answers at all, asked once per process: offline, the hub client's own retries take
    about 24 s per file to give up."""
    from huggingface_hub import constants

    answered, done = [], threading.Event()

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=PROBE_TIMEOUT)
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # any status is an answer
        except (OSError, ValueError, http.client.HTTPException):
            answered.append(False)  # no route, no name, no answer in time, or no HTTP
        finally:
            done.set()

    # name lookups ignore urlopen's timeout: waiting on a thread bounds them too
    threading.Thread(target=probe, daemon=True).start()
    done.wait(PROBE_TIMEOUT + 0.5)
    return any(answered)


def why_no_download():
    """None when downloads can be tried; else why not, for the message."""
    if hub_set_offline():
        return "downloads are off (HF_HUB_OFFLINE)"
    if not hub_reachable():
        from huggingface_hub import constants

        return f"{constants.ENDPOINT} cannot be reached (offline?)"
    return None


def weights_dir(filenames, location=None):
    """The folder holding every one of `filenames`, downloading missing ones into annotators/ckpts if online."""
    found = weights_on_disk(filenames, location)
    if found:
        return found
    if location:  # a folder named explicitly is never silently replaced by a download
        missing = [name for name in filenames if not (Path(location) / name).is_file()]
        raise WeightsError(f"{', '.join(missing)} not found in {location}. " + where_to_get(missing))
    missing = [name for name in filenames if not (CKPT_DIR / name).is_file()]
    blocked = why_no_download()
    if blocked:
        raise WeightsError(f"{', '.join(missing)} not on disk, and {blocked}. " + where_to_get(missing))
    try:
        from huggingface_hub import hf_hub_download

        for name in missing:
            hf_hub_download(HUB_REPO, name, local_dir=CKPT_DIR)
    except Exception as error:  # offline, hub unreachable, or the file moved: say what to do by hand
        raise WeightsError(f"could not download {', '.join(missing)} ({type(error).__name__}). "
                           + where_to_get(missing)) from error
    return CKPT_DIR


@lru_cache(maxsize=16)
def aux_detector(name, files, location=None, **options):
    """controlnet-aux's detector class `name`, loaded once from the folder holding `files` (see weights_dir)
    and moved to the GPU when there is one."""
    import controlnet_aux

    from annotators.util import device

    folder = weights_dir(list(files), location)
    return getattr(controlnet_aux, name).from_pretrained(str(folder), **options).to(device())


def where_to_get(filenames):
    files = ", ".join(f"{name} (about {FILES.get(name, '?')})" for name in filenames)
    return (f"Download {files} from https://huggingface.co/{HUB_REPO}/tree/main and put it in {CKPT_DIR}, "
            f"or in a folder named by ${ENV_VAR}.")


def seg_dir(location=None):
    """A transformers UperNet folder (config.json + weights + preprocessor_config.json) for the seg detector."""
    return transformers_dir(SEG_REPO, "UperNet", FILES[SEG_REPO], location)


def transformers_on_disk(repo, location=None):
    """Hub repository `repo`'s transformers folder in `location` or the usual places, as the folder itself or a
    subfolder named like the repository; None if there is none."""
    name = repo.split("/")[1]
    candidates = (candidate for folder in search_dirs(location) for candidate in (folder, folder / name))
    return next((candidate for candidate in candidates if (candidate / "config.json").is_file()), None)


def transformers_dir(repo, what, size, location=None):
    """The transformers folder of hub repository `repo` (config.json + weights + preprocessor_config.json), on
    disk (see transformers_on_disk) or else downloaded into annotators/ckpts/ when online."""
    found = transformers_on_disk(repo, location)
    if found:
        return found
    target = CKPT_DIR / repo.split("/")[1]
    advice = (f"Download the folder https://huggingface.co/{repo} (about {size}: config.json, model.safetensors, "
              f"preprocessor_config.json) into {target}.")
    if location:
        raise WeightsError(f"no {what} folder (config.json and weights) in {location}. {advice}")
    blocked = why_no_download()
    if blocked:
        raise WeightsError(f"no {what} folder on disk, and {blocked}. {advice}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_dir=target))
    except Exception as error:
        raise WeightsError(f"could not download {repo} ({type(error).__name__}). {advice}") from error


