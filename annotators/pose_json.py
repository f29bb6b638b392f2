"""Poses as OpenPose JSON, written and read through one schema: what the pose editor downloads and uploads, what
the pose app's Run sends, what `generate.py --pose` reads.

A frame is {"canvas_width", "canvas_height", "people": [person, ...]} (OpenPose's own output has no canvas:
it is read at a size given by the caller); a person has flat [x, y, confidence, ...] lists in pixels:
"pose_keypoints_2d" (18 COCO points, or OpenPose's BODY_25), "hand_left_keypoints_2d" and
"hand_right_keypoints_2d" (21 each), "face_keypoints_2d" (70). Anything else is refused with a PoseError
that says what was wrong: sizes and nesting are bounded, numbers finite, counts exact; points off the canvas
or with confidence 0 are missing points, as OpenPose writes them.
"""

import json
import numbers
from typing import NamedTuple

from annotators.util import MAX_SIDE

MAX_BYTES = 4 * 2**20  # a frame of 100 people with hands and face is ~0.2 MB
MAX_PEOPLE = 100
MAX_NOTE = 1000
# OpenPose's BODY_25 -> the 18 COCO points (BODY_25 adds the mid hip, 8, and six foot points, 19-24)
BODY25_TO_COCO18 = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
# each part's key and the point counts it may have
PARTS = {"body": ("pose_keypoints_2d", (18, 25)), "left hand": ("hand_left_keypoints_2d", (21,)),
         "right hand": ("hand_right_keypoints_2d", (21,)), "face": ("face_keypoints_2d", (70,))}


class PoseError(ValueError):
    """OpenPose JSON that cannot be drawn; the message says what was wrong."""


class PoseFrame(NamedTuple):
    poses: list  # controlnet-aux PoseResults, keypoints in [0, 1] of the canvas
    size: tuple  # (H, W) of the canvas
    note: str | None = None  # which detector found the poses, when this project wrote the frame


def flat(keypoints, width, height):
    """Keypoints -> OpenPose's flat [x, y, confidence, ...] in pixels; a missing point is 0, 0, 0."""
    values = []
    for k in keypoints or []:
        values += [0.0, 0.0, 0.0] if k is None else [float(k.x) * width, float(k.y) * height, float(k.score)]
    return values


def poses_to_json(poses, size, note=None):
    height, width = size
    people = [{
        "pose_keypoints_2d": flat(p.body.keypoints, width, height),
        "hand_left_keypoints_2d": flat(p.left_hand, width, height),
        "hand_right_keypoints_2d": flat(p.right_hand, width, height),
        "face_keypoints_2d": flat(p.face, width, height),
    } for p in poses]
    frame = {"canvas_width": width, "canvas_height": height, "people": people}
    return json.dumps({**frame, "note": note} if note else frame)


def read_pose_json(text, size=None):
    """OpenPose JSON (text or bytes) -> PoseFrame, the body at the 18 points the pose controls were trained on;
    a frame without a canvas size (OpenPose's own output) is read at `size` (H, W) when given."""
    from controlnet_aux.open_pose import BodyResult, PoseResult

    frame = parsed(text)
    if not isinstance(frame, dict):
        raise PoseError(f"OpenPose JSON must be an object with canvas_width, canvas_height and people, not a "
                        f"{type(frame).__name__}")
    height, width = canvas_of(frame, size)
    people, note = frame.get("people"), frame.get("note")
    if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
        raise PoseError("OpenPose JSON: people must be a list of people (objects with pose_keypoints_2d, ...)")
    if len(people) > MAX_PEOPLE:
        raise PoseError(f"OpenPose JSON: {len(people)} people; at most {MAX_PEOPLE} are drawn")
    if note is not None and not (isinstance(note, str) and len(note) <= MAX_NOTE):
        raise PoseError(f"OpenPose JSON: the note must be text of at most {MAX_NOTE} characters")
    poses = []
    for i, person in enumerate(people, start=1):
        parts = {part: keypoints(person, part, i, width, height) for part in PARTS}
        body = parts["body"] or [None] * 18  # hands or a face alone: drawn without a body
        if len(body) == 25:
            body = [body[j] for j in BODY25_TO_COCO18]
        body = [None if k is None else k._replace(id=j) for j, k in enumerate(body)]
        found = sum(k is not None for k in body)
        poses.append(PoseResult(BodyResult(body, float(found), found), parts["left hand"], parts["right hand"],
                                parts["face"]))
    return PoseFrame(poses, (height, width), note)


def read_pose_file(path, size=None):
    """An OpenPose JSON file -> PoseFrame (a file larger than a pose file can be is not read)."""
    with open(path, "rb") as f:
        text = f.read(MAX_BYTES + 1)
    try:
        return read_pose_json(text, size)
    except PoseError as error:
        raise PoseError(f"{path}: {error}") from None


def parsed(text):
    if not isinstance(text, (str, bytes, bytearray)):
        raise PoseError(f"OpenPose JSON must be text, not {type(text).__name__}")
    if len(text) > MAX_BYTES:
        raise PoseError(f"OpenPose JSON longer than {MAX_BYTES} characters: a pose file is far smaller")
    if not isinstance(text, str):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise PoseError("OpenPose JSON must be UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=not_finite, parse_float=finite_float)
    except RecursionError:
        raise PoseError("OpenPose JSON nested too deeply: a frame is an object of people of lists") from None
    except ValueError as error:
        raise PoseError(f"not OpenPose JSON: {error}") from None


def not_finite(constant):
    raise ValueError(f"{constant} is not a finite number")


def finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:30]} is not a finite number")
    return value


def canvas_of(frame, size):
    """(H, W) of the frame's canvas: its own, else `size`; whole numbers from 1 to MAX_SIDE."""
    given = [k for k in ("canvas_width", "canvas_height") if k in frame]
    if not given and size is not None:
        return tuple(size)
    if len(given) < 2:
        raise PoseError("OpenPose JSON: give both canvas_width and canvas_height (the picture's size in pixels)")
    sides = []
    for key in ("canvas_height", "canvas_width"):
        side = frame[key]
        if not (isinstance(side, numbers.Real) and not isinstance(side, bool) and side == int(side)
                and 1 <= side <= MAX_SIDE):
            raise PoseError(f"OpenPose JSON: {key} must be a whole number of pixels from 1 to {MAX_SIDE}, not "
                            f"{json.dumps(side)[:40]}")
        sides.append(int(side))
    return tuple(sides)


def keypoints(person, part, i, width, height):
    """A person's points of `part` as Keypoints in [0, 1] (None where missing), or None without that part."""
    from controlnet_aux.open_pose import Keypoint

    key, counts = PARTS[part]
    values = person.get(key)
    if values is None or values == []:
        return None
    if not isinstance(values, list) or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                               for v in values):
        raise PoseError(f"OpenPose JSON: person {i}'s {key} must be a list of numbers (x, y, confidence, ...)")
    if len(values) not in [3 * n for n in counts]:
        raise PoseError(f"OpenPose JSON: person {i}'s {part} has {len(values)} numbers; it takes "
                        f"{' or '.join(str(n) for n in counts)} points of 3 (x, y, confidence)")
    points = [values[j:j + 3] for j in range(0, len(values), 3)]
    # a missing body point is None; a hand's or the face's is at 0, 0, which controlnet-aux does not draw
    missing = None if part == "body" else Keypoint(0.0, 0.0, 0.0)
    return [Keypoint(x / width, y / height, c, j) if c > 0 and 0 <= x <= width and 0 <= y <= height else
            missing if missing is None else missing._replace(id=j) for j, (x, y, c) in enumerate(points)]
