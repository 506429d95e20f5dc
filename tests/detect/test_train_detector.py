"""Fine-tuning the face detector: anchor sizes, targets in the shipped network's conventions, the mosaics, the
loss, and `cprfa train detector` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cprfa.cli.main import main
from cprfa.data.images import load_image
from cprfa.detect.blazeface import anchor_centres, anchor_scales, box_iou, decode, to_input
from cprfa.detect.detector import MEDIAPIPE_WEIGHTS, FaceBoxMap, FaceDetector, load_detector_network
from cprfa.train.detector import (
    MAX_FACES,
    Mosaics,
    assign,
    detection_loss,
    load_crops,
    nominal_anchor_boxes,
    targets,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_anchor_scales_follow_mediapipes_ssd_options():
    scales = anchor_scales()
    assert scales.shape == (896,)
    assert torch.allclose(scales[:2], torch.tensor([0.1484375, (0.1484375 * 0.3489583) ** 0.5]), atol=1e-5)
    assert torch.equal(scales[:2], scales[510:512])  # every cell of the 16 × 16 map alike
    expected = [0.3489583, (0.3489583 * 0.5494792) ** 0.5, 0.5494792, (0.5494792 * 0.75) ** 0.5, 0.75, 0.75 ** 0.5]
    assert torch.allclose(scales[512:518], torch.tensor(expected), atol=1e-5)
    assert torch.equal(scales[512:518], scales[-6:])


@pytest.fixture(scope="module")
def crops(small_build):
    images, landmarks = load_crops(small_build, ("helen_test",))
    return images, landmarks


def test_targets_are_in_the_shipped_networks_conventions(crops):
    """On unturned faces the shipped network's best anchor is one the targets make positive, and its box and
    keypoints are near the targets: fine-tuning starts from agreement, not from a new convention."""
    network, record = load_detector_network(MEDIAPIPE_WEIGHTS)
    images, landmarks = crops
    frontal = [k for k in range(len(images)) if np.ptp(landmarks[k][:, 0]) > 0.8 * np.ptp(landmarks[k][:, 1])][:3]
    landmarks = torch.from_numpy(landmarks[frontal])[:, None]
    face = torch.ones(len(frontal), 1, dtype=torch.long)
    boxes, keypoints = targets(landmarks, face, FaceBoxMap.from_dict(record["face_box"]))
    matched, negative = assign(boxes, face, nominal_anchor_boxes())
    with torch.inference_mode():
        regressors, logits = network(to_input(torch.from_numpy(images[frontal])))
    found_boxes, found_keypoints, scores = decode(regressors, logits, anchor_centres())
    best = scores.argmax(dim=1)
    rows = torch.arange(len(frontal))
    assert (matched[rows, best] == 0).all() and not negative[rows, best].any()
    assert (scores[rows, best] > 0.5).all()
    for k in range(len(frontal)):
        assert box_iou(found_boxes[k, best[k]][None], boxes[k]) > 0.7
    assert (found_keypoints[rows, best, :4] - keypoints[:, 0]).abs().max() < 0.06  # of the input side
    assert (negative.sum(dim=1) > 700).all() and ((matched >= 0).sum(dim=1) >= 1).all()


def test_mosaics_are_reproducible_and_their_faces_labelled(crops):
    images, landmarks = crops
    mosaics = Mosaics(images, landmarks, seed=3, samples=40)
    image, points, face = mosaics[5]
    assert image.shape == (128, 128, 3) and image.dtype == torch.uint8
    assert points.shape == (MAX_FACES, 68, 2) and face.shape == (MAX_FACES,)
    again = mosaics[5]
    assert torch.equal(image, again[0]) and torch.equal(points, again[1])
    mosaics.epoch = 1
    assert not torch.equal(image, mosaics[5][0])
    counts = []
    for index in range(40):
        image, points, face = mosaics[index]
        counts.append(int((face != 0).sum()))
        counted = points[face == 1]
        centres = (counted.amin(dim=1) + counted.amax(dim=1)) / 2
        assert ((centres > 0) & (centres < 128)).all()  # a counted face is mostly inside the image
        assert (points[face == 0] == 0).all()
    assert {1, 4, 9} <= set(counts)  # 1 × 1, 2 × 2 and 3 × 3 mosaics


def test_a_few_steps_on_a_batch_lower_the_loss(crops):
    images, landmarks = crops
    network, record = load_detector_network(MEDIAPIPE_WEIGHTS)
    teacher, _ = load_detector_network(MEDIAPIPE_WEIGHTS)
    mosaics = Mosaics(images, landmarks, seed=0, samples=8)
    batch = [torch.stack(values) for values in zip(*(mosaics[k] for k in range(8)), strict=True)]
    boxes, keypoints = targets(batch[1], batch[2], FaceBoxMap.from_dict(record["face_box"]))
    matched, negative = assign(boxes, batch[2], nominal_anchor_boxes())
    x = to_input(batch[0])
    with torch.no_grad():
        teacher_regressors, _ = teacher(x)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-4)
    losses = []
    for _ in range(6):
        loss, parts = detection_loss(*network(x), teacher_regressors, matched, negative, boxes, keypoints,
                                     anchor_centres())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert parts["positives"] > 8
    assert losses[-1] < 0.8 * losses[0]


def test_train_detector_writes_weights_the_detector_loads_and_resumes(small_build, tmp_path, capsys):
    out = tmp_path / "run"
    command = ["train", "detector", "--data", str(small_build), "--splits", "helen_test", "--out", str(out),
               "--samples-per-epoch", "8", "--batch-size", "4", "--lr", "1e-5"]
    assert main(command + ["--epochs", "1"]) == 0
    record = json.loads((out / "blazeface.json").read_text())
    assert record["format"] == "cprfa-blazeface" and record["licence"].startswith("Apache-2.0")
    assert record["fine_tuning"]["training_images"] == len(load_crops(small_build, ("helen_test",))[0])
    assert [entry["epoch"] for entry in record["fine_tuning"]["history"]] == [1]
    detections = FaceDetector(out / "blazeface.pt").detect(load_image(EXAMPLES / "astronaut.jpg"))
    assert len(detections) == 1 and detections[0].score > 0.5
    assert main(command + ["--epochs", "2"]) == 1  # other settings: refused, not mixed
    assert "other settings" in capsys.readouterr().err
    assert main(command + ["--epochs", "1"]) == 0  # the finished run resumes to its end at once
    assert "resuming" in capsys.readouterr().out
    assert main(command[:-4] + ["--lr", "2", "--epochs", "1"]) == 1
    assert "--lr" in capsys.readouterr().err
    assert main(command + ["--epochs", "1", "--photos", str(tmp_path)]) == 1  # not the 300-W folder: said at once
    assert "has no helen_test" in capsys.readouterr().err


def test_a_face_whose_best_anchor_is_a_poor_match_is_a_positive_only():
    anchor_boxes = nominal_anchor_boxes()
    small = torch.tensor([[[0.50, 0.50, 0.52, 0.53]] + [[0.0, 0.0, 0.0, 0.0]] * (MAX_FACES - 1)])
    face = torch.zeros(1, MAX_FACES, dtype=torch.long)
    face[0, 0] = 1
    assert box_iou(anchor_boxes, small[0, :1]).max() < 0.3  # smaller than any anchor: its best is poor
    matched, negative = assign(small, face, anchor_boxes)
    best = box_iou(anchor_boxes, small[0, :1]).argmax()
    assert matched[0, best] == 0 and not negative[0, best]
    assert (matched[0] >= 0).sum() == 1 and negative[0].sum() == len(anchor_boxes) - 1

