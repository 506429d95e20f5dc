"""Rotation, weak-perspective projection and the parameter vector, as batched differentiable torch functions.

Conventions (DESIGN.md):

- ``R = Rz(roll) · Ry(yaw) · Rx(pitch)`` (paper Eq. 2), angles in radians. With model axes x to the subject's
  left, y up, z towards the camera: positive pitch turns the nose down, positive yaw turns the nose towards
  the image's right (the subject's left), positive roll turns the face counter-clockwise on screen.
- Weak perspective into pixels (u right, v down, origin at the top-left pixel's corner):
  ``u = s·(RX)_x + tx``, ``v = -s·(RX)_y + ty``, depth ``s·(RX)_z`` (larger = nearer the camera).
- The parameter vector is ``[pitch, yaw, roll, scale, tx, ty, α_id..., α_exp...]`` (ParamLayout).

Every public function also takes numpy arrays and then returns numpy arrays (computed by the same torch code).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from cprfa._checks import check_finite, check_shape
from cprfa.errors import InvalidInputError
from cprfa.model.face_model import FaceModel

POSE_NAMES = ("pitch", "yaw", "roll", "scale", "tx", "ty")
N_POSE = len(POSE_NAMES)


def accepts_numpy(function):
    """Let a torch function take numpy arrays: they become tensors, and tensor results become numpy again."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        numpy_in = any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values()))
        if not numpy_in:
            return function(*args, **kwargs)
        args = [torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        result = function(*args, **kwargs)
        if isinstance(result, tuple):
            return tuple(r.detach().numpy() if isinstance(r, torch.Tensor) else r for r in result)
        return result.detach().numpy() if isinstance(result, torch.Tensor) else result

    return wrapper


@accepts_numpy
def euler_to_rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``R = Rz(roll) Ry(yaw) Rx(pitch)`` from Euler angles in radians.

    Shape: angles (B, 3) as [pitch, yaw, roll] -> R (B, 3, 3)."""
    check_shape("angles", angles, (None, 3))
    check_finite("angles", angles)
    return _rotation(angles)


# Rx(pitch), Ry(yaw), Rz(roll) row by row, as indices into [0, 1, cos, sin, −sin] of their angle
_ELEMENTARY = torch.tensor([[1, 0, 0, 0, 2, 4, 0, 3, 2],
                            [2, 0, 3, 0, 1, 0, 4, 0, 2],
                            [2, 4, 0, 3, 2, 0, 0, 0, 1]])


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    rx, ry, rz = elementary_rotations(angles)
    return rz @ ry @ rx


def elementary_rotations(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rx(pitch), Ry(yaw), Rz(roll), unchecked (``euler_to_rotation`` is their product Rz Ry Rx).
    Shape: angles (B, 3) -> (B, 3, 3) three times."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    table = torch.stack([torch.zeros_like(cos), torch.ones_like(cos), cos, sin, -sin], dim=-1)  # (B, 3, 5)
    index = _ELEMENTARY.to(angles.device).expand(angles.shape[0], -1, -1)  # not len(): ONNX export traces shape[0]
    return torch.gather(table, 2, index).reshape(-1, 3, 3, 3).unbind(1)


@accepts_numpy
def rotation_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Euler angles [pitch, yaw, roll] in radians of ``R = Rz Ry Rx``; yaw is in [-π/2, π/2].

    At gimbal lock (|yaw| = 90°) roll is set to 0 and pitch absorbs the in-plane angle.
    Shape: rotation (B, 3, 3) -> angles (B, 3)."""
    check_shape("rotation", rotation, (None, 3, 3))
    check_finite("rotation", rotation)
    r = rotation
    cos_yaw = torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    yaw = torch.atan2(-r[:, 2, 0], cos_yaw)
    locked = cos_yaw < 1e-6
    pitch = torch.where(locked, torch.atan2(-r[:, 1, 2], r[:, 1, 1]), torch.atan2(r[:, 2, 1], r[:, 2, 2]))
    roll = torch.where(locked, torch.zeros_like(yaw), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    return torch.stack([pitch, yaw, roll], dim=-1)


@accepts_numpy
def project(vertices: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Weak-perspective projection of model-space points into image pixels with depth.

    Shape: vertices (B, N, 3) in model units, pose (B, 6) as [pitch, yaw, roll, scale, tx, ty]
    -> (B, N, 3) as [u, v, depth]."""
    check_shape("vertices", vertices, (None, None, 3))
    check_shape("pose", pose, (vertices.shape[0], N_POSE))
    check_finite("pose", pose)
    return weak_perspective(vertices, pose)


def weak_perspective(vertices: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """``project`` without its input checks, for inner loops whose inputs are known good. Same shapes.

    One batched product with the rotation's rows scaled by [s, −s, s] (u = s·x', v = −s·y', depth = s·z'),
    plus [tx, ty, 0]."""
    rotation = _rotation(pose[:, :3])
    signs = torch.tensor([1.0, -1.0, 1.0], dtype=pose.dtype, device=pose.device)
    rows = rotation * (pose[:, 3, None] * signs)[:, :, None]
    offset = torch.nn.functional.pad(pose[:, 4:6], (0, 1))
    return torch.baddbmm(offset[:, None, :], vertices, rows.transpose(1, 2))


@accepts_numpy
def linear_shape(mean: torch.Tensor, basis: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Model-space shapes ``mean + basis · coefficients`` (paper Eq. 1).

    Shape: mean (N, 3), basis (N, 3, K), coefficients (B, K) -> (B, N, 3)."""
    check_shape("mean", mean, (None, 3))
    check_shape("basis", basis, (mean.shape[0], 3, None))
    check_shape("coefficients", coefficients, (None, basis.shape[2]))
    check_finite("coefficients", coefficients)
    n, k = mean.shape[0], basis.shape[2]
    offsets = coefficients @ basis.reshape(n * 3, k).T
    return mean + offsets.reshape(-1, n, 3)


def modes_first(basis: torch.Tensor) -> torch.Tensor:
    """The same basis, stored mode by mode: ``linear_shape`` then reads each mode as one contiguous row, several
    times faster for a few faces than the vertex-major layout (whose rows of K are too short for a fast
    matrix-vector product). Gathering vertices from it is slower: keep the vertex-major one for that.
    Shape: (N, 3, K) -> (N, 3, K)."""
    return basis.permute(2, 0, 1).contiguous().permute(1, 2, 0)


@dataclass(frozen=True)
class ParamLayout:
    """Names the slices of the parameter vector ``[pose (6), α_id (K_id), α_exp (K_exp)]``."""

    n_identity: int
    n_expression: int

    @classmethod
    def of(cls, model: FaceModel) -> ParamLayout:
        return cls(model.n_identity, model.n_expression)

    @property
    def size(self) -> int:
        return N_POSE + self.n_identity + self.n_expression

    @property
    def pose(self) -> slice:
        return slice(0, N_POSE)

    @property
    def angles(self) -> slice:
        return slice(0, 3)

    @property
    def alpha(self) -> slice:
        return slice(N_POSE, self.size)

    @property
    def identity(self) -> slice:
        return slice(N_POSE, N_POSE + self.n_identity)

    @property
    def expression(self) -> slice:
        return slice(N_POSE + self.n_identity, self.size)

    def initial(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """p0 = [0, 0, 0, 1, 0, 0] and α0 = 0 (paper §2.3). Shape: -> (B, size)."""
        params = torch.zeros(batch, self.size, dtype=dtype)
        params[:, 3] = 1.0
        return params

    def check(self, params: torch.Tensor) -> None:
        check_shape("params", params, (None, self.size))
        check_finite("params", params)


def model_shape(model: FaceModel, params: torch.Tensor, vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Model-space vertices for the α part of ``params``: all, ``vertex_ids`` (n,) shared by the batch, or
    ``vertex_ids`` (B, n) chosen per face.

    Shape: params (B, P) -> (B, N, 3), or (B, n, 3)."""
    layout = ParamLayout.of(model)
    layout.check(params)
    tensors = model.torch_tensors(params.device, params.dtype)
    mean, basis, alpha = tensors["mean"], tensors["basis"], params[:, layout.alpha]
    if vertex_ids is None:
        return linear_shape(mean, tensors["basis_modes_first"], alpha)
    ids = torch.as_tensor(vertex_ids, device=params.device, dtype=torch.long)
    if ids.dim() == 1:
        return linear_shape(mean[ids], basis[ids], alpha)
    check_shape("vertex_ids", ids, (params.shape[0], None))
    return mean[ids] + (basis[ids] @ alpha[:, None, :, None])[..., 0]


def image_vertices(model: FaceModel, params: torch.Tensor, vertex_ids=None) -> torch.Tensor:
    """The model posed by ``params`` in image pixels with depth; all vertices or ``vertex_ids`` (n,) or (B, n).

    Accepts numpy params (returns numpy). Shape: params (B, P) -> (B, N or n, 3) as [u, v, depth]."""
    if isinstance(params, np.ndarray):
        return image_vertices(model, torch.from_numpy(params), vertex_ids).numpy()
    return project(model_shape(model, params, vertex_ids), params[:, :N_POSE])


def landmarks_3d(model: FaceModel, params: torch.Tensor) -> torch.Tensor:
    """The 68 fixed landmark vertices in image space with depth (the "3D" convention of DESIGN.md).

    Shape: params (B, P) -> (B, 68, 3)."""
    return image_vertices(model, params, model.landmarks68)


def pose_from_box(model: FaceModel, box: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
    """The pose that puts the mean shape's 68 landmarks, rotated by ``angles``, tightly into ``box``.

    Scale matches the box's area (sqrt of width × height) and the box centres coincide. This is the usual way
    to start from a face box; it is exact for the mean shape.
    Shape: box (B, 4) as [x0, y0, x1, y1] pixels, angles (B, 3) radians or None (frontal) -> pose (B, 6)."""
    check_shape("box", box, (None, 4))
    check_finite("box", box)
    size = box[:, 2:] - box[:, :2]
    if bool((size <= 0).any()):
        raise InvalidInputError("box must satisfy x1 > x0 and y1 > y0")
    if angles is None:
        angles = torch.zeros(len(box), 3, dtype=box.dtype)
    pose = torch.cat([angles, torch.ones_like(angles[:, :1]), torch.zeros_like(angles[:, :2])], dim=1)
    mean = model.torch_tensors(box.device, box.dtype)["mean"][torch.as_tensor(model.landmarks68)]
    points = project(mean.expand(len(box), -1, -1), pose)[..., :2]
    low, high = points.amin(dim=1), points.amax(dim=1)
    model_size = (high - low).clamp(min=1e-9)
    scale = torch.sqrt(size.prod(dim=1) / model_size.prod(dim=1))
    translation = (box[:, :2] + box[:, 2:]) / 2 - scale[:, None] * (low + high) / 2
    return torch.cat([angles, scale[:, None], translation], dim=1)
