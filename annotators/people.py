"""Everyone's pose offline, from models installed with the packages: no download at run time.

mediapipe's pose solution follows one person. Here its parts are wired per person instead. People are looked
for four ways: CenterNet, a COCO object detector (annotators.person_detector, installed from the npm registry;
without it, the other three); BlazePose's person detector over the whole picture and over overlapping tiles
(it sees 224 pixels, so the tiles find people small in the frame); mediapipe's face detectors (close-ups and
portraits); OpenCV's people detector (small upright people). Each find becomes a region the pose landmark model
reads twice (the second time in the region its first skeleton gives, as mediapipe's own tracking does), and on
each skeleton the holistic model's stages find the hands (21 points each, in the order OpenPose uses) and the
face mesh, of which OpenPose's 70 face points are taken.

A skeleton is a person when a detector of people is sure of it (`present`): a face detector at its head,
OpenCV's people detector around it, CenterNet's box framing it, or the person detector; or when the person
detector is fairly sure and the face model finds a face at its head; or when CenterNet frames it at all and the
face or hand models find a face or a hand where the skeleton has them. The thresholds were chosen on the tune
set of bench/pose_photos' hand-counted pictures and are measured on its held-out and fresh sets
(bench/pose.py). The landmark model's own flag drops regions holding no one.
"""

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from annotators.util import stderr_silenced

# BlazePose's 33 landmarks -> the 18 OpenPose body points (the neck, index 1, is the shoulders' midpoint):
# nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle,
# left hip/knee/ankle, right eye, left eye, right ear, left ear.
BLAZEPOSE_TO_OPENPOSE = [0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
SHOULDERS = (11, 12)
HIPS = (23, 24)
HEAD = (0, 2, 5, 7, 8)  # nose, eyes, ears
# the face mesh's points at OpenPose's face points 0-67 (dlib's 68): jaw, brows, nose, eyes, lips
MESH_TO_OPENPOSE_FACE = [
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,  # jaw, right to left
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # right brow, left brow
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose bridge, nostrils
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # right eye, left eye
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
]
IRISES = (468, 473)  # the refined mesh's iris centres: OpenPose's face points 68, 69 (right, left pupil)

# what found a candidate (its Candidate.seed); the person detector's tiles are seeds 1, 2, ... (k of Thresholds.tiles)
WHOLE_PICTURE, FACE, PEDESTRIAN, OBJECTS = 0, -1, -2, -3

SCENE_GRAPH = """
input_stream: "image"
output_stream: "people"
output_stream: "near_faces"
output_stream: "far_faces"
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:people" }
node { calculator: "FaceDetectionShortRangeCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:near_faces" }
node { calculator: "FaceDetectionFullRangeCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:far_faces" }
"""
TILE_GRAPH = """
input_stream: "image"
output_stream: "people"
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image" output_stream: "DETECTIONS:people" }
"""
BODY_GRAPH = """
input_stream: "image"
input_stream: "detection"
output_stream: "body"
node { calculator: "ImagePropertiesCalculator" input_stream: "IMAGE_CPU:image" output_stream: "SIZE:size" }
node { calculator: "PoseDetectionToRoi" input_stream: "DETECTION:detection" input_stream: "IMAGE_SIZE:size"
       output_stream: "ROI:region" }
node { calculator: "PoseLandmarkByRoiCpu" input_stream: "IMAGE:image" input_stream: "ROI:region"
       output_stream: "AUXILIARY_LANDMARKS:first_guess" input_side_packet: "MODEL_COMPLEXITY:complexity"
       input_side_packet: "ENABLE_SEGMENTATION:segmentation" }
node { calculator: "PoseLandmarksToRoi" input_stream: "LANDMARKS:first_guess" input_stream: "IMAGE_SIZE:size"
       output_stream: "ROI:refined_region" }
node { calculator: "PoseLandmarkByRoiCpu" input_stream: "IMAGE:image" input_stream: "ROI:refined_region"
       output_stream: "LANDMARKS:body" input_side_packet: "MODEL_COMPLEXITY:complexity"
       input_side_packet: "ENABLE_SEGMENTATION:segmentation" }
"""
HANDS_AND_FACE_GRAPH = """
input_stream: "image"
input_stream: "body"
output_stream: "left_hand"
output_stream: "right_hand"
output_stream: "face"
node { calculator: "HandLandmarksLeftAndRightCpu" input_stream: "IMAGE:image" input_stream: "POSE_LANDMARKS:body"
       output_stream: "LEFT_HAND_LANDMARKS:left_hand" output_stream: "RIGHT_HAND_LANDMARKS:right_hand" }
node { calculator: "SplitNormalizedLandmarkListCalculator" input_stream: "body" output_stream: "head"
       options { [mediapipe.SplitVectorCalculatorOptions.ext] { ranges { begin: 0 end: 11 } } } }
node { calculator: "FaceLandmarksFromPoseCpu" input_stream: "IMAGE:image" input_stream: "FACE_LANDMARKS_FROM_POSE:head"
       output_stream: "FACE_LANDMARKS:face" input_side_packet: "REFINE_LANDMARKS:refine" }
"""


@dataclass(frozen=True)
class Thresholds:
    """What makes a skeleton a person: on the tune set of bench/pose_photos, the lowest thresholds that draw no
    skeleton on its pictures without people (python bench/pose.py --tune shows the search)."""
    detection: float = 0.7  # the person detector's score, with a face mesh at the skeleton's head
    sure: float = 0.85  # the person detector's score alone
    face: float = 0.8  # a face detector's score for the face at the skeleton's head
    pedestrian: float = 2.1  # OpenCV's people detector's margin for a box around the skeleton's trunk
    objects: float = 0.5  # the COCO detector's person score for the box framing the skeleton, alone
    # the lowest COCO person score whose box is looked in for a skeleton, and enough with a face or a hand found
    object_seed: float = 0.15
    visibility: float = 0.5  # a point is drawn when the landmark model's visibility is at least this
    tiles: tuple = (1, 2)  # the person detector on tiles of the picture's short side / k, for each k


@dataclass
class Candidate:
    """A skeleton the landmark model found, with what each detector says about it."""
    seed: int  # what found it: WHOLE_PICTURE, FACE, PEDESTRIAN, or k for the person detector on tiles
    body: object  # mediapipe's 33 pose landmarks
    score: float = 0.0  # the person detector's best, for its detections on the skeleton
    face_score: float = 0.0  # a face detector's, for a face at the skeleton's nose
    pedestrian: float = 0.0  # OpenCV's people detector's margin, for a box around the shoulders and hips
    objects: float = 0.0  # the COCO detector's person score, for the box that frames the skeleton best
    left_hand: object = None  # the holistic model's 21 hand landmarks, the person's left hand
    right_hand: object = None
    face: object = None  # the face mesh, when the face model finds a face at the skeleton's head


@dataclass
class Person:
    score: float  # the person detector's (0 when another detector found the person)
    body: list  # 18 OpenPose points (x, y) in [0, 1] of the picture, None where not seen
    left_hand: list | None = None  # 21 (x, y), the person's left hand
    right_hand: list | None = None
    face: list | None = None  # 70 (x, y)


class Graphs:
    """mediapipe's graphs, built once per process; one picture at a time goes through them (a graph keeps
    timestamps and state between calls, so concurrent requests take turns)."""

    def __init__(self):
        try:
            from mediapipe.python.solution_base import SolutionBase
        except ImportError as error:
            raise ImportError("the offline pose detector needs mediapipe: pip install -e '.[pose]'") from error
        with stderr_silenced():
            self.scene = SolutionBase(graph_config=SCENE_GRAPH, outputs=["people", "near_faces", "far_faces"])
            self.tile = SolutionBase(graph_config=TILE_GRAPH, outputs=["people"])
            self.body = SolutionBase(graph_config=BODY_GRAPH, outputs=["body"],
                                     side_inputs={"complexity": 1, "segmentation": False})
            self.hands_and_face = SolutionBase(graph_config=HANDS_AND_FACE_GRAPH, side_inputs={"refine": True},
                                               outputs=["left_hand", "right_hand", "face"])
        self.lock = threading.Lock()


@lru_cache(maxsize=1)
def graphs():
    return Graphs()


def detect_people(image, hands=True, face=True, thresholds=Thresholds()):
    """Everyone the detectors find in an RGB uint8 picture, as Persons (points in [0, 1] of the picture)."""
    g = graphs()
    image = np.ascontiguousarray(image)
    people = []
    with g.lock, stderr_silenced():
        for candidate in candidates(image, g, thresholds.tiles, thresholds.object_seed):
            if may_be_present(candidate, thresholds) and present(with_hands_and_face(candidate, image, g), thresholds):
                people.append(person_of(candidate, thresholds, hands, face))
    return people


def sure(candidate, thresholds):
    """A detector of people sure of the candidate on its own: a face detector at its head, OpenCV's people
    detector around it, the person detector, or the COCO detector."""
    return (candidate.face_score >= thresholds.face or candidate.pedestrian >= thresholds.pedestrian
            or candidate.score >= thresholds.sure or candidate.objects >= thresholds.objects)


def present(candidate, thresholds):
    """Whether a candidate (its hands and face looked for) is a person: a detector sure of it, the person
    detector fairly sure and a face found at the skeleton's head, or a COCO box framing it and a face or a hand
    found where the skeleton has them."""
    hand = candidate.left_hand is not None or candidate.right_hand is not None
    return (sure(candidate, thresholds) or (candidate.score >= thresholds.detection and candidate.face is not None)
            or (candidate.objects >= thresholds.object_seed and (candidate.face is not None or hand)))


def may_be_present(candidate, thresholds):
    """Whether looking for the candidate's hands and face could make it present."""
    return (sure(candidate, thresholds) or candidate.score >= thresholds.detection
            or candidate.objects >= thresholds.object_seed)


def candidates(image, graphs, splits=Thresholds.tiles, object_seed=Thresholds.object_seed):
    """Every skeleton the landmark model finds from the seeds, in turn: CenterNet's people, the person detector
    on the whole picture, the faces, OpenCV's people, the person detector on finer and finer tiles. A seed on a
    skeleton already found (at its scale, or much smaller: a tile holding a piece of a large person) is that
    person again, and so is a skeleton landing on one found before, or with its nose in a face another already
    has; each detector's verdict on a skeleton is kept, whichever seed found it."""
    height, width = image.shape[:2]
    scene = graphs.scene.process({"image": image})
    faces = [*(scene.near_faces or []), *(scene.far_faces or [])]
    upright = pedestrians(image)
    boxes = coco_people(image, object_seed)
    seeds = [(OBJECTS, person_from_box(box, score), 0.0) for box, score in boxes]
    seeds += [(WHOLE_PICTURE, d, float(d.score[0])) for d in by_score(scene.people)]
    seeds += [(FACE, person_from_face(f), 0.0) for f in faces]
    seeds += [(PEDESTRIAN, person_from_box(box, margin), 0.0) for box, margin in upright]
    for k in splits:
        seeds += [(k, d, float(d.score[0])) for d in by_score(on_tiles(image, graphs, k))]
    face_boxes = [(box_of(f), float(f.score[0])) for f in faces]
    found, claimed = [], set()  # the faces a skeleton's nose lies in: one face, one person
    for n, (seed, detection, score) in enumerate(seeds):
        owner = next((c for c in found if seed_on(detection, c.body, (height, width))), None)
        if owner is None:
            body = graphs.body.process({"image": image, "detection": detection}).body
            if body is None:
                continue  # the landmark model's own flag: no person in that region
            owner = next((c for c in found if same_skeleton(body, c.body, (height, width))), None)
        if owner is not None:  # that person again: the person detector's score counts for them
            owner.score = max(owner.score, score)
            continue
        marks = body.landmark
        on_faces = {i for i, (box, _) in enumerate(face_boxes) if inside((marks[0].x, marks[0].y), box)}
        if seed == FACE:
            on_faces.add(n - len(boxes) - len(scene.people or []))  # its own face, wherever the skeleton put the nose
        if on_faces & claimed:
            continue
        claimed |= on_faces
        trunk = [midpoint(marks, SHOULDERS), midpoint(marks, HIPS)]
        margins = [m for box, m in upright if all(inside(p, box) for p in trunk)]
        if seed == PEDESTRIAN:
            margins.append(detection.score[0])
        found.append(Candidate(seed, body, score, face_score=max([face_boxes[i][1] for i in on_faces], default=0.0),
                               pedestrian=max(margins, default=0.0)))
    for candidate, score in boxes_to_skeletons(boxes, found):
        candidate.objects = score
    return found


def boxes_to_skeletons(boxes, found):
    """Each COCO person box to the one skeleton it frames best: its nose and shoulders inside, the most overlap
    with the box around its points (a box holds one person; a hand or a leg read as a small person does not
    take the whole person's box)."""
    taken = set()
    for box, score in boxes:
        inside_box = [(overlap(box, extent(c.body)), n) for n, c in enumerate(found) if n not in taken
                      and all(inside(p, box) for p in [nose(c.body), midpoint(c.body.landmark, SHOULDERS)])]
        if inside_box:
            best = max(inside_box)[1]
            taken.add(best)
            yield found[best], score


def on_tiles(image, graphs, k):
    """The person detector's detections on the picture's tiles of its short side / k, in the picture's terms."""
    height, width = image.shape[:2]
    found = []
    for top, left, side in tiles(height, width, k):
        tile = np.ascontiguousarray(image[top:top + side, left:left + side])
        found += [moved(d, top, left, side, height, width) for d in graphs.tile.process({"image": tile}).people or []]
    return found


def by_score(detections):
    return sorted(detections or [], key=lambda d: -d.score[0])


def with_hands_and_face(candidate, image, graphs):
    """The candidate with its hands and face mesh, found around its skeleton by the holistic model's stages."""
    result = graphs.hands_and_face.process({"image": image, "body": candidate.body})
    candidate.left_hand, candidate.right_hand, candidate.face = result.left_hand, result.right_hand, result.face
    return candidate


def tiles(height, width, k):
    """(top, left, side) squares covering the picture, of side short/k, overlapping by half (a square picture is
    not its own tile)."""
    side = max(int(round(min(height, width) / k)), 1)
    step = max(side // 2, 1)
    for top in positions(height, side, step):
        for left in positions(width, side, step):
            if (side, side) != (height, width):
                yield top, left, side


def positions(length, side, step):
    last = max(length - side, 0)
    return sorted({*range(0, last, step), last})


def moved(detection, top, left, side, height, width):
    """A detection made on a tile, in the whole picture's relative coordinates."""
    from mediapipe.framework.formats import detection_pb2

    out = detection_pb2.Detection()
    out.CopyFrom(detection)
    box = out.location_data.relative_bounding_box
    box.xmin, box.ymin = (left + box.xmin * side) / width, (top + box.ymin * side) / height
    box.width, box.height = box.width * side / width, box.height * side / height
    for point in out.location_data.relative_keypoints:
        point.x, point.y = (left + point.x * side) / width, (top + point.y * side) / height
    return out


def person_detection(score, box, keypoints):
    """A person detection in the person detector's form: a box, then the hips' centre, a point as far above
    them as the top of the head, the shoulders' centre and a point above it (what the landmark model's region
    is made from)."""
    from mediapipe.framework.formats import detection_pb2

    out = detection_pb2.Detection()
    out.score.append(float(score))
    x0, y0, x1, y1 = box
    relative = out.location_data.relative_bounding_box
    relative.xmin, relative.ymin, relative.width, relative.height = x0, y0, x1 - x0, y1 - y0
    for x, y in keypoints:
        point = out.location_data.relative_keypoints.add()
        point.x, point.y = x, y
    return out


def person_from_face(face):
    """A person detection from a face, by a standing person's proportions: hips about three face heights below
    the face, the body's half length four (the landmark model then finds the body, or that there is none)."""
    box = box_of(face)
    x0, y0, x1, y1 = box
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, y1 - y0
    hips = cy + 3.0 * size
    points = [(cx, hips), (cx, hips - 4.0 * size), (cx, cy + size), (cx, cy - size)]
    return person_detection(face.score[0], box, points)


def person_from_box(box, margin):
    """A person detection from an upright person's box: hips at its middle, the top of the head a tenth down."""
    x0, y0, x1, y1 = box
    cx, h = (x0 + x1) / 2, y1 - y0
    points = [(cx, y0 + 0.53 * h), (cx, y0 + 0.1 * h), (cx, y0 + 0.25 * h), (cx, y0)]
    return person_detection(margin, box, points)


def pedestrians(image):
    """OpenCV's people detector (HOG features and a linear SVM, its weights inside OpenCV): boxes of upright
    people relative to the picture, with the SVM's margin; the picture doubled so people from 64 pixels tall
    count."""
    import cv2

    height, width = image.shape[:2]
    boxes, margins = people_detector().detectMultiScale(cv2.resize(image, (2 * width, 2 * height)), winStride=(8, 8),
                                               padding=(8, 8), scale=1.1)
    return [((x / (2 * width), y / (2 * height), (x + w) / (2 * width), (y + h) / (2 * height)), float(margin))
            for (x, y, w, h), margin in zip(boxes, np.ravel(margins))]


def coco_people(image, min_score):
    """The COCO detector's people (annotators.person_detector), when it is installed: [(box, score)]."""
    from annotators.person_detector import person_detector  # not at the top: `python -m` runs that module

    detector = person_detector()
    return detector(image, min_score) if detector else []


@lru_cache(maxsize=1)
def people_detector():
    import cv2

    detector = cv2.HOGDescriptor()
    detector.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    return detector


def box_of(detection):
    box = detection.location_data.relative_bounding_box
    return box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height


def overlap(a, b):
    """Intersection over union of two boxes, each clipped to the picture."""
    a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    common = max(width, 0) * max(height, 0)
    return common / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - common, 1e-9)


def nose(body):
    return body.landmark[0].x, body.landmark[0].y


def inside(point, box):
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def midpoint(marks, pair):
    return (marks[pair[0]].x + marks[pair[1]].x) / 2, (marks[pair[0]].y + marks[pair[1]].y) / 2


def extent(body, margin=0.1):
    """The box around a skeleton's landmarks, widened by `margin` of its size on each side."""
    xs, ys = [m.x for m in body.landmark], [m.y for m in body.landmark]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    return min(xs) - margin * w, min(ys) - margin * h, max(xs) + margin * w, max(ys) + margin * h


def pixels(point, size):
    return np.array([point[0] * size[1], point[1] * size[0]])


def skeleton_frame(body, size):
    """A skeleton's shoulders' centre in pixels and its scale: twice its trunk, about the distance from the
    hips' centre to the top of the head, as the person detector measures a person."""
    shoulders, hips = (pixels(midpoint(body.landmark, pair), size) for pair in (SHOULDERS, HIPS))
    return shoulders, 2.0 * max(float(np.linalg.norm(shoulders - hips)), 1.0)


def seed_on(seed, body, size):
    """A seed (a person detection) that is a skeleton's person again: its shoulders' centre near the skeleton's
    at a like scale, or much smaller and anywhere on the skeleton (a piece of that person)."""
    points = [(k.x, k.y) for k in seed.location_data.relative_keypoints]
    hips, top, shoulders = (pixels(p, size) for p in points[:3])
    seed_scale = float(np.linalg.norm(top - hips))
    centre, scale = skeleton_frame(body, size)
    if 0.5 * scale <= seed_scale <= 2 * scale:
        return float(np.linalg.norm(shoulders - centre)) < 0.25 * scale
    return seed_scale < 0.5 * scale and inside(points[2], extent(body))


def same_skeleton(a, b, size):
    """Two skeletons of one person: their head and shoulders on average within a tenth of a scale."""
    _, scale = skeleton_frame(b, size)
    distances = [np.linalg.norm(pixels((a.landmark[i].x, a.landmark[i].y), size)
                                - pixels((b.landmark[i].x, b.landmark[i].y), size)) for i in (*HEAD, *SHOULDERS)]
    return float(np.mean(distances)) < 0.1 * scale


def person_of(candidate, thresholds, hands, face):
    person = Person(candidate.score, body_points(candidate.body, thresholds.visibility))
    if hands:
        person.left_hand, person.right_hand = hand_points(candidate.left_hand), hand_points(candidate.right_hand)
    if face and candidate.face is not None:
        person.face = face_points(candidate.face)
    return person


def body_points(landmarks, min_visibility):
    marks = landmarks.landmark
    seen = [m.visibility >= min_visibility and 0 <= m.x <= 1 and 0 <= m.y <= 1 for m in marks]
    points = []
    for index in BLAZEPOSE_TO_OPENPOSE:
        if index is None:
            ok, point = seen[SHOULDERS[0]] and seen[SHOULDERS[1]], midpoint(marks, SHOULDERS)
        else:
            ok, point = seen[index], (marks[index].x, marks[index].y)
        points.append(point if ok else None)
    return points


def hand_points(landmarks):
    return None if landmarks is None else [(m.x, m.y) for m in landmarks.landmark]


def face_points(landmarks):
    marks = landmarks.landmark
    points = [(marks[i].x, marks[i].y) for i in MESH_TO_OPENPOSE_FACE]
    if len(marks) > max(IRISES):
        return points + [(marks[i].x, marks[i].y) for i in IRISES]
    eyes = (points[36:42], points[42:48])  # a mesh without irises: the eyes' centres
    return points + [tuple(np.mean(eye, axis=0)) for eye in eyes]


def pose_results(people):
    """Persons -> controlnet-aux PoseResults, for drawing in OpenPose's colours and writing OpenPose JSON."""
    from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult

    def keypoints(points):
        return None if points is None else [Keypoint(x, y, 1.0, i) for i, (x, y) in enumerate(points)]

    results = []
    for person in people:
        body = [None if p is None else Keypoint(p[0], p[1], 1.0, i) for i, p in enumerate(person.body)]
        found = sum(k is not None for k in body)
        results.append(PoseResult(BodyResult(body, person.score, found), keypoints(person.left_hand),
                                  keypoints(person.right_hand), keypoints(person.face)))
    return results
