"""The network's input crop, and moving images, points and parameters into it.

Crop policy (used for training data and, later, at inference from a face box): a square of side
``1.5 × max(w, h)`` of the 68-landmark box, centred on the box centre moved up by 10 % of its height (the face
model reaches over the forehead), resized to ``size × size``. Pixels outside the photo are black.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cprfa.errors import InvalidInputError
from cprfa.model.projection import N_POSE

CROP_ENLARGE = 1.5
CROP_SHIFT_UP = 0.1
DEFAULT_ZOOM = 1.08  # inference: the policy's square cut this much smaller (cprfa.dafi.predict.DafiEstimator)
ZOOM_RANGE = (0.5, 2.0)


def crop_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The square crop (x0, y0, x1, y1) for a tight 68-landmark box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    side = CROP_ENLARGE * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - CROP_SHIFT_UP * (y1 - y0)
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def check_zoom(zoom: float) -> float:
    """``zoom`` as a float, or InvalidInputError outside ZOOM_RANGE."""
    if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
        raise InvalidInputError(f"zoom must lie in [{ZOOM_RANGE[0]}, {ZOOM_RANGE[1]}], got {zoom}")
    return float(zoom)


def zoom_box(box: tuple[float, float, float, float], zoom: float) -> tuple[float, float, float, float]:
    """A square box ``zoom`` times smaller about the same centre (zoom > 1: the face fills more of the
    crop)."""
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / (2 * zoom)
    return cx - half, cy - half, cx + half, cy + half


def crop_image(image: np.ndarray, box: tuple[float, float, float, float], size: int,
               nearest: bool = False) -> np.ndarray:
    """Resample the square ``box`` of an image (H, W, ...) to (size, size, ...), black outside the image;
    ``nearest`` for labels (PNCC codes, masks).

    Pixel-corner convention on both sides: image point (x0, y0) maps to crop point (0, 0)."""
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    # OpenCV maps pixel centres: centre (j + 0.5) in the crop comes from x0 + (j + 0.5) / k in the image,
    # whose OpenCV (centre-at-integer) coordinate is that minus 0.5.
    matrix = np.array([[k, 0, (0.5 - x0) * k - 0.5], [0, k, (0.5 - y0) * k - 0.5]])
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT)


def points_to_crop(points, box: tuple[float, float, float, float], size: int):
    """Image points into crop pixels. Shape: (..., 2) -> (..., 2)."""
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    offset = points.new_tensor([x0, y0]) if isinstance(points, torch.Tensor) else np.array([x0, y0])
    return (points - offset) * k


def points_from_crop(points, box: tuple[float, float, float, float], size: int):
    """Crop pixels back into image points (the inverse of ``points_to_crop``). Shape: (..., 2) -> (..., 2)."""
    x0, y0, x1, _ = box
    offset = points.new_tensor([x0, y0]) if isinstance(points, torch.Tensor) else np.array([x0, y0])
    return points * ((x1 - x0) / size) + offset


def vertices_to_crop(vertices: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """Image vertices with depth into the crop: u, v as ``points_to_crop``, depth scaled with them (as the
    parameters of ``params_to_crop`` would project it). Shape: (..., 3) -> (..., 3)."""
    depth = vertices[..., 2:] * (size / (box[2] - box[0]))
    return torch.cat([points_to_crop(vertices[..., :2], box, size), depth], dim=-1)


def params_to_crop(params: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """Parameters that project into the crop what ``params`` projects into the image: scale and translation
    follow the crop (s' = k·s, t' = k·(t − box corner)); angles and coefficients are unchanged.
    Shape: (P,) or (B, P) -> same."""
    x0, _, x1, _ = box
    k = size / (x1 - x0)
    out = params.clone()
    out[..., 3] = params[..., 3] * k
    out[..., 4:N_POSE] = points_to_crop(params[..., 4:N_POSE], box, size)
    return out


def params_from_crop(params: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """The inverse of ``params_to_crop``: crop-pixel parameters back into the image. Shape: as params_to_crop."""
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    out = params.clone()
    out[..., 3] = params[..., 3] / k
    out[..., 4:N_POSE] = params[..., 4:N_POSE] / k + params.new_tensor([x0, y0])
    return out
