"""The shipped HS-U-Net weights on the bundled example (no shared data needed)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from cprfa.dafi.predict import DEFAULT_WEIGHTS, DafiEstimator, load_network
from cprfa.dafi.retrieval import VertexRetriever
from cprfa.data.augment import FLIP_68
from cprfa.data.boxes import read_boxes
from cprfa.data.crop import points_to_crop, zoom_box
from cprfa.data.images import load_image
from cprfa.errors import InvalidInputError, ModelFileError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_shipped_weights_find_the_face_of_the_bundled_example(face_model):
    estimator = DafiEstimator()
    face_box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    crop, box = estimator.crop(load_image(EXAMPLES / "astronaut.jpg"), face_box)
    prediction = estimator.predict(crop[None])
    size = estimator.input_size
    (x0, y0), (x1, y1) = points_to_crop(np.array([face_box[:2], face_box[2:]], np.float64), box, size)
    inside = np.zeros((size, size), bool)
    inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    mask = prediction.mask[0]
    # the foreground covers most of the face box (the model's face area reaches beyond it: forehead, ears),
    # and the crop's corners are background
    corner = size // 7
    corners = [mask[:corner, :corner], mask[:corner, -corner:], mask[-corner:, :corner], mask[-corner:, -corner:]]
    assert mask[inside].mean() > 0.8 and max(c.mean() for c in corners) < 0.3
    landmarks = prediction.landmarks[0]
    margin = 0.2 * (x1 - x0)  # the jaw's outline reaches past the tight face box (by 15 % here, the face turned)
    assert ((landmarks >= [x0 - margin, y0 - margin]) & (landmarks <= [x1 + margin, y1 + margin])).all()
    # the codes are the face's: the eyes are above the mouth in the crop, and many vertices are found
    assert landmarks[36:48, 1].mean() < landmarks[48:68, 1].mean()
    observed = VertexRetriever(face_model)(prediction.dafi, prediction.confident)
    assert observed.detection_rate[0] > 0.15


def test_the_crop_is_zoomed_about_the_crop_policys_centre():
    face_box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    image = load_image(EXAMPLES / "astronaut.jpg")
    _, policy = DafiEstimator(zoom=1.0).crop(image, face_box)
    _, zoomed = DafiEstimator(zoom=1.25).crop(image, face_box)
    assert np.allclose(zoomed, zoom_box(policy, 1.25))
    assert np.isclose(policy[2] - policy[0], 1.25 * (zoomed[2] - zoomed[0]))
    with pytest.raises(InvalidInputError):
        DafiEstimator(zoom=3.0)


def test_shipped_weights_are_checked_against_their_record(tmp_path):
    copy = tmp_path / "hsunet.pt"
    shutil.copy(DEFAULT_WEIGHTS, copy)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".record.json"), tmp_path / "hsunet.record.json")
    load_network(copy)  # the recorded sha256 matches
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_network(copy)


def test_flip_averages_a_crop_with_its_mirror_image():
    plain, flipped = DafiEstimator(), DafiEstimator.from_file(flip=True, refine=False)
    face_box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    crop, _ = plain.crop(load_image(EXAMPLES / "astronaut.jpg"), face_box)
    size = plain.input_size
    one, both = plain.predict(crop[None]), flipped.predict(crop[None])
    mirror = plain.predict(crop[None, :, ::-1].copy())
    # the merged landmarks are the mean of the crop's and of the mirror's, re-indexed left to right, each
    # without its calibration offset, less the offset of the flip mode
    offset = plain.network.landmark_offset.numpy()
    mirrored = (mirror.landmarks[0] + offset[0])[FLIP_68]
    mirrored[:, 0] = size - mirrored[:, 0]
    assert np.allclose(both.landmarks[0], (one.landmarks[0] + offset[0] + mirrored) / 2 - offset[1], atol=1e-3)
    # the merged foreground is the mean probability; a code seen by both is between theirs (x code mirrored)
    assert np.allclose(both.foreground[0], (one.foreground[0] + mirror.foreground[0][:, ::-1]) / 2, atol=1e-5)
    codes = mirror.dafi[0][:, ::-1].copy()
    codes[..., 0] = 1 - codes[..., 0]
    low, high = np.minimum(one.dafi[0], codes), np.maximum(one.dafi[0], codes)
    assert ((both.dafi[0] >= low - 1e-5) & (both.dafi[0] <= high + 1e-5)).all()
    # the mirrored crop through flip gives the mirrored result
    again = (flipped.predict(crop[None, :, ::-1].copy()).landmarks[0] + offset[1])[FLIP_68]
    again[:, 0] = size - again[:, 0]
    assert np.allclose(again, both.landmarks[0] + offset[1], atol=1e-3)


def test_sampling_an_image_at_pixel_centres_gives_its_pixels():
    import torch

    from cprfa.dafi.predict import sample_image

    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    points = torch.tensor([[[0.5, 0.5], [3.5, 2.5], [4.0, 2.5], [100.0, 0.5]]])
    assert sample_image(image, points)[0, 0].tolist() == [0.0, 19.0, 19.5, 7.0]  # (u, v); beyond: the border


def test_landmarks_behind_an_occluder_have_a_low_foreground():
    estimator = DafiEstimator(flip=True)
    face_box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    crop, _ = estimator.crop(load_image(EXAMPLES / "astronaut.jpg"), face_box)
    seen = estimator.predict(crop[None])
    assert np.median(seen.landmark_foreground[0]) > 0.9
    mouth = seen.landmarks[0, 48:68]
    (x0, y0), (x1, y1) = mouth.min(axis=0) - 6, mouth.max(axis=0) + 6
    covered = crop.copy()
    covered[int(y0):int(y1), int(x0):int(x1)] = (40, 90, 160)  # a blue card over the mouth
    hidden = estimator.predict(covered[None]).landmark_foreground[0]
    assert hidden[48:68].mean() < 0.5 < hidden[36:48].mean()


def test_the_refiner_leaves_the_heads_points_where_an_occluder_hides_them():
    refining, head = DafiEstimator.from_file(flip=True), DafiEstimator.from_file(flip=True, refine=False)
    face_box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    image = load_image(EXAMPLES / "astronaut.jpg")
    crop, box = head.crop(image, face_box)
    mouth = head.predict(crop[None]).landmarks[0, 48:68] * (box[2] - box[0]) / head.input_size + box[:2]
    (x0, y0), (x1, y1) = mouth.min(axis=0) - 8, mouth.max(axis=0) + 8
    image = image.copy()
    image[int(y0):int(y1), int(x0):int(x1)] = (40, 90, 160)  # a blue card over the mouth
    crop, box = head.crop(image, face_box)
    seen = head.predict(crop[None]).landmarks[0]
    refined = refining.predict(crop[None], detail=refining.detail_crop(image, box)[None]).landmarks[0]
    moved = np.linalg.norm(refined - seen, axis=1)
    # crop pixels: the eyes are refined (0.7 px on average), the hidden mouth's points hardly move (0.08)
    assert moved[48:68].max() < 0.25 and moved[48:68].mean() < 0.25 * moved[36:48].mean()
