"""The face detector: shipped weights and their checks, anchors, decoding, NMS, detection on real images, bad input."""

import dataclasses
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cprfa.data.boxes import read_boxes
from cprfa.data.images import load_image
from cprfa.data.readers import landmark_box, read_pts
from cprfa.detect.blazeface import (
    N_ANCHORS,
    BlazeFace,
    anchor_centres,
    box_iou,
    decode,
    to_input,
    weighted_nms,
)
from cprfa.detect.detector import (
    DEFAULT_WEIGHTS,
    FACE_REACH,
    LEVEL_STEP,
    MEDIAPIPE_WEIGHTS,
    Detection,
    FaceBoxMap,
    FaceDetector,
    _nested,
    load_detector_network,
    tile_grids,
)
from cprfa.errors import InvalidInputError, ModelFileError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# MediaPipe 0.10.14's own FaceDetection(model_selection=0) on the example resized to 128 × 128 (INTER_AREA),
# relative (x0, y0, x1, y1) and score: what the letterbox-only detector must reproduce.
MEDIAPIPE_BOX = (0.3474678695201874, 0.1578308343887329, 0.5314031839370728, 0.3417666256427765)
MEDIAPIPE_SCORE = 0.9233843684196472
MEDIAPIPE_RIGHT_EYE = (0.39802584052085876, 0.19649487733840942)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return load_image(EXAMPLES / "astronaut.jpg")


def iou(a, b) -> float:
    return float(box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0, 0])


# ------------------------------------------------------------------------------------------- weights file


def test_shipped_weights_load_with_their_record():
    network, record = load_detector_network()
    assert isinstance(network, BlazeFace) and not network.training
    assert record["format"] == "cprfa-blazeface" and len(record["sha256"]) == 64
    assert record["licence"].startswith("Apache-2.0")
    assert (DEFAULT_WEIGHTS.parent / "LICENSE-MediaPipe.txt").is_file()
    assert set(record["face_box"]) >= {"offset_x", "offset_y", "width_ratio", "height_ratio", "fitted"}
    _, mediapipe = load_detector_network(MEDIAPIPE_WEIGHTS)
    assert record["fine_tuning"]["start_sha256"] == mediapipe["sha256"] and 0.5 <= record["min_score"] < 1


def copy_weights(tmp_path: Path) -> Path:
    path = tmp_path / "blazeface_short.pt"
    shutil.copy(DEFAULT_WEIGHTS, path)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), path.with_suffix(".json"))
    return path


def test_a_tampered_weights_file_is_refused(tmp_path):
    path = copy_weights(tmp_path)
    assert isinstance(FaceDetector(path).detect(np.zeros((64, 64, 3), np.uint8)), list)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        FaceDetector(path)


def test_a_foreign_file_is_refused_even_with_a_matching_record(tmp_path):
    path = copy_weights(tmp_path)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text())
    for content in ({"format": "cprfa-hsunet", "version": 1, "state_dict": {}}, b"not a torch file"):
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        record_path.write_text(json.dumps(record))
        with pytest.raises(ModelFileError, match="not a cprfa face detector weights file"):
            FaceDetector(path)


def test_missing_files_and_records_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        FaceDetector(tmp_path / "absent.pt")
    path = copy_weights(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match="record"):
        FaceDetector(path)
    path = copy_weights(tmp_path)
    record = json.loads(path.with_suffix(".json").read_text())
    del record["face_box"]
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="face_box"):
        FaceDetector(path)
    assert FaceDetector(path, face_box_map=FaceBoxMap()).face_box_map == FaceBoxMap()


# --------------------------------------------------------------------------------- network, anchors, NMS


def test_anchors_are_mediapipes_896():
    anchors = anchor_centres()
    assert anchors.shape == (N_ANCHORS, 2) == (896, 2)
    assert torch.allclose(anchors[0], torch.tensor([0.5 / 16, 0.5 / 16]))
    assert torch.equal(anchors[0], anchors[1])  # two anchors per cell on the 16 × 16 map
    assert torch.allclose(anchors[2], torch.tensor([1.5 / 16, 0.5 / 16]))
    assert torch.allclose(anchors[512:518], torch.tensor([0.5 / 8, 0.5 / 8]).expand(6, 2))  # six on 8 × 8
    assert torch.allclose(anchors[-1], torch.tensor([7.5 / 8, 7.5 / 8]))


def test_network_shapes_and_input_checks():
    network, _ = load_detector_network()
    images = torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8)
    x = to_input(images)
    assert x.shape == (2, 3, 128, 128) and x.min() >= -1 and x.max() <= 1
    with torch.inference_mode():
        regressors, logits = network(x)
    assert regressors.shape == (2, 896, 16) and logits.shape == (2, 896)
    with pytest.raises(InvalidInputError):
        network(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InvalidInputError):
        to_input(images.float())


def test_decode_puts_zero_offsets_on_the_anchors_and_clips_scores():
    anchors = anchor_centres()
    regressors = torch.zeros(1, 896, 16)
    regressors[0, 0, :4] = torch.tensor([12.8, 0.0, 25.6, 12.8])  # centre +0.1 in x, size 0.2 × 0.1
    logits = torch.zeros(1, 896)
    logits[0, 1] = 1000.0
    boxes, keypoints, scores = decode(regressors, logits, anchors)
    assert boxes.shape == (1, 896, 4) and keypoints.shape == (1, 896, 6, 2) and scores.shape == (1, 896)
    cx, cy = anchors[0].tolist()
    assert torch.allclose(boxes[0, 0], torch.tensor([cx + 0.1 - 0.1, cy - 0.05, cx + 0.1 + 0.1, cy + 0.05]))
    assert torch.allclose(keypoints[0, 5], anchors[5].expand(6, 2))
    assert scores[0, 0] == 0.5 and scores[0, 1] == torch.sigmoid(torch.tensor(100.0))


def test_weighted_nms_blends_overlapping_detections_and_keeps_the_best_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.6, 0.9, 0.7])
    keypoints = boxes[:, None, :2].expand(3, 6, 2).clone()
    merged, kept, points = weighted_nms(boxes, scores, keypoints)
    assert kept.tolist() == pytest.approx([0.9, 0.7])
    assert torch.allclose(merged[0], torch.tensor([0.6, 0, 10.6, 10]))  # (0.9 · 1 + 0.6 · 0) / 1.5
    assert torch.allclose(points[0, :, 0], torch.full((6,), 0.6))
    assert torch.equal(merged[1], boxes[2])
    empty = weighted_nms(boxes[:0], scores[:0], keypoints[:0])
    assert [t.shape[0] for t in empty] == [0, 0, 0]


# ------------------------------------------------------------------------------------------- detection


def test_letterbox_alone_reproduces_mediapipe_on_the_example(astronaut):
    detections = FaceDetector(MEDIAPIPE_WEIGHTS, tiles=False).detect(astronaut)
    assert len(detections) == 1
    found = detections[0]
    assert np.allclose(np.array(found.box) / 512, MEDIAPIPE_BOX, atol=1e-4)
    assert abs(found.score - MEDIAPIPE_SCORE) < 1e-4
    assert np.allclose(found.keypoints[0] / 512, MEDIAPIPE_RIGHT_EYE, atol=1e-4)


def test_finds_the_face_of_the_bundled_example(detector, astronaut):
    detections = detector.detect(astronaut)
    assert detections and all(isinstance(d, Detection) for d in detections)
    expected = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    best = detections[0]
    assert iou(best.face_box, expected) > 0.6 and best.score > 0.9
    assert best.keypoints.shape == (6, 2) and best.keypoints.dtype == np.float32
    x0, y0, x1, y1 = best.box
    assert ((best.keypoints[:4] > [x0, y0]) & (best.keypoints[:4] < [x1, y1])).all()  # eyes, nose, mouth
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        best.score = 1.0


def test_two_faces_and_max_faces(astronaut):
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # 512 × 1024, two faces
    detections = FaceDetector().detect(pair)
    expected = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    mirrored = (1024 - expected[2], expected[1], 1024 - expected[0], expected[3])
    assert max(iou(d.face_box, expected) for d in detections) > 0.6
    assert max(iou(d.face_box, mirrored) for d in detections) > 0.6
    assert len(FaceDetector(max_faces=1).detect(pair)) == 1


def test_small_faces_are_found_with_the_finer_tiles(astronaut):
    canvas = np.full((1800, 1800, 3), 128, np.uint8)  # the face about 5 % of the side: under the tiles' reach
    canvas[300:812, 500:1012] = astronaut
    x0, y0, x1, y1 = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    expected = (x0 + 500, y0 + 300, x1 + 500, y1 + 300)
    assert not any(iou(d.face_box, expected) > 0.5 for d in FaceDetector().detect(canvas))
    found = FaceDetector(small_faces=True).detect(canvas)
    assert found and iou(found[0].face_box, expected) > 0.6


def test_min_face_finds_faces_of_that_many_pixels_in_a_large_photo(astronaut):
    canvas = np.full((1600, 1600, 3), 128, np.uint8)  # the face about 45 px, under 3 % of the side
    canvas[900:1156, 300:556] = astronaut[::2, ::2]
    x0, y0, x1, y1 = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    expected = (x0 / 2 + 300, y0 / 2 + 900, x1 / 2 + 300, y1 / 2 + 900)
    assert not any(iou(d.face_box, expected) > 0.5 for d in FaceDetector(small_faces=True).detect(canvas))
    found = FaceDetector(min_face=40).detect(canvas)
    assert found and iou(found[0].face_box, expected) > 0.6


@pytest.mark.parametrize("longest, grids, min_face", [(2400, (3,), 40), (4000, (3, 5), 20), (512, (3,), 20)])
def test_min_face_adds_finer_tiles_step_by_step_down_to_its_reach(longest, grids, min_face):
    finer = tile_grids(longest, grids, min_face)
    assert finer[:len(grids)] == grids and list(finer) == sorted(finer)
    sides = [2 * longest / (n + 1) for n in finer]
    assert sides[-1] <= min_face / FACE_REACH < sides[-1] * LEVEL_STEP
    assert all(a / b <= LEVEL_STEP for a, b in itertools.pairwise(sides))
    assert tile_grids(longest, grids) == grids == tile_grids(longest, grids, longest)  # no smaller face wanted


def test_no_face_gives_an_empty_list(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


@pytest.mark.parametrize("image", [
    np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8),
    np.zeros((4, 64, 3), np.uint8), [[0, 0, 0]], None,
])
def test_bad_images_are_refused(detector, image):
    with pytest.raises(InvalidInputError, match="image"):
        detector.detect(image)


@pytest.mark.parametrize("options", [{"min_score": 0}, {"min_score": 1}, {"min_score": 1.5}, {"min_score": -0.1},
                                     {"min_score": "0.5"}, {"min_score": True}, {"max_faces": 0},
                                     {"max_faces": 1.5}, {"min_face": 10}, {"min_face": "40"},
                                     {"min_face": float("inf")}, {"min_face": 40, "tiles": False}])
def test_bad_options_are_refused(options):
    with pytest.raises(InvalidInputError):
        FaceDetector(**options)


def test_face_box_map():
    boxes = torch.tensor([[10.0, 20, 110, 120]])
    assert torch.equal(FaceBoxMap()(boxes), boxes)
    mapped = FaceBoxMap(offset_x=0.1, offset_y=-0.2, width_ratio=0.5, height_ratio=2.0)(boxes)
    assert torch.allclose(mapped, torch.tensor([[45.0, -50, 95, 150]]))


def test_finds_a_300w_test_face(detector, shared_data):
    folder = shared_data / "300w" / "helen_test"
    name = min(folder.glob("*.pts"))
    target = landmark_box(read_pts(name))
    detections = detector.detect(load_image(name.with_suffix(".jpg")))
    assert max(iou(d.face_box, target) for d in detections) > 0.5


def test_a_detection_inside_a_bigger_one_is_dropped_as_part_of_it():
    face = [100.0, 100, 300, 300]
    boxes = torch.tensor([face, [130.0, 150, 190, 200], [280.0, 150, 360, 230], [400.0, 100, 480, 180]])
    assert _nested(boxes).tolist() == [False, True, False, False]  # the eye; the box half outside stays
    assert _nested(torch.tensor([face, [110.0, 110, 290, 290]])).tolist() == [False, False]  # of a similar size


def test_the_weights_record_sets_the_default_threshold(tmp_path):
    path = copy_weights(tmp_path)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record["min_score"] = 0.85
    record_path.write_text(json.dumps(record))
    assert FaceDetector(path).min_score == 0.85
    assert FaceDetector(path, min_score=0.6).min_score == 0.6
    record["min_score"] = 1.5
    record_path.write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="min_score"):
        FaceDetector(path)
    assert FaceDetector(MEDIAPIPE_WEIGHTS).min_score == 0.5


def test_finds_faces_turned_up_to_profile(detector, copy_300w, tmp_path):
    """Two helen_test faces turned into each |yaw| bucket (`cprfa data build --large-pose`, 256² crops)."""
    from cprfa.cli.main import main

    copy_300w(tmp_path, 2)
    assert main(["data", "build", "--data", str(tmp_path / "300w"), "--splits", "helen_test", "--large-pose",
                 "--out", str(tmp_path / "built")]) == 0
    with np.load(tmp_path / "built" / "helen_test" / "shard_0000.npz") as content:
        images, landmarks, yaw = content["images"], content["landmarks"], content["yaw"]
    assert (np.abs(yaw) > 60).sum() == 2
    for image, points in zip(images, landmarks, strict=True):
        low, high = points.min(axis=0), points.max(axis=0)
        centres = [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in detector.detect(image)]
        assert any(low[0] <= x <= high[0] and low[1] <= y <= high[1] for x, y in centres)


def test_any_roll_finds_a_face_lying_on_its_side_and_maps_it_back(detector, astronaut):
    upright = detector.detect(astronaut)[0]
    assert abs(upright.roll) < 15
    width, side = astronaut.shape[1], upright.box[2] - upright.box[0]

    def turned(points):  # where points of the photo lie in np.rot90 of it (a quarter turn counter-clockwise)
        return np.stack([points[..., 1], width - points[..., 0]], axis=-1)

    sideways = np.ascontiguousarray(np.rot90(astronaut))
    assert not any(iou(d.box, (*turned(np.array(upright.box[:2])), *turned(np.array(upright.box[2:]))))
                   for d in detector.detect(sideways) if abs(d.roll - upright.roll - 90) < 15)
    seen = []

    def judge(candidates):  # as FaceAligner's HS-U-Net would: the view where the face stands upright
        seen.append([d.roll for d in candidates])
        return int(np.argmin([abs(d.roll - upright.roll - 90) for d in candidates]))

    found = FaceDetector(any_roll=True).detect(sideways, choose=judge)
    assert seen and len(seen[0]) > 1  # the face seen in more than one turn of the photo
    centre = turned(np.array([(upright.face_box[0] + upright.face_box[2]) / 2,
                              (upright.face_box[1] + upright.face_box[3]) / 2]))
    best = min(found, key=lambda d: np.hypot((d.face_box[0] + d.face_box[2]) / 2 - centre[0],
                                             (d.face_box[1] + d.face_box[3]) / 2 - centre[1]))
    assert abs(best.roll - upright.roll - 90) < 15
    assert np.abs(best.keypoints[:4] - turned(upright.keypoints[:4])).max() < 0.1 * side
    assert np.allclose([(best.face_box[0] + best.face_box[2]) / 2, (best.face_box[1] + best.face_box[3]) / 2],
                       centre, atol=0.1 * side)
    assert FaceDetector(any_roll=True).detect(astronaut)[0].face_box == upright.face_box  # upright: as before
    turns_only = detector.detect(sideways, choose=judge, turns=(1, 2, 3))  # the turns asked for, those alone
    matching = [d for d in turns_only if iou(d.face_box, best.face_box) > 0.5]
    assert matching and all(abs(d.roll - upright.roll - 90) < 15 for d in matching)
    with pytest.raises(InvalidInputError, match="quarter turns"):
        detector.detect(astronaut, turns=(4,))
