import math

import numpy as np
import pytest
import torch

from cprfa.errors import InvalidInputError
from cprfa.fitting.landmarks import fit_landmarks
from cprfa.fitting.optimize import FitOptions, fit_points, projection_jacobian
from cprfa.model.contour import _contour_tensors, contour_lines, landmarks_2d, silhouette_landmark_ids
from cprfa.model.face_model import DEFAULT_MODEL_PATH, FaceModel
from cprfa.model.projection import ParamLayout, image_vertices, landmarks_3d, model_shape


def synthetic_faces(model, yaw_degrees, seed=0):
    g = torch.Generator().manual_seed(seed)
    layout = ParamLayout.of(model)
    batch = len(yaw_degrees)
    params = layout.initial(batch, dtype=torch.float64)
    params[:, 0] = (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5) * 0.4
    params[:, 1] = torch.tensor([math.radians(y) for y in yaw_degrees], dtype=torch.float64)
    params[:, 2] = (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5) * 0.4
    params[:, 3:6] = torch.tensor([6.0, 220.0, 200.0], dtype=torch.float64)
    params[:, layout.identity] = torch.randn(batch, layout.n_identity, generator=g, dtype=torch.float64) * 0.7
    params[:, layout.expression] = torch.rand(batch, layout.n_expression, generator=g, dtype=torch.float64) * 0.2
    return params


def test_contour_lines_and_frontal_silhouette(face_model):
    lines = contour_lines(face_model)
    assert lines.vertex_ids.shape[0] == 16 and list(lines.landmarks) == [*range(8), *range(9, 17)]
    params = synthetic_faces(face_model, [0.0])
    params[:, :3] = 0
    assert torch.allclose(landmarks_2d(face_model, params), landmarks_3d(face_model, params))


def test_far_side_jaw_moves_onto_the_cheek(face_model):
    params = synthetic_faces(face_model, [45.0])
    params[:, [0, 2]] = 0
    shift = (landmarks_2d(face_model, params) - landmarks_3d(face_model, params))[0, :, 0]
    assert torch.allclose(shift[:8], torch.zeros(8, dtype=torch.float64))  # near side: fixed jaw vertices
    # far side (subject's left, image right): the fixed jaw vertices turn behind the cheek, whose outline lies
    # further out in the image
    assert (shift[11:17] > 1).all()


def test_silhouette_ids_from_a_given_shape_are_the_same(face_model):
    params = synthetic_faces(face_model, [-80.0, -30.0, 0.0, 50.0])
    given = silhouette_landmark_ids(face_model, params, model_shape(face_model, params))
    assert torch.equal(given, silhouette_landmark_ids(face_model, params))


def test_landmarks_stay_differentiable_after_a_first_use_in_inference_mode(face_model):
    _contour_tensors.cache_clear()  # the contour rows are cached on first use: make it this one
    params = synthetic_faces(face_model, [30.0])
    with torch.inference_mode():
        silhouette_landmark_ids(face_model, params)
    params.requires_grad_(True)
    landmarks_2d(face_model, params).sum().backward()
    assert params.grad.abs().sum() > 0


def test_the_model_stays_differentiable_after_a_first_use_in_inference_mode(face_model):
    model = FaceModel.load(DEFAULT_MODEL_PATH)  # its torch tensors are made on first use: make it this one
    params = synthetic_faces(face_model, [30.0])
    with torch.inference_mode():
        image_vertices(model, params)
    params.requires_grad_(True)
    image_vertices(model, params).sum().backward()
    assert params.grad.abs().sum() > 0


def test_pose_alone_recovers_the_pose_and_keeps_the_shape(face_model):
    truth = synthetic_faces(face_model, [-50.0, 10.0, 65.0])
    start = truth.clone()
    start[:, :3] += torch.tensor([0.05, -0.08, 0.04], dtype=torch.float64)
    start[:, 3] *= 1.1
    start[:, 4:6] += 3.0
    fit = fit_points(face_model, landmarks_2d(face_model, truth)[..., :2],
                     lambda params: silhouette_landmark_ids(face_model, params), None,
                     FitOptions(iterations=0, pose_iterations=10), start)
    assert torch.equal(fit[:, 6:], truth[:, 6:])
    assert torch.allclose(fit[:, :6], truth[:, :6], atol=1e-6)


def test_projection_jacobian_matches_autograd(face_model):
    params = synthetic_faces(face_model, [30.0, -70.0])
    ids = torch.as_tensor(face_model.landmarks68[:12]).repeat(2, 1)
    points, jacobian = projection_jacobian(face_model, params, ids)
    numeric = torch.autograd.functional.jacobian(lambda p: image_vertices(face_model, p, ids)[..., :2], params)
    assert torch.allclose(points, image_vertices(face_model, params, ids)[..., :2])
    assert torch.allclose(jacobian, torch.stack([numeric[b, :, :, b] for b in range(2)]), atol=1e-9)


def test_fit_recovers_known_faces(face_model):
    truth = synthetic_faces(face_model, [-60.0, -20.0, 0.0, 35.0, 70.0])
    target = landmarks_2d(face_model, truth)[..., :2]
    fit = fit_landmarks(face_model, target)
    face_size = 6.0 * 15  # pixels
    assert (fit.error < 0.01 * face_size).all()
    assert torch.allclose(fit.params[:, :3], truth[:, :3], atol=math.radians(3))
    dense_error = (image_vertices(face_model, fit.params) - image_vertices(face_model, truth))[..., :2].norm(dim=-1)
    assert dense_error.mean() < 0.03 * face_size  # 68 points constrain the dense shape only loosely


def test_fit_with_noisy_landmarks(face_model):
    truth = synthetic_faces(face_model, [10.0, -40.0], seed=1)
    target = landmarks_2d(face_model, truth)[..., :2]
    noisy = target + torch.randn(target.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = fit_landmarks(face_model, noisy)
    assert ((fit.landmarks - target).norm(dim=-1).mean(dim=1) < 1.0).all()  # nearer the truth than the noise
    assert torch.allclose(fit.params[:, 1], truth[:, 1], atol=math.radians(4))


def test_contour_updating_improves_the_jaw_of_a_rotated_face(face_model):
    truth = synthetic_faces(face_model, [50.0, -55.0], seed=2)
    target = landmarks_2d(face_model, truth)[..., :2]
    jaw = [*range(8), *range(9, 17)]
    with_contour = fit_landmarks(face_model, target, contour=True)
    fixed = fit_landmarks(face_model, target, contour=False)
    jaw_error = lambda fit: (fit.landmarks - target)[:, jaw].norm(dim=-1).mean()
    assert jaw_error(with_contour) < 0.5 * jaw_error(fixed)


def test_robust_loss_resists_outliers(face_model):
    truth = synthetic_faces(face_model, [15.0], seed=3)
    target = landmarks_2d(face_model, truth)[..., :2]
    corrupted = target.clone()
    corrupted[0, 36:42] += 40.0  # one eye annotated far off
    inliers = [i for i in range(68) if not 36 <= i < 42]
    plain = fit_landmarks(face_model, corrupted)
    robust = fit_landmarks(face_model, corrupted, options=FitOptions(robust="geman-mcclure"))
    error = lambda fit: (fit.landmarks - target)[0, inliers].norm(dim=-1).mean()
    assert error(robust) < 0.5 * error(plain)


def test_missing_landmarks_are_ignored(face_model):
    truth = synthetic_faces(face_model, [20.0], seed=4)
    target = landmarks_2d(face_model, truth)[..., :2].clone()
    weights = torch.ones(1, 68, dtype=torch.float64)
    weights[0, 48:68] = 0
    target[0, 48:68] = float("nan")  # missing points may hold anything
    fit = fit_landmarks(face_model, target, weights)
    assert torch.isfinite(fit.params).all() and fit.error[0] < 1.0


def test_bad_input(face_model):
    with pytest.raises(InvalidInputError, match="at least 3"):
        fit_landmarks(face_model, torch.zeros(1, 68, 2), torch.zeros(1, 68))
    with pytest.raises(InvalidInputError, match="NaN"):
        fit_landmarks(face_model, torch.full((1, 68, 2), float("nan")))
    with pytest.raises(InvalidInputError, match="shape"):
        fit_landmarks(face_model, torch.zeros(1, 5, 2))
    with pytest.raises(InvalidInputError, match="robust"):
        FitOptions(robust="cauchy")
    with pytest.raises(InvalidInputError, match="damping"):
        FitOptions(damping=0.0)


def test_a_face_fits_the_same_alone_or_in_a_batch(face_model, shared_data):
    from cprfa.data.readers import iter_300w

    faces = list(iter_300w(shared_data / "300w", ("helen_test",)))[:4]
    targets = torch.from_numpy(np.stack([face.landmarks for face in faces]))
    batch = fit_landmarks(face_model, targets).params
    alone = fit_landmarks(face_model, targets[1:2]).params
    assert torch.allclose(batch[1], alone[0], atol=1e-6)
