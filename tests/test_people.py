"""Several people offline (annotators.people): everyone found, no one where there is no person, hands and face
in OpenPose's convention, carried into OpenPose JSON; which detector ran and how many it found is said."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from annotators import AnnotatorNotice, read_image
from annotators.person_detector import person_detector
from annotators.pose import detect_mediapipe, detect_poses, draw
from annotators.pose_json import poses_to_json, read_pose_json

PHOTOS = Path(__file__).resolve().parents[1] / "bench" / "pose_photos"  # labeled photos, see bench/pose.py


def photo(name):
    return read_image(PHOTOS / name)


def three_astronauts():
    crop = data.astronaut()[:, 64:448]
    return np.concatenate([crop] * 3, axis=1)


def test_everyone_in_a_group_is_found_each_with_a_face_at_its_own_head():
    poses, (h, w) = detect_mediapipe(three_astronauts(), detect_resolution=256, include_face=True)
    assert len(poses) == 3
    noses = sorted(p.body.keypoints[0].x for p in poses)
    assert all(abs(nose - (i + 0.45) / 3) < 0.06 for i, nose in enumerate(noses))  # one per copy, at her face
    for pose in poses:
        nose, face = pose.body.keypoints[0], pose.face
        assert len(face) == 70
        xs, ys = [k.x for k in face], [k.y for k in face]
        assert min(xs) < nose.x < max(xs) and min(ys) < nose.y < max(ys)  # the mesh around the skeleton's nose
        assert max(xs) - min(xs) < 0.15  # one face, a third of the picture wide at most
        right_eye, left_eye = face[68], face[69]  # the pupils: her right on the picture's left
        assert right_eye.x < left_eye.x and abs(right_eye.y - left_eye.y) < 0.03


@pytest.mark.parametrize("name", ["cn11_bag.jpg", "cn11_room.jpg", "cn11_dog2.jpg"])
def test_no_person_no_skeleton(name):
    poses, _ = detect_mediapipe(photo(name), detect_resolution=256, include_hand=True, include_face=True)
    assert poses == []


def test_hands_and_face_are_drawn_and_carried_in_openpose_json():
    picture = photo("op_COCO_val2014_000000000536.jpg")  # three women, hands up to their phones
    poses, size = detect_mediapipe(picture, detect_resolution=256, include_hand=True, include_face=True)
    assert len(poses) == 3
    hands = [hand for p in poses for hand in (p.left_hand, p.right_hand) if hand is not None]
    assert len(hands) >= 2 and all(len(hand) == 21 for hand in hands)
    body_only, full = draw(poses, size, hands=False, face=False), draw(poses, size, hands=True, face=True)
    white = lambda picture: (picture.min(axis=2) == 255).sum()  # noqa: E731 - face points are white dots
    assert white(full) > white(body_only) + 3 * 40
    frame = json.loads(poses_to_json(poses, size))
    people = frame["people"]
    assert len(people) == 3 and all(len(person["face_keypoints_2d"]) == 70 * 3 for person in people)
    assert sum(len(person["hand_left_keypoints_2d"]) + len(person["hand_right_keypoints_2d"]) for person in people) \
        == 21 * 3 * len(hands)
    again, size_again, _ = read_pose_json(json.dumps(frame))
    assert size_again == size and np.array_equal(draw(again, size_again), full)


def test_the_notice_says_which_detector_ran_and_how_many_it_found():
    with pytest.warns(AnnotatorNotice, match=re.escape("3 people found by mediapipe's bundled detectors")):
        detect_poses(three_astronauts(), "mediapipe", detect_resolution=256)


@pytest.mark.parametrize("name, people_there", [("mmcoco_000000197388.jpg", 5),  # skiers racing, heads down
                                                ("mmdeepfasion2_000265.jpg", 1)])  # a mirror selfie, face hidden
def test_the_coco_person_detector_finds_people_mediapipe_alone_misses(name, people_there, monkeypatch):
    from annotators import people

    assert person_detector() is not None, "the person detector is not installed: python -m annotators.person_detector"
    poses, _ = detect_mediapipe(photo(name))
    assert people_there - 1 <= len(poses) <= people_there
    monkeypatch.setattr(people, "coco_people", lambda image, min_score: [])
    alone, _ = detect_mediapipe(photo(name))
    assert len(alone) < len(poses)
