import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cprfa.errors import InvalidInputError
from cprfa.model.projection import (
    ParamLayout,
    euler_to_rotation,
    image_vertices,
    landmarks_3d,
    linear_shape,
    model_shape,
    modes_first,
    pose_from_box,
    project,
    rotation_to_euler,
)


def random_angles(n, seed=0, max_yaw=math.pi / 2 - 1e-3):
    g = torch.Generator().manual_seed(seed)
    limits = torch.tensor([math.pi - 1e-3, max_yaw, math.pi - 1e-3], dtype=torch.float64)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * limits


def test_rotation_matches_rz_ry_rx_reference():
    angles = random_angles(50)
    expected = Rotation.from_euler("ZYX", angles.numpy()[:, ::-1]).as_matrix()  # intrinsic Z·Y·X
    assert np.allclose(euler_to_rotation(angles).numpy(), expected, atol=1e-12)


def test_known_angles():
    yaw90 = euler_to_rotation(torch.tensor([[0.0, math.pi / 2, 0.0]], dtype=torch.float64))[0]
    assert torch.allclose(yaw90 @ torch.tensor([0.0, 0, 1], dtype=torch.float64),
                          torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-12)  # nose to the subject's left
    pitch = euler_to_rotation(torch.tensor([[math.pi / 2, 0.0, 0.0]], dtype=torch.float64))[0]
    assert torch.allclose(pitch @ torch.tensor([0.0, 0, 1], dtype=torch.float64),
                          torch.tensor([0.0, -1, 0], dtype=torch.float64), atol=1e-12)  # positive pitch: nose down
    assert torch.allclose(euler_to_rotation(torch.zeros(1, 3)), torch.eye(3)[None])


def test_rotation_round_trip_and_orthonormal():
    angles = random_angles(200, seed=1)
    rotation = euler_to_rotation(angles)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(200, 3, 3),
                          atol=1e-12)
    assert torch.allclose(rotation_to_euler(rotation), angles, atol=1e-9)


def test_rotation_to_euler_at_gimbal_lock_reproduces_rotation():
    angles = torch.tensor([[0.3, math.pi / 2, 0.2], [-0.4, -math.pi / 2, 0.7]], dtype=torch.float64)
    rotation = euler_to_rotation(angles)
    recovered = rotation_to_euler(rotation)
    assert torch.allclose(recovered[:, 2], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(euler_to_rotation(recovered), rotation, atol=1e-9)


def test_project_known_points():
    points = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]])
    pose = torch.tensor([[0.0, 0, 0, 2, 10, 20]])
    expected = torch.tensor([[[12.0, 20, 0], [10, 18, 0], [10, 20, 2]]])  # v down: y up moves up the image
    assert torch.allclose(project(points, pose), expected)
    yawed = project(points, torch.tensor([[0.0, math.pi / 2, 0, 1, 0, 0]]))
    assert torch.allclose(yawed[0, 2], torch.tensor([1.0, 0, 0]), atol=1e-6)  # nose tip moves to image right


def test_numpy_and_torch_agree(face_model):
    layout = ParamLayout.of(face_model)
    params = np.zeros((3, layout.size))
    params[:, :6] = [[0.1, -0.5, 0.2, 5.0, 100, 120], [0.0, 1.2, 0.0, 3.0, 50, 60], [-0.3, 0.0, -0.1, 7.0, 0, 0]]
    params[:, layout.identity] = np.random.default_rng(0).normal(size=(3, layout.n_identity))
    params[:, layout.expression] = np.random.default_rng(1).uniform(size=(3, layout.n_expression))
    from_numpy = image_vertices(face_model, params)
    from_torch = image_vertices(face_model, torch.from_numpy(params)).numpy()
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (3, face_model.n_vertices, 3)
    assert np.allclose(from_numpy, from_torch)
    # an independent numpy computation of the same projection
    shape = (face_model.mean + np.einsum("knc,bk->bnc", face_model.identity_basis, params[:, layout.identity])
             + np.einsum("knc,bk->bnc", face_model.expression_basis, params[:, layout.expression]))
    rotation = Rotation.from_euler("ZYX", params[:, [2, 1, 0]]).as_matrix()
    rotated = np.einsum("bij,bnj->bni", rotation, shape)
    s, tx, ty = params[:, 3, None], params[:, 4, None], params[:, 5, None]
    expected = np.stack([s * rotated[..., 0] + tx, -s * rotated[..., 1] + ty, s * rotated[..., 2]], -1)
    assert np.allclose(from_numpy, expected, atol=1e-3)
    assert np.allclose(euler_to_rotation(params[:, :3]), rotation)


def test_sparse_vertices_match_dense(face_model):
    layout = ParamLayout.of(face_model)
    params = layout.initial(2)
    params[:, layout.identity] = torch.randn(2, layout.n_identity)
    dense = image_vertices(face_model, params)
    assert torch.allclose(landmarks_3d(face_model, params), dense[:, face_model.landmarks68], atol=1e-5)


def test_gradients_flow_through_projection():
    mean = torch.randn(5, 3, dtype=torch.float64)
    basis = torch.randn(5, 3, 4, dtype=torch.float64)
    coefficients = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    pose = torch.tensor([[0.1, 0.2, 0.3, 1.5, 1, 2], [0.5, -0.2, 0.1, 0.7, 3, 4]],
                        dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, p: project(linear_shape(mean, basis, c), p), (coefficients, pose))
    angles = torch.tensor([[0.3, 0.4, -0.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_to_euler, (euler_to_rotation(angles).detach().requires_grad_(),))


def test_modes_first_basis_gives_the_same_shapes(face_model):
    basis = torch.randn(7, 3, 4, dtype=torch.float64)
    stored = modes_first(basis)
    assert torch.equal(stored, basis) and stored.permute(2, 0, 1).is_contiguous()
    mean, coefficients = torch.randn(7, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    assert torch.allclose(linear_shape(mean, stored, coefficients), linear_shape(mean, basis, coefficients))
    layout = ParamLayout.of(face_model)
    params = layout.initial(2, torch.float64)
    params[:, layout.alpha] = torch.randn(2, layout.n_identity + layout.n_expression, dtype=torch.float64)
    every = model_shape(face_model, params)  # from the cached mode-by-mode basis
    ids = torch.tensor([0, 5, face_model.n_vertices - 1])
    assert torch.allclose(every[:, ids], model_shape(face_model, params, ids), atol=1e-12)


def test_layout(face_model):
    layout = ParamLayout.of(face_model)
    assert layout.size == 6 + 100 + 53
    params = layout.initial(4)
    assert params.shape == (4, 159) and params[0, :6].tolist() == [0, 0, 0, 1, 0, 0] and not params[:, 6:].any()
    assert (layout.identity.start, layout.expression.start, layout.expression.stop) == (6, 106, 159)


def test_pose_from_box(face_model):
    box = torch.tensor([[100.0, 50, 200, 170]])
    pose = pose_from_box(face_model, box, torch.tensor([[0.0, 0.4, 0.0]]))
    layout = ParamLayout.of(face_model)
    params = torch.cat([pose, torch.zeros(1, layout.size - 6)], dim=1)
    points = landmarks_3d(face_model, params)[0, :, :2]
    centre = (points.amin(0) + points.amax(0)) / 2
    assert torch.allclose(centre, torch.tensor([150.0, 110]), atol=1e-3)
    area = (points.amax(0) - points.amin(0)).prod()
    assert torch.isclose(area, torch.tensor(100.0 * 120), rtol=1e-4)


@pytest.mark.parametrize("bad", [torch.full((1, 3), float("nan")), torch.zeros(1, 4), torch.zeros(3)])
def test_bad_angles(bad):
    with pytest.raises(InvalidInputError):
        euler_to_rotation(bad)


def test_bad_params(face_model):
    layout = ParamLayout.of(face_model)
    params = layout.initial(1)
    params[0, 10] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        image_vertices(face_model, params)
    with pytest.raises(InvalidInputError, match="shape"):
        image_vertices(face_model, torch.zeros(1, 7))
    with pytest.raises(InvalidInputError, match="x1 > x0"):
        pose_from_box(face_model, torch.tensor([[10.0, 10, 5, 20]]))
