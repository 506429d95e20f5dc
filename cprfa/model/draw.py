"""Draw landmarks, wireframes and pose axes on RGB images, and blend renders over photos (OpenCV at the edge).

Every function takes an RGB uint8 (H, W, 3) image (numpy or torch) and returns a new one; the input is never
modified. Colours are RGB tuples. Points are in image pixels (DESIGN.md): u right, v down, origin at the
top-left pixel's corner, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5). OpenCV puts pixel
centres at integers; points are shifted by half a pixel and passed in fixed point (``shift``) to keep their
sub-pixel position.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cprfa.errors import InvalidInputError

SHIFT = 4  # fixed-point bits for OpenCV: 1/16 pixel
_ONE = 1 << SHIFT
_FAR = 1e5  # coordinates are clipped to ±_FAR pixels so that fixed point cannot overflow int32

Color = tuple[int, int, int]


def draw_landmarks(
    image, points, visible=None, color: Color = (0, 255, 0), radius: float = 2.0
) -> np.ndarray:
    """Draw points as filled discs, or as hollow circles where ``visible`` is False.

    Shape: image (H, W, 3) uint8, points (N, 2) as [u, v] (e.g. the 68 landmarks; extra columns such as depth
    are ignored), visible (N,) bool or None (all visible) -> (H, W, 3) uint8."""
    canvas = _canvas(image)
    points = _array("points", points, np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise InvalidInputError(f"points must have shape (N, 2), got {points.shape}")
    _check_finite("points", points)
    visible = np.ones(len(points), bool) if visible is None else _array("visible", visible, bool)
    if visible.shape != (len(points),):
        raise InvalidInputError(f"visible must have shape ({len(points)},), got {visible.shape}")
    if not radius > 0:
        raise InvalidInputError(f"radius must be positive, got {radius}")
    centres = _fixed(points[:, :2])
    fixed_radius, color = max(1, round(radius * _ONE)), _color(color)
    for (x, y), seen in zip(centres.tolist(), visible.tolist(), strict=True):
        cv2.circle(canvas, (x, y), fixed_radius, color, -1 if seen else 1, cv2.LINE_AA, SHIFT)
    return canvas


def front_facing(vertices, triangles) -> np.ndarray:
    """Which triangles face the camera: counter-clockwise in the model's (x, y-up) frame, which stays
    counter-clockwise on screen, i.e. ``(u1 - u0)(v2 - v0) - (v1 - v0)(u2 - u0) < 0``. Degenerate ones are not.

    Shape: vertices (N, 2 or 3) image-space [u, v, (depth)], triangles (T, 3) -> (T,) bool."""
    vertices = _array("vertices", vertices, np.float64)
    triangles = _triangles(triangles, len(vertices))
    u, v = vertices[triangles, 0], vertices[triangles, 1]  # (T, 3) each
    area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0])
    return area < 0


def draw_wireframe(
    image, vertices, triangles, front_facing_only: bool = True, color: Color = (255, 255, 255),
    alpha: float = 0.6, thickness: int = 1,
) -> np.ndarray:
    """Draw the edges of a projected mesh, blended with opacity ``alpha``.

    Only front-facing triangles (see ``front_facing``) are drawn unless ``front_facing_only`` is False. Depth
    is not tested: front-facing triangles hidden behind others (the far side of the nose) are drawn too.
    Shape: image (H, W, 3) uint8, vertices (N, 3) image-space [u, v, depth] (or (N, 2)), triangles (T, 3)
    -> (H, W, 3) uint8."""
    canvas = _canvas(image)
    vertices = _array("vertices", vertices, np.float64)
    if vertices.ndim != 2 or vertices.shape[1] not in (2, 3):
        raise InvalidInputError(f"vertices must have shape (N, 3), got {vertices.shape}")
    _check_finite("vertices", vertices)
    _check_alpha(alpha)
    triangles = _triangles(triangles, len(vertices))
    if front_facing_only:
        triangles = triangles[front_facing(vertices, triangles)]
    if len(triangles) == 0:
        return canvas
    polygons = _fixed(vertices[:, :2])[triangles]  # (T, 3, 2): one closed polyline per triangle
    lines = cv2.polylines(canvas.copy(), polygons, True, _color(color), thickness, cv2.LINE_AA, SHIFT)
    return cv2.addWeighted(lines, alpha, canvas, 1 - alpha, 0)


def draw_pose_axes(image, rotation, center, length: float = 50.0, thickness: int = 2) -> np.ndarray:
    """Draw the model's x (red), y (green) and z (blue) axes as arrows of ``length`` pixels from ``center``.

    Model axis a appears in the image along ((R a)_x, -(R a)_y) (weak perspective, v down), shortened by its
    tilt out of the image plane; the axis pointing furthest towards the camera is drawn last (on top).
    Shape: image (H, W, 3) uint8, rotation (3, 3), center (2,) as [u, v] -> (H, W, 3) uint8."""
    canvas = _canvas(image)
    rotation = _array("rotation", rotation, np.float64)
    center = _array("center", center, np.float64)
    if rotation.shape != (3, 3) or center.shape != (2,):
        raise InvalidInputError(
            f"rotation must have shape (3, 3) and center (2,), got {rotation.shape} and {center.shape}"
        )
    _check_finite("rotation", rotation)
    _check_finite("center", center)
    colors = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    start = tuple(_fixed(center[None])[0].tolist())
    for axis in np.argsort(rotation[2]):  # column a of R is R·e_a; its z is the depth (larger = nearer)
        direction = np.array([rotation[0, axis], -rotation[1, axis]])
        end = tuple(_fixed(center[None] + length * direction[None])[0].tolist())
        if end != start:
            cv2.arrowedLine(canvas, start, end, colors[axis], thickness, cv2.LINE_AA, SHIFT, 0.15)
    return canvas


def blend(image, overlay_rgb, mask=None, alpha: float = 0.5) -> np.ndarray:
    """Blend ``overlay_rgb`` over ``image`` with opacity ``alpha`` where ``mask`` is set (everywhere if None).

    For a PNCC render: ``blend(photo, render.pncc[0], render.mask[0])``.
    Shape: image (H, W, 3) uint8, overlay_rgb (H, W, 3) uint8 or float in [0, 1] (clipped), mask (H, W) bool
    -> (H, W, 3) uint8."""
    canvas = _canvas(image)
    _check_alpha(alpha)
    overlay = _array("overlay_rgb", overlay_rgb, None)
    if overlay.shape != canvas.shape:
        raise InvalidInputError(
            f"overlay_rgb must have the image's shape {canvas.shape}, got {overlay.shape}"
        )
    if overlay.dtype == np.uint8:
        overlay = overlay.astype(np.float64)
    elif np.issubdtype(overlay.dtype, np.floating):
        _check_finite("overlay_rgb", overlay)
        overlay = np.clip(overlay.astype(np.float64), 0, 1) * 255
    else:
        raise InvalidInputError(f"overlay_rgb must be uint8 or float in [0, 1], got {overlay.dtype}")
    mask = np.ones(canvas.shape[:2], bool) if mask is None else _array("mask", mask, bool)
    if mask.shape != canvas.shape[:2]:
        raise InvalidInputError(f"mask must have shape {canvas.shape[:2]}, got {mask.shape}")
    mixed = np.rint((1 - alpha) * canvas[mask] + alpha * overlay[mask])
    canvas[mask] = np.clip(mixed, 0, 255).astype(np.uint8)
    return canvas


def depth_to_gray(depth, regions=None) -> np.ndarray:
    """Depth as an 8-bit image: in each region (each face) its nearest pixel white and its farthest dark grey;
    the background (-inf) black.

    Shape: depth (H, W) float (larger = nearer), regions (H, W) int labels, negative on the background, or
    None (one region: every finite pixel) -> (H, W) uint8."""
    depth = _array("depth", depth, np.float64)
    regions = np.where(np.isfinite(depth), 0, -1) if regions is None else _array("regions", regions, np.int64)
    if depth.ndim != 2 or regions.shape != depth.shape:
        raise InvalidInputError(f"depth must be (H, W) and regions the same shape, got {depth.shape}, {regions.shape}")
    gray = np.zeros(depth.shape, np.uint8)
    inside = regions >= 0
    labels, index = np.unique(regions[inside], return_inverse=True)
    values = depth[inside]
    low, high = np.full(len(labels), np.inf), np.full(len(labels), -np.inf)
    np.minimum.at(low, index, values)
    np.maximum.at(high, index, values)
    span = np.maximum(high - low, 1e-6)
    gray[inside] = (40 + 215 * (values - low[index]) / span[index]).astype(np.uint8)
    return gray


def _array(name: str, value, dtype) -> np.ndarray:
    """numpy view of a numpy array, torch tensor or sequence (converted to ``dtype`` unless it is None)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{name} is not a numeric array: {error}") from None


def _canvas(image) -> np.ndarray:
    """A contiguous copy of an RGB uint8 (H, W, 3) image to draw on."""
    image = _array("image", image, None)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"image must be RGB uint8 of shape (H, W, 3) (see cprfa.data.load_image), "
            f"got {image.dtype} of shape {image.shape}"
        )
    return np.array(image, order="C", copy=True)


def _triangles(triangles, n_vertices: int) -> np.ndarray:
    triangles = _array("triangles", triangles, None)
    if triangles.ndim != 2 or triangles.shape[1] != 3 or not np.issubdtype(triangles.dtype, np.integer):
        raise InvalidInputError(
            f"triangles must be integer of shape (T, 3), got {triangles.dtype} {triangles.shape}"
        )
    if triangles.size and (triangles.min() < 0 or triangles.max() >= n_vertices):
        raise InvalidInputError(f"triangles hold vertex ids outside [0, {n_vertices})")
    return triangles.astype(np.int64)


def _fixed(points: np.ndarray) -> np.ndarray:
    """(N, 2) [u, v] pixel coordinates -> int32 OpenCV fixed-point coordinates (centre of pixel 0 at 0)."""
    return np.rint((np.clip(points, -_FAR, _FAR) - 0.5) * _ONE).astype(np.int32)


def _color(color) -> tuple[int, int, int]:
    if len(color) != 3:
        raise InvalidInputError(f"color must be an (r, g, b) triple, got {color}")
    return tuple(int(c) for c in color)


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise InvalidInputError(f"alpha must lie in [0, 1], got {alpha}")
