"""The network's input crop, and moving images, points and parameters into it.

Crop policy (used for training data and, later, at inference from a face box): a square of side
``1.5 × max(w, h)`` of the 68-landmark box, centred on the box centre moved up by 10 % of its height (the face
model reaches over the forehead), resized to ``size × size``. Pixels outside the photo are black.

At inference a crop may be turned (``roll``, degrees, FaceResult.roll's sense): its box is then the square in the
image turned by −roll about the box's centre, so that a face of that roll stands upright in the crop, as the
network saw faces in training (within ±20°). Every function that maps into or out of a crop takes the same
``roll``; 0 is the plain crop.
"""

from __future__ import annotations

import math

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


def box_centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    """The centre (x, y) of a box (x0, y0, x1, y1)."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def turn_points(points, centre: tuple[float, float], degrees: float):
    """Points (numpy or torch) turned about ``centre`` so that a face of roll r there gets roll r + degrees
    (counter-clockwise on screen for positive degrees). Shape: (..., 2) -> (..., 2)."""
    if not degrees:
        return points
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = points[..., 0] - centre[0], points[..., 1] - centre[1]
    turned = (cos * x + sin * y + centre[0], cos * y - sin * x + centre[1])
    return torch.stack(turned, dim=-1) if isinstance(points, torch.Tensor) else np.stack(turned, axis=-1)


def turn_params(params: torch.Tensor, centre: tuple[float, float], degrees: float) -> torch.Tensor:
    """Parameters that project what ``params`` projects, turned as ``turn_points`` turns points: the roll grows
    by ``degrees`` (kept in (−180°, 180°]) and the translation turns about ``centre``. Shape: (..., P) -> same."""
    if not degrees:
        return params
    out = params.clone()
    roll = params[..., 2] + math.radians(degrees)
    out[..., 2] = torch.atan2(torch.sin(roll), torch.cos(roll))
    out[..., 4:N_POSE] = turn_points(params[..., 4:N_POSE], centre, degrees)
    return out


def face_roll(right_eye, left_eye, mouth) -> float:
    """A face's in-plane angle (degrees, FaceResult.roll's sense) from the centres of the subject's right and
    left eye and of the mouth (x, y each): the direction from the eyes down to the mouth and the eye line turned
    a right angle, summed (so that the eye line, short on a profile, counts less there)."""
    right_eye, left_eye, mouth = (np.asarray(point, dtype=np.float64) for point in (right_eye, left_eye, mouth))
    down = mouth - (right_eye + left_eye) / 2
    across = left_eye - right_eye
    return math.degrees(math.atan2(down[0] - across[1], down[1] + across[0]))


def eyes_and_mouth(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centres of the subject's right eye, left eye and mouth (x, y each) of 68 landmarks (68, 2) in the
    300-W order (missing points NaN)."""
    return tuple(np.nanmean(points[part], axis=0) for part in (slice(36, 42), slice(42, 48), slice(48, 68)))


def upright_box(points: np.ndarray, roll: float) -> tuple[float, float, float, float]:
    """The tight box of landmarks (N, 2) turned by −roll about their own box's centre (the box ``crop`` of
    cprfa.dafi.predict takes with that roll), placed at the image position of its centre."""
    x0, y0, x1, y1 = (*np.nanmin(points, axis=0), *np.nanmax(points, axis=0))
    if not roll:
        return float(x0), float(y0), float(x1), float(y1)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    upright = turn_points(np.asarray(points, dtype=np.float64), centre, -roll)
    (u0, v0), (u1, v1) = np.nanmin(upright, axis=0), np.nanmax(upright, axis=0)
    x, y = turn_points(np.array([(u0 + u1) / 2, (v0 + v1) / 2]), centre, roll)
    half_width, half_height = (u1 - u0) / 2, (v1 - v0) / 2
    return float(x - half_width), float(y - half_height), float(x + half_width), float(y + half_height)


def crop_image(image: np.ndarray, box: tuple[float, float, float, float], size: int,
               nearest: bool = False, roll: float = 0.0) -> np.ndarray:
    """Resample the square ``box`` of an image (H, W, ...), turned by ``roll`` (module docstring), to
    (size, size, ...), black outside the image; ``nearest`` for labels (PNCC codes, masks).

    Pixel-corner convention on both sides: image point (x0, y0) maps to crop point (0, 0) when roll is 0."""
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    # crop point = k · (R (p − c) + c − corner), R turning by −roll about the box centre c (turn_points)
    angle = math.radians(roll)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array(box_centre(box))
    linear = k * turn
    offset = k * (centre - turn @ centre - np.array([x0, y0]))
    # OpenCV maps pixel centres: crop pixel centre (j + 0.5) comes from the image point that maps there, whose
    # OpenCV (centre-at-integer) coordinate is that minus 0.5.
    matrix = np.column_stack([linear, offset + linear @ np.full(2, 0.5) - 0.5])
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT)


def points_to_crop(points, box: tuple[float, float, float, float], size: int, roll: float = 0.0):
    """Image points into crop pixels. Shape: (..., 2) -> (..., 2)."""
    points = turn_points(points, box_centre(box), -roll)
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    offset = points.new_tensor([x0, y0]) if isinstance(points, torch.Tensor) else np.array([x0, y0])
    return (points - offset) * k


def points_from_crop(points, box: tuple[float, float, float, float], size: int, roll: float = 0.0):
    """Crop pixels back into image points (the inverse of ``points_to_crop``). Shape: (..., 2) -> (..., 2)."""
    x0, y0, x1, _ = box
    offset = points.new_tensor([x0, y0]) if isinstance(points, torch.Tensor) else np.array([x0, y0])
    return turn_points(points * ((x1 - x0) / size) + offset, box_centre(box), roll)


def params_to_crop(params: torch.Tensor, box: tuple[float, float, float, float], size: int,
                   roll: float = 0.0) -> torch.Tensor:
    """Parameters that project into the crop what ``params`` projects into the image: the roll less the crop's,
    scale and translation following the crop (s' = k·s, t' = k·(t − box corner)); the other angles and the
    coefficients are unchanged. Shape: (P,) or (B, P) -> same."""
    params = turn_params(params, box_centre(box), -roll)
    x0, _, x1, _ = box
    k = size / (x1 - x0)
    out = params.clone()
    out[..., 3] = params[..., 3] * k
    out[..., 4:N_POSE] = points_to_crop(params[..., 4:N_POSE], box, size)
    return out


def params_from_crop(params: torch.Tensor, box: tuple[float, float, float, float], size: int,
                     roll: float = 0.0) -> torch.Tensor:
    """The inverse of ``params_to_crop``: crop-pixel parameters back into the image. Shape: as params_to_crop."""
    x0, y0, x1, _ = box
    k = size / (x1 - x0)
    out = params.clone()
    out[..., 3] = params[..., 3] / k
    out[..., 4:N_POSE] = params[..., 4:N_POSE] / k + params.new_tensor([x0, y0])
    return turn_params(out, box_centre(box), roll)
