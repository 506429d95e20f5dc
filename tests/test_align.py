"""FaceAligner on the bundled example with the shipped weights (no shared data needed)."""

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import cprfa.align
from cprfa.align import (
    LANDMARK_ROBUST_SCALE,
    LANDMARK_SHARE,
    MIN_VERTEX_DENSITY,
    OCCLUDED_ITERATIONS,
    FaceAligner,
    is_confirmed,
    polish_fit,
    polish_options,
    render_faces,
)
from cprfa.cpr.regressor import DEFAULT_WEIGHTS as DEFAULT_CPR_WEIGHTS
from cprfa.data.boxes import landmark_box
from cprfa.data.images import load_image
from cprfa.detect.detector import FaceDetector
from cprfa.errors import CprfaError, InvalidInputError, ModelFileError
from cprfa.fitting.baselines import online_optimization_with_landmarks
from cprfa.fitting.optimize import FitOptions
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import default_face_model
from cprfa.model.projection import ParamLayout, image_vertices
from cprfa.model.render import render_pncc

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"
BOX = (178.0, 80.0, 262.0, 180.0)


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


def test_aligns_the_bundled_example_from_a_path_an_array_or_a_pil_image(aligner):
    image = load_image(EXAMPLE)
    results = [aligner.align(source, [BOX])[0] for source in (EXAMPLE, image, Image.fromarray(image))]
    face = results[0]
    assert np.allclose(face.params, results[1].params) and np.allclose(face.params, results[2].params)
    x0, y0, x1, y1 = BOX
    margin = 0.2 * (x1 - x0)
    inside = (face.landmarks_2d >= [x0 - margin, y0 - margin]) & (face.landmarks_2d <= [x1 + margin, y1 + margin])
    assert inside.all()
    assert abs(face.yaw) < 30 and abs(face.roll) < 20  # a near-frontal, upright portrait
    assert face.landmarks_3d.shape == (68, 3) and face.vertices.shape[1] == 3 and face.observed_vertices > 300
    assert face.landmark_visible[27:31].all()  # the bridge of the nose is seen
    size = np.sqrt((x1 - x0) * (y1 - y0))  # the head's own points: near the fit's, not the same
    assert 0 < np.linalg.norm(face.head_landmarks - face.landmarks_2d, axis=1).mean() < 0.05 * size
    assert face.head_confidence.shape == (68,) and np.median(face.head_confidence) > 0.9  # nothing hides the face
    assert np.allclose(face.rotation @ face.rotation.T, np.eye(3), atol=1e-6)
    json.dumps(face.to_dict())


def test_grey_rgba_and_float_arrays_are_read_as_their_files_are(aligner):
    image = load_image(EXAMPLE)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    grey = np.asarray(Image.fromarray(image).convert("L"))
    results = [aligner.align(source, [BOX])[0] for source in (image, rgba, image / 255.0, grey, grey[..., None])]
    assert all(np.allclose(results[0].params, face.params, atol=1e-5) for face in results[1:3])
    assert np.allclose(results[3].params, results[4].params)
    assert np.abs(results[3].landmarks_2d - results[0].landmarks_2d).mean() < 2.0  # the grey photo: nearly so


def test_the_fitted_faces_render_into_the_photo_the_larger_in_front(aligner):
    face = aligner.align(EXAMPLE, [BOX])[0]
    image_size = load_image(EXAMPLE).shape[:2]
    maps = render_faces(image_size, [None, face], aligner.model)
    whole = render_pncc(aligner.model, torch.from_numpy(face.vertices).float()[None], *image_size)
    assert ((maps.face == 1) == whole.mask[0].numpy()).mean() > 0.9999 and not (maps.face == 0).any()
    assert np.abs(maps.pncc - whole.pncc[0].numpy()).max() < 1e-3
    assert np.isfinite(maps.depth[maps.face == 1]).all() and np.isneginf(maps.depth[maps.face < 0]).all()
    smaller = dataclasses.replace(face, vertices=face.vertices * [0.5, 0.5, 0.5] + [150, 40, 0], scale=face.scale / 2)
    both = render_faces(image_size, [face, smaller], aligner.model)
    alone = render_faces(image_size, [smaller], aligner.model)
    overlap = (alone.face == 0) & (maps.face == 1)
    assert overlap.sum() > 100 and (both.face[overlap] == 0).all()  # the larger face is nearer
    assert ((both.face == 1) == ((alone.face == 0) & ~overlap)).all()
    outside = dataclasses.replace(face, vertices=face.vertices - [1000, 0, 0])
    assert (render_faces(image_size, [outside], aligner.model).face < 0).all()


def test_a_box_without_a_face_gives_none_and_bad_input_is_refused(aligner):
    blank = np.full((200, 200, 3), 128, np.uint8)
    assert aligner.align(blank, [(50, 50, 150, 150)]) == [None]
    assert aligner.align(blank, []) == []
    with pytest.raises(InvalidInputError):
        aligner.align(blank, [(50, 50, 40, 150)])
    with pytest.raises(CprfaError, match="too small"):
        aligner.align(np.zeros((10, 10), np.float32), [BOX])
    with pytest.raises(CprfaError, match=r"must lie in \[0, 1\]"):
        aligner.align(np.full((64, 64, 3), 2.0, np.float32), [BOX])
    with pytest.raises(InvalidInputError, match="FaceDetector"):
        FaceAligner(detector="blazeface.pt")


def test_detections_the_hsunet_does_not_confirm_are_left_out_before_the_fit(aligner, monkeypatch):
    sleeve = (13.0, 326.0, 169.0, 479.0)  # the astronaut's orange sleeve and mission patch: no face
    monkeypatch.setattr(cprfa.align, "MIN_DETECTION", 0.0)  # the sleeve has too few vertices even for this
    face, not_a_face = aligner.align(EXAMPLE, [BOX, sleeve])  # given boxes: both aligned, nothing left out
    assert face.vertex_density > 2 * MIN_VERTEX_DENSITY and is_confirmed(face)
    assert not_a_face is not None and not is_confirmed(not_a_face)
    assert face.timings["detect"] == 0  # given boxes: no detector
    detect = aligner.detect

    def the_face_and_the_sleeve(image):  # a detector that takes the sleeve for a face too
        best = detect(image)[0]
        return [best, dataclasses.replace(best, box=sleeve, face_box=sleeve, score=0.95)]

    monkeypatch.setattr(aligner, "detect", the_face_and_the_sleeve)
    fitted = []
    polish = cprfa.align.polish_fit
    monkeypatch.setattr(cprfa.align, "polish_fit", lambda model, points, *rest: fitted.append(len(points))
                        or polish(model, points, *rest))
    faces = aligner.align(EXAMPLE)
    assert len(faces) == 1 and faces[0].score > 0.95 and faces[0].timings["detect"] > 0
    assert fitted == [1]  # the sleeve went through the HS-U-Net, not the fit
    alone = aligner.align(EXAMPLE, [faces[0].box])[0]  # the same face (the HS-U-Net ran batched with the sleeve)
    assert np.abs(faces[0].landmarks_3d - alone.landmarks_3d).max() < 0.5
    fitted.clear()  # boxes with the scores of one's own detector: detections, confirmed before the fit
    faces = aligner.align(EXAMPLE, [faces[0].box, sleeve], scores=[0.97, 0.95])
    assert len(faces) == 1 and faces[0].score == 0.97 and fitted == [1]
    assert [face is not None for face in aligner.align(EXAMPLE, [BOX, sleeve], scores=[None, None])] == [True, True]
    for scores, message in (([0.9], "one score"), ([0.9, "high"], "score 1"), ([float("nan"), 0.9], "score 0")):
        with pytest.raises(InvalidInputError, match=message):
            aligner.align(EXAMPLE, [BOX, sleeve], scores=scores)
    with pytest.raises(InvalidInputError, match="scores need boxes"):
        aligner.align(EXAMPLE, scores=[0.9])


def test_reframe_aligns_a_detected_face_again_in_its_landmarks_box(aligner, monkeypatch):
    first = aligner.align(EXAMPLE)[0]
    monkeypatch.setattr(aligner, "reframe", True)
    (again,) = aligner.align(EXAMPLE)
    assert again.box == pytest.approx(landmark_box(first.landmarks_2d)) and again.score == first.score
    assert again.box != pytest.approx(first.box) and set(again.timings) == set(first.timings)
    assert np.abs(again.landmarks_2d - first.landmarks_2d).mean() < 2.0  # the same face, refitted
    (given,) = aligner.align(EXAMPLE, [BOX])  # given boxes are not reframed
    assert given.box == BOX


@pytest.mark.skipif(not DEFAULT_CPR_WEIGHTS.is_file(), reason="no shipped CPR weights")
def test_the_methods_agree_on_the_bundled_example(aligner):
    assert aligner.method == "cpr+refine" and aligner.estimator.flip
    assert aligner.cpr.config.rounds == 2 and aligner.cpr.config.fusion
    face = FaceAligner(method="cpr").align(EXAMPLE, [BOX])[0]
    online = FaceAligner(method="online").align(EXAMPLE, [BOX])[0]
    size = np.sqrt(np.prod(online.landmarks_2d.max(axis=0) - online.landmarks_2d.min(axis=0)))
    assert np.linalg.norm(face.landmarks_2d - online.landmarks_2d, axis=1).mean() < 0.1 * size
    assert abs(face.yaw - online.yaw) < 15 and abs(face.roll - online.roll) < 10
    refined = FaceAligner(method="cpr+online").align(EXAMPLE, [BOX])[0]
    assert np.linalg.norm(refined.landmarks_2d - online.landmarks_2d, axis=1).mean() < 0.05 * size
    posed = FaceAligner(method="cpr+pose").align(EXAMPLE, [BOX])[0]  # the aligner's shape, the pose moved a little
    assert np.array_equal(posed.identity, face.identity) and posed.expression == face.expression
    assert 0 < np.linalg.norm(posed.landmarks_2d - face.landmarks_2d, axis=1).mean() < 0.05 * size
    polished = aligner.align(EXAMPLE, [BOX])[0]  # cpr+refine: then the shape moves too, a little
    assert not np.array_equal(polished.identity, face.identity)
    assert 0 < np.linalg.norm(polished.landmarks_2d - posed.landmarks_2d, axis=1).mean() < 0.05 * size
    with pytest.raises(InvalidInputError):
        FaceAligner(method="magic")


def test_the_users_own_landmarks_give_the_box_and_replace_the_landmark_head(aligner):
    reference = aligner.align(EXAMPLE, [BOX])[0]
    points = reference.landmarks_2d
    face = aligner.align(EXAMPLE, landmarks=[points])[0]
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    assert np.allclose(face.box, (x0, y0, x1, y1))
    size = np.sqrt((x1 - x0) * (y1 - y0))
    assert np.linalg.norm(face.landmarks_2d - points, axis=1).mean() < 0.03 * size
    moved = points + [0.05 * size, 0.0]  # the fit weighs the given points against the DAFI: it moves part way
    shifted = aligner.align(EXAMPLE, landmarks=[moved])[0]
    assert (shifted.landmarks_2d - face.landmarks_2d)[:, 0].mean() > 0.005 * size
    # the head's own points stay on the face in the shifted crop: they do not follow the given points
    assert np.abs(shifted.head_landmarks - face.head_landmarks)[:, 0].mean() < 0.02 * size
    with pytest.raises(InvalidInputError):
        aligner.align(EXAMPLE, landmarks=[points[:60]])
    with pytest.raises(InvalidInputError):
        aligner.align(EXAMPLE, [BOX], landmarks=[points])


def test_another_landmark_source_plugs_in_and_the_head_fills_its_gaps(aligner):
    reference = aligner.align(EXAMPLE, [BOX])[0]
    size = np.sqrt(np.prod(reference.landmarks_2d.max(axis=0) - reference.landmarks_2d.min(axis=0)))
    moved = reference.landmarks_2d + [0.05 * size, 0.0]
    calls = []

    def detector(image, boxes):
        calls.append(len(boxes))
        return moved[None]

    for method in ("online", "cpr"):
        if method == "cpr" and not DEFAULT_CPR_WEIGHTS.is_file():
            continue
        plain = FaceAligner(method=method).align(EXAMPLE, [BOX])[0]
        following = FaceAligner(method=method, landmark_source=detector)
        shifted = following.align(EXAMPLE, [BOX])[0]
        if following.cpr is None or following.cpr.config.fusion:  # (CPR weights without fusion have no branch)
            assert (shifted.landmarks_2d - plain.landmarks_2d)[:, 0].mean() > 0.01 * size
        nothing = FaceAligner(method=method, landmark_source=lambda image, boxes: np.full((1, 68, 2), np.nan))
        assert np.allclose(nothing.align(EXAMPLE, [BOX])[0].params, plain.params, atol=1e-6)
    assert calls and calls[0] == 1
    wrong = FaceAligner(landmark_source=lambda image, boxes: np.zeros((1, 5, 2)))
    with pytest.raises(InvalidInputError, match="landmark source"):
        wrong.align(EXAMPLE, [BOX])


def test_a_batch_of_images_gives_what_each_image_gives_alone(aligner):
    image = load_image(EXAMPLE)
    flipped = np.ascontiguousarray(image[:, ::-1])
    width = image.shape[1]
    flipped_box = (width - BOX[2], BOX[1], width - BOX[0], BOX[3])
    batch = aligner.align_batch([image, flipped, np.full((64, 64, 3), 128, np.uint8)],
                                [[BOX], [flipped_box], []])
    assert [len(faces) for faces in batch] == [1, 1, 0]
    for faces, alone in zip(batch[:2], (aligner.align(image, [BOX]), aligner.align(flipped, [flipped_box])),
                            strict=True):
        # pixels: the fit runs batched. landmarks_3d are fixed vertices; landmarks_2d's jaw points pick the nearest
        # silhouette vertex, which a near tie can move by one vertex (2 px on the mirrored face on 6 December 2026)
        distance = np.linalg.norm(faces[0].landmarks_3d - alone[0].landmarks_3d, axis=1)
        assert distance.mean() < 0.1 and distance.max() < 0.5
        inner = np.linalg.norm(faces[0].landmarks_2d[17:] - alone[0].landmarks_2d[17:], axis=1)
        assert inner.max() < 0.5
    assert batch[1][0].yaw * batch[0][0].yaw <= 0 or abs(batch[0][0].yaw) < 5  # the mirror turns the other way
    with pytest.raises(InvalidInputError, match="one entry per image"):
        aligner.align_batch([image, image], [[BOX]])


def test_a_face_model_the_shipped_networks_were_not_made_for_is_refused():
    model = default_face_model()
    other = dataclasses.replace(  # one vertex more, on no triangle
        model, mean=np.concatenate([model.mean, model.mean[:1]]),
        identity_basis=np.concatenate([model.identity_basis, model.identity_basis[:, :1]], axis=1),
        expression_basis=np.concatenate([model.expression_basis, model.expression_basis[:, :1]], axis=1))
    for method in ("online", "cpr"):
        with pytest.raises(ModelFileError, match="face model of 9409 vertices"):
            FaceAligner(model=other, method=method)


def test_the_package_exports_the_aligner_without_importing_it_eagerly():
    import subprocess
    import sys

    import cprfa
    from cprfa.align import FaceResult

    assert cprfa.FaceAligner is FaceAligner and cprfa.FaceResult is FaceResult
    with pytest.raises(AttributeError):
        cprfa.NoSuchThing  # noqa: B018
    probe = "import sys, cprfa; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


def test_a_mostly_hidden_face_takes_fewer_refinement_iterations(face_model):
    g = torch.Generator().manual_seed(6)
    layout = ParamLayout.of(face_model)
    truth = layout.initial(2, dtype=torch.float64)
    truth[:, :6] = torch.tensor([[0.1, 0.4, -0.1, 5.0, 128, 128], [-0.2, -0.6, 0.2, 4.0, 120, 130]], dtype=torch.float64)
    truth[:, layout.identity] = torch.randn(2, layout.n_identity, generator=g, dtype=torch.float64) * 0.5
    ids = torch.randint(0, face_model.n_vertices, (2, 300), generator=g)
    points = image_vertices(face_model, truth, ids)[..., :2]
    weights = torch.ones(ids.shape, dtype=torch.float64)
    landmarks = landmarks_2d(face_model, truth)[..., :2]
    initial = truth.clone()
    initial[:, 6:] = 0.0  # the pose right, the shape the mean's: the iterations on every parameter fit it
    options = polish_options(FitOptions(robust="geman-mcclure"), "cpr+refine")
    confidence = torch.tensor([[1.0], [0.3]], dtype=torch.float64).expand(2, 68)  # the second face: occluded
    fitted = polish_fit(face_model, points, ids, weights, landmarks, confidence, initial, options)

    def alone(row, iterations):
        return online_optimization_with_landmarks(
            face_model, points[row:row + 1], ids[row:row + 1], weights[row:row + 1], landmarks[row:row + 1],
            LANDMARK_SHARE, dataclasses.replace(options, iterations=iterations), initial[row:row + 1],
            LANDMARK_ROBUST_SCALE, confidence[row:row + 1])

    assert options.iterations > OCCLUDED_ITERATIONS
    assert torch.allclose(fitted[0], alone(0, options.iterations)[0], atol=1e-6)
    assert torch.allclose(fitted[1], alone(1, OCCLUDED_ITERATIONS)[0], atol=1e-6)
    assert not torch.allclose(fitted[1], alone(1, options.iterations)[0], atol=1e-6)


def test_a_fit_started_from_a_previous_result_skips_the_cpr_aligner(aligner, monkeypatch):
    image = load_image(EXAMPLE)
    first = aligner.align(image, [BOX])[0]
    box = landmark_box(first.landmarks_2d)
    fresh = aligner.align(image, [box])[0]

    def no_cpr(*args, **kwargs):
        raise AssertionError("the CPR aligner ran")

    monkeypatch.setattr("cprfa.align.align_point_sets", no_cpr)
    started = aligner.align(image, [box], starts=[first])[0]
    assert np.abs(started.landmarks_2d - fresh.landmarks_2d).mean() < 0.5  # pixels, on a face 90 px wide
    with pytest.raises(InvalidInputError, match="one start"):
        aligner.align(image, starts=[first])
    with pytest.raises(InvalidInputError, match="method"):
        FaceAligner(method="cpr").align(image, [box], starts=[first])  # no fit on every parameter after it


def test_bad_starts_are_refused_before_anything_runs(aligner):
    image = load_image(EXAMPLE)
    with pytest.raises(InvalidInputError, match="start 0"):
        aligner.align(image, [BOX], starts=[np.zeros(3)])
    with pytest.raises(InvalidInputError, match="one start"):
        aligner.align(image, [BOX, BOX], starts=[None])
    with pytest.raises(InvalidInputError, match="method"):
        FaceAligner(method="cpr+pose").align(image, [BOX], starts=[None])


def _quarter_turned(points: np.ndarray, width: int) -> np.ndarray:
    """Points of an image of ``width`` as they lie in ``np.rot90(image)`` (a quarter turn counter-clockwise)."""
    return np.stack([points[..., 1], width - points[..., 0]], axis=-1)


def test_a_face_turned_in_the_image_plane_is_cropped_upright(aligner):
    image = load_image(EXAMPLE)
    face = aligner.align(image, [BOX])[0]
    width = image.shape[1]
    turned = np.ascontiguousarray(np.rot90(image))  # a quarter turn counter-clockwise: the roll grows by 90°
    x, y = _quarter_turned(np.array([(BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2]), width)
    half_width, half_height = (BOX[2] - BOX[0]) / 2, (BOX[3] - BOX[1]) / 2
    upright_box = (x - half_width, y - half_height, x + half_width, y + half_height)
    again = aligner.align(turned, [upright_box], rolls=[90.0])[0]
    expected = _quarter_turned(face.landmarks_2d, width)
    assert again.crop_roll == 90.0 and abs(again.roll - face.roll - 90.0) < 1.0
    assert np.abs(again.landmarks_2d - expected).max() < 1.0
    assert np.allclose(again.vertices[:, 2], face.vertices[:, 2], atol=1.0)
    assert (again.landmark_visible == face.landmark_visible).sum() >= 66  # a borderline point may differ
    size = np.sqrt((BOX[2] - BOX[0]) * (BOX[3] - BOX[1]))
    plain = aligner.align(turned, [landmark_box(expected)])[0]  # the box alone: the face lying on its side is
    assert plain.crop_roll == 90.0  # recognised poorly, and looked at again by quarter turns
    assert np.linalg.norm(plain.landmarks_2d - expected, axis=1).mean() < 0.05 * size
    with pytest.raises(InvalidInputError, match="roll 0"):
        aligner.align(turned, [upright_box], rolls=[float("nan")])
    with pytest.raises(InvalidInputError, match="rolls need boxes"):
        aligner.align(turned, rolls=[90.0])


def test_a_photo_without_an_upright_face_is_looked_at_again_in_its_quarter_turns(aligner):
    image = load_image(EXAMPLE)
    face = aligner.align(image, [BOX])[0]
    matrix = cv2.getRotationMatrix2D((256.0, 256.0), 165.0, 1.0)
    turned = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_CONSTANT)
    assert aligner.detect(turned) == []  # the detector finds no face upright
    expected = (face.landmarks_2d - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5
    found = aligner.align(turned)
    assert len(found) == 1 and found[0].score is not None
    assert abs((found[0].roll - face.roll - 165.0 + 180.0) % 360.0 - 180.0) < 10.0
    size = np.sqrt((BOX[2] - BOX[0]) * (BOX[3] - BOX[1]))
    assert np.linalg.norm(found[0].landmarks_2d - expected, axis=1).mean() < 0.05 * size
    assert aligner.align(np.full((200, 300, 3), 128, np.uint8)) == []  # no face in any turn: still none
    assert aligner.align_batch([turned], turn_unseen=False) == [[]]  # a video's frames: upright only


def test_a_box_alone_around_an_upside_down_face_is_looked_at_again_by_quarter_turns(aligner):
    image = load_image(EXAMPLE)
    height, width = image.shape[:2]
    face = aligner.align(image, [BOX])[0]
    upside_down = np.ascontiguousarray(np.rot90(image, 2))
    box = (width - BOX[2], height - BOX[3], width - BOX[0], height - BOX[1])
    again = aligner.align(upside_down, [box])[0]
    assert abs(again.crop_roll) == 180.0 and abs(abs(again.roll - face.roll) - 180.0) < 2.0
    expected = np.array([width, height]) - face.landmarks_2d
    assert np.abs(again.landmarks_2d - expected).max() < 1.0
    occluded = image.copy()  # a face the HS-U-Net recognises poorly for an occluder keeps its upright crop
    occluded[110:180, 170:270] = 0
    hidden = aligner.align(occluded, [BOX])[0]
    assert hidden.vertex_density < cprfa.align.UNSURE_DENSITY and hidden.crop_roll == 0.0


def test_the_detector_with_any_roll_finds_an_upside_down_face(aligner):
    image = load_image(EXAMPLE)
    face = aligner.align(image, [BOX])[0]
    upside_down = np.ascontiguousarray(np.rot90(image, 2))
    found = FaceAligner(detector=FaceDetector(any_roll=True)).align(upside_down)
    assert len(found) == 1 and abs(abs(found[0].crop_roll) - 180.0) < 20.0
    expected = np.array([image.shape[1], image.shape[0]]) - face.landmarks_2d
    size = np.sqrt((BOX[2] - BOX[0]) * (BOX[3] - BOX[1]))
    assert np.linalg.norm(found[0].landmarks_2d - expected, axis=1).mean() < 0.05 * size


def test_a_detected_face_tilted_by_50_degrees_is_cropped_upright_by_its_keypoints_roll(aligner):
    image = load_image(EXAMPLE)
    face = aligner.align(image, [BOX])[0]
    matrix = cv2.getRotationMatrix2D((256.0, 256.0), 50.0, 1.0)  # counter-clockwise on screen: roll + 50°
    tilted = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    expected = (face.landmarks_2d - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5  # OpenCV: pixel centres at integers
    found = aligner.align(tilted)
    size = np.sqrt((BOX[2] - BOX[0]) * (BOX[3] - BOX[1]))
    errors = [np.linalg.norm(result.landmarks_2d - expected, axis=1).mean() for result in found]
    best = found[int(np.argmin(errors))]
    assert abs(best.crop_roll - 50.0) < 15.0 and abs(best.roll - face.roll - 50.0) < 5.0
    assert min(errors) < 0.05 * size


def test_a_tilted_detection_is_fitted_from_the_crop_its_roll_check_predicted(aligner, monkeypatch):
    image = load_image(EXAMPLE)
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((256.0, 256.0), 50.0, 1.0), (512, 512),
                            borderMode=cv2.BORDER_REFLECT)
    detections = aligner.detect(tilted)
    assert len(detections) == 1
    roll = aligner.detected_roll(tilted, detections[0])
    assert roll > 15.0
    expected = aligner.align(tilted, [detections[0].face_box], scores=[detections[0].score], rolls=[roll])[0]
    predict, batches = aligner.estimator.predict, []
    monkeypatch.setattr(aligner.estimator, "predict",
                        lambda crops, **kwargs: batches.append(len(crops)) or predict(crops, **kwargs))
    found = aligner.align(tilted)
    assert batches == [2]  # the roll check's upright and turned crops; the fit predicts no crop again
    assert len(found) == 1 and found[0].crop_roll == roll and found[0].crop_box == expected.crop_box
    np.testing.assert_allclose(found[0].landmarks_2d, expected.landmarks_2d, atol=0.05)


def test_a_box_given_alone_around_a_tilted_face_takes_a_second_look(aligner):
    image = load_image(EXAMPLE)
    face = aligner.align(image, [BOX])[0]
    matrix = cv2.getRotationMatrix2D((256.0, 256.0), 40.0, 1.0)
    tilted = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
    expected = (face.landmarks_2d - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5
    again = aligner.align(tilted, [landmark_box(expected)])[0]  # no roll given: the landmark head finds it
    size = np.sqrt((BOX[2] - BOX[0]) * (BOX[3] - BOX[1]))
    assert abs(again.crop_roll - 40.0) < 15.0
    assert np.linalg.norm(again.landmarks_2d - expected, axis=1).mean() < 0.05 * size
