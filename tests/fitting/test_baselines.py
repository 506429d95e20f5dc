import dataclasses
import math

import pytest
import torch

from cprfa.errors import InvalidInputError
from cprfa.fitting.baselines import online_optimization, online_optimization_with_landmarks, pnp
from cprfa.fitting.optimize import FitOptions
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import ParamLayout, image_vertices


def dense_case(face_model, n_points=400, outliers=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    layout = ParamLayout.of(face_model)
    truth = layout.initial(2, dtype=torch.float64)
    truth[:, :6] = torch.tensor([[0.1, 0.5, -0.1, 5.0, 128, 128], [-0.2, -0.9, 0.2, 4.0, 120, 130]],
                                dtype=torch.float64)
    truth[:, layout.identity] = torch.randn(2, layout.n_identity, generator=g, dtype=torch.float64) * 0.5
    ids = torch.randint(0, face_model.n_vertices, (2, n_points), generator=g)
    points = image_vertices(face_model, truth, ids)[..., :2].clone()
    points[:, :outliers] += torch.randn(2, outliers, 2, generator=g, dtype=torch.float64) * 40
    return truth, ids, points


def test_pnp_recovers_the_pose_of_the_mean_shape(face_model):
    layout = ParamLayout.of(face_model)
    truth = layout.initial(1, dtype=torch.float64)
    truth[0, :6] = torch.tensor([0.2, -0.7, 0.1, 4.0, 100, 90], dtype=torch.float64)
    ids = torch.as_tensor(face_model.landmarks68)[None]
    points = image_vertices(face_model, truth, ids)[..., :2]
    params = pnp(face_model, points, ids)
    assert torch.allclose(params[:, :6], truth[:, :6], atol=1e-4)
    assert not params[:, 6:].any()


def test_online_optimization_on_dense_correspondences(face_model):
    truth, ids, points = dense_case(face_model)
    params = online_optimization(face_model, points, ids)
    error = (image_vertices(face_model, params) - image_vertices(face_model, truth))[..., :2].norm(dim=-1)
    assert error.mean() < 0.5  # pixels, all 9409 vertices, from 400 correspondences
    assert torch.allclose(params[:, 1], truth[:, 1], atol=math.radians(1))


def test_robust_loss_handles_wrong_correspondences(face_model):
    truth, ids, points = dense_case(face_model, outliers=60, seed=1)
    plain = online_optimization(face_model, points, ids)
    robust = online_optimization(face_model, points, ids, options=FitOptions(robust="huber", robust_scale=0.01))
    dense = image_vertices(face_model, truth)[..., :2]
    error = lambda p: (image_vertices(face_model, p)[..., :2] - dense).norm(dim=-1).mean()
    assert error(robust) < 0.5 * error(plain)


def test_adding_landmarks_rescues_a_fit_from_corrupted_dafi_points(face_model):
    truth, ids, points = dense_case(face_model, n_points=200, outliers=120, seed=3)
    landmarks = landmarks_2d(face_model, truth)[..., :2]
    weights = torch.ones(ids.shape, dtype=torch.float64)
    options = FitOptions(robust="geman-mcclure")
    alone = online_optimization(face_model, points, ids, weights, options)
    fused = online_optimization_with_landmarks(face_model, points, ids, weights, landmarks, 0.5, options)

    def landmark_error(params):
        return (landmarks_2d(face_model, params)[..., :2] - landmarks).norm(dim=-1).mean()

    assert landmark_error(fused) < 0.3 * landmark_error(alone)  # 60 % outliers: the landmarks hold the fit
    with pytest.raises(InvalidInputError):
        online_optimization_with_landmarks(face_model, points, ids, weights, landmarks, 1.0)


def test_the_landmarks_robust_scale_decides_how_far_they_pull(face_model):
    truth, ids, points = dense_case(face_model, n_points=200, seed=4)
    moved = landmarks_2d(face_model, truth)[..., :2].clone()
    moved[:, 48:68, 1] += 6.0  # the mouth's points 6 px lower than the face the vertices show
    weights = torch.ones(ids.shape, dtype=torch.float64)
    options = FitOptions(robust="geman-mcclure", robust_scale=0.02)

    def mouth_error(scale):
        params = online_optimization_with_landmarks(face_model, points, ids, weights, moved, 0.8, options,
                                                    landmark_robust_scale=scale)
        return (landmarks_2d(face_model, params)[:, 48:68, :2] - moved[:, 48:68]).norm(dim=-1).mean()

    narrow, wide = mouth_error(None), mouth_error(1000.0)  # None: the vertices' scale
    assert wide < 0.3 * narrow  # a wide loss lets the landmarks pull the mouth towards them


def test_a_landmark_of_weight_zero_does_not_pull_the_fit(face_model):
    truth, ids, points = dense_case(face_model, n_points=200, seed=5)
    landmarks = landmarks_2d(face_model, truth)[..., :2]
    moved = landmarks.clone()
    moved[:, 48:68, 1] += 8.0  # the mouth's points 8 px off, as the head guesses behind an occluder
    weights = torch.ones(ids.shape, dtype=torch.float64)
    hidden = torch.ones(2, 68, dtype=torch.float64)
    hidden[:, 48:68] = 0.0
    options = FitOptions(robust="geman-mcclure")

    def fit(target, landmark_weights=None):
        return online_optimization_with_landmarks(face_model, points, ids, weights, target, 0.8, options,
                                                  landmark_robust_scale=1000.0, landmark_weights=landmark_weights)

    assert torch.allclose(fit(moved, hidden), fit(landmarks, hidden), atol=1e-9)
    mouth = lambda params: (landmarks_2d(face_model, params)[:, 48:68, :2] - landmarks[:, 48:68]).norm(dim=-1).mean()
    assert mouth(fit(moved, hidden)) < 0.3 * mouth(fit(moved))
    with pytest.raises(InvalidInputError, match="landmark_weights"):
        fit(moved, hidden[:, :10])


def test_a_float32_refinement_lands_where_float64_does(face_model):
    truth, ids, points = dense_case(face_model, seed=5)
    landmarks = landmarks_2d(face_model, truth)[..., :2]
    start = truth.clone()
    start[:, :3] += 0.05  # radians off, as the CPR aligner's result might be
    start[:, 3] *= 1.05
    start[:, 6:] = 0.0
    weights = torch.ones(ids.shape, dtype=torch.float64)
    options = FitOptions(robust="geman-mcclure", pose_iterations=3, iterations=6, damping=0.1)
    single, double = (online_optimization_with_landmarks(face_model, points, ids, weights, landmarks, 0.8,
                                                         dataclasses.replace(options, dtype=dtype), start)
                      for dtype in (torch.float32, torch.float64))
    assert single.dtype == torch.float64
    moved = (image_vertices(face_model, double) - image_vertices(face_model, start))[..., :2].norm(dim=-1).mean()
    apart = (image_vertices(face_model, single) - image_vertices(face_model, double))[..., :2].norm(dim=-1).max()
    assert moved > 1.0 and apart < 1e-3  # pixels: the fit moves the mesh, float32 lands on float64's result
    with pytest.raises(InvalidInputError, match="dtype"):
        FitOptions(dtype=torch.float16)
