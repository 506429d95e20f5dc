"""Silhouette jaw landmarks: the "2D" 68-point convention of 300-W (DESIGN.md).

In 300-W the jaw points 0–7 and 9–16 lie on the visible outline of the face, not on fixed vertices: when the
head turns, the far side's outline moves onto the cheek. For each of those 16 landmarks the model gets a
*contour line*: the face vertices on the same side of the face, within ``band`` cm of the landmark vertex's
height, no further from the midline than it and not behind it (so neither ears nor the sides of the head count). The landmark's silhouette vertex is
the line's most outward vertex after pitch and yaw (before roll, which only turns the image plane): the
smallest rotated x on the subject's right, the largest on the left. In a frontal view that is the landmark
vertex itself; the other 52 landmarks stay on their fixed vertices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from cprfa.model.face_model import FaceModel
from cprfa.model.projection import ParamLayout, image_vertices

JAW_LANDMARKS = np.array([*range(8), *range(9, 17)])
CONTOUR_BAND_CM = 0.35


@dataclass(frozen=True, eq=False)
class ContourLines:
    """Candidate vertices of the 16 silhouette jaw landmarks.

    Attributes:
        landmarks: (16,) which of the 68 landmarks each line serves (0–7, 9–16).
        vertex_ids: (16, L) candidate vertex ids, padded by repeating the landmark vertex.
        outward: (16,) -1 on the subject's right (silhouette = smallest rotated x), +1 on the left.
    """

    landmarks: np.ndarray
    vertex_ids: np.ndarray
    outward: np.ndarray


@functools.lru_cache(maxsize=8)
def contour_lines(model: FaceModel, band: float = CONTOUR_BAND_CM) -> ContourLines:
    """The contour line of each jaw landmark (see the module docstring), computed on the mean shape."""
    face = model.face_area
    lines = []
    for landmark in JAW_LANDMARKS:
        anchor = model.landmarks68[landmark]
        x, y, z = model.mean[anchor]
        candidates = face[
            (np.abs(model.mean[face, 1] - y) <= band)
            & (np.sign(model.mean[face, 0]) == np.sign(x))
            & (np.abs(model.mean[face, 0]) <= abs(x))
            & (model.mean[face, 2] >= z)
        ]
        lines.append(np.unique(np.append(candidates, anchor)))
    length = max(len(line) for line in lines)
    padded = np.stack([np.pad(line, (0, length - len(line)), constant_values=model.landmarks68[k])
                       for line, k in zip(lines, JAW_LANDMARKS, strict=True)])
    outward = np.sign(model.mean[model.landmarks68[JAW_LANDMARKS], 0]).astype(np.int64)
    return ContourLines(landmarks=JAW_LANDMARKS, vertex_ids=padded, outward=outward)


def silhouette_landmark_ids(model: FaceModel, params: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
    """Vertex ids of the 68 landmarks in the 2D convention for each face: jaw points on the silhouette.

    ``shape``: the model-space shape of every vertex under ``params``' α, when the caller has it.
    Not differentiable (a discrete choice); fitting re-chooses them at every iteration.
    Shape: params (B, P), shape (B, N, 3) -> (B, 68) int64."""
    tensors = _contour_tensors(model, params.device, params.dtype)
    if shape is None:
        alpha = params[:, ParamLayout.of(model).alpha]  # unchecked (fitting's inner loop; landmarks_2d checks)
        distinct = tensors.mean + (alpha @ tensors.modes).view(len(params), *tensors.mean.shape)
        candidates = distinct[:, tensors.rows]
    else:
        candidates = shape[:, tensors.ids]  # (B, 16, L, 3)
    best = silhouette_choice(candidates, params, tensors.outward)
    chosen = torch.gather(tensors.ids.expand(len(params), -1, -1), 2, best[..., None])[..., 0]
    return tensors.landmarks68.repeat(len(params), 1).index_copy_(1, tensors.jaw, chosen)


@dataclass(frozen=True, eq=False)
class _ContourTensors:
    """ContourLines as tensors on one device, for ``silhouette_landmark_ids``: the mean (U, 3) of the lines' U
    distinct vertices and their basis as rows of modes (K, 3U: one contiguous row per mode, read fast by a
    matrix-vector product), each candidate's row among them (16, L), the candidates' vertex ids
    (16, L), the jaw landmarks (16,), the 68 landmark vertices (68,) and ``outward`` (16,)."""

    mean: torch.Tensor
    modes: torch.Tensor
    rows: torch.Tensor
    ids: torch.Tensor
    jaw: torch.Tensor
    landmarks68: torch.Tensor
    outward: torch.Tensor


@functools.lru_cache(maxsize=8)
def _contour_tensors(model: FaceModel, device: torch.device, dtype: torch.dtype) -> _ContourTensors:
    """The padded lines repeat many vertices, so their shapes are computed once per distinct vertex, and the
    model's rows are gathered once, not at every fitting iteration. (Normal tensors even when first asked for in
    inference mode, so that autograd can use them later.)"""
    lines = contour_lines(model)
    vertices, rows = np.unique(lines.vertex_ids, return_inverse=True)
    with torch.inference_mode(False):
        tensors = model.torch_tensors(device, dtype)
        vertices = torch.as_tensor(vertices, device=device)
        basis = tensors["basis"][vertices]  # (U, 3, K)
        return _ContourTensors(
            tensors["mean"][vertices], basis.reshape(-1, basis.shape[-1]).T.contiguous(),
            torch.as_tensor(rows.reshape(lines.vertex_ids.shape), device=device),
            *(torch.as_tensor(values, device=device) for values in (lines.vertex_ids, lines.landmarks,
                                                                    model.landmarks68, lines.outward)))


def silhouette_choice(candidates: torch.Tensor, params: torch.Tensor, outward: torch.Tensor) -> torch.Tensor:
    """Which candidate of each contour line is on the silhouette: the most outward after pitch and yaw.

    Shape: candidates (B, 16, L, 3) model-space positions of ``ContourLines.vertex_ids``, params (B, P),
    outward (16,) ``ContourLines.outward`` -> (B, 16) indices into L."""
    pitch, yaw = params[:, 0], params[:, 1]
    first_row = torch.stack([torch.cos(yaw), torch.sin(yaw) * torch.sin(pitch), torch.sin(yaw) * torch.cos(pitch)],
                            dim=-1)  # of Ry(yaw) · Rx(pitch): x after pitch and yaw
    rotated_x = (candidates @ first_row[:, None, :, None])[..., 0]  # (B, 16, L)
    return (rotated_x * outward.to(rotated_x.dtype)[None, :, None]).argmax(dim=-1)


def landmarks_2d(model: FaceModel, params: torch.Tensor) -> torch.Tensor:
    """The 68 landmarks in the 2D (300-W) convention in image space with depth.

    Shape: params (B, P) -> (B, 68, 3)."""
    ParamLayout.of(model).check(params)
    return image_vertices(model, params, silhouette_landmark_ids(model, params))
