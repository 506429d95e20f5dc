"""A vectorized z-buffer rasterizer for batches of projected meshes, in plain torch on the CPU.

Pixel (row i, column j) covers [j, j+1) × [i, i+1) in image coordinates, so its centre is (j + 0.5, i + 0.5)
(DESIGN.md: origin at the top-left pixel's corner). A pixel belongs to a triangle when its centre lies inside
it (edges shared by two triangles count for the one with the larger depth, ties for the larger triangle id).
Only front-facing triangles are drawn: counter-clockwise in the model's (x, y-up) frame, which stays
counter-clockwise on screen and gives a negative signed area (u1 - u0)(v2 - v0) - (v1 - v0)(u2 - u0) in pixel
coordinates (v down). A face seen from behind therefore renders empty, as the back of a face mask would be
hidden inside the head. Depth grows towards the camera; the nearest triangle wins.

How it stays fast without a compiled kernel: triangles are grouped by the size of their bounding box (a few
window sizes), every triangle of a group tests the k × k pixels from its box's corner at once, and the winners
are found by two scatter-reduce passes (nearest depth per pixel, then the largest triangle id at that depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprfa._checks import check_finite, check_shape
from cprfa.errors import InvalidInputError

# Barycentric slack so that a pixel centre on an edge shared by two triangles is not lost to rounding.
_EDGE = 1e-5
# Square window sides for groups of triangles: few sizes keep the Python loop short, close ones waste little.
_WINDOWS = torch.tensor(sorted({1, 2, 3} | {2**k for k in range(2, 16)} | {3 * 2**k for k in range(1, 15)}))


@dataclass(frozen=True)
class Rasterization:
    """Per-pixel result of ``rasterize``.

    Attributes:
        triangle: (B, H, W) int64 id of the visible triangle, -1 on the background.
        barycentric: (B, H, W, 3) weights of the triangle's three corners at the pixel centre (0 on background).
        depth: (B, H, W) interpolated depth (larger = nearer), -inf on the background.
        front_facing: (B, T) bool, triangles facing the camera (the only ones drawn).
    """

    triangle: torch.Tensor
    barycentric: torch.Tensor
    depth: torch.Tensor
    front_facing: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool foreground mask."""
        return self.triangle >= 0




def rasterize(vertices: torch.Tensor, triangles: torch.Tensor, height: int, width: int) -> Rasterization:
    """Z-buffer the front-facing triangles of each mesh of a batch into an H × W image.

    Not differentiable (the visibility test is discrete); interpolate attributes with ``interpolate``.
    Shape: vertices (B, N, 3) image-space [u, v, depth], triangles (T, 3) -> Rasterization of (B, H, W)."""
    check_shape("vertices", vertices, (None, None, 3))
    check_shape("triangles", triangles, (None, 3))
    check_finite("vertices", vertices)
    if height < 1 or width < 1:
        raise InvalidInputError(f"image size must be positive, got {height} × {width}")
    if vertices.shape[1] == 0 or triangles.shape[0] == 0:
        raise InvalidInputError("cannot rasterize an empty mesh (no vertices or no triangles)")
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    if int(triangles.min()) < 0 or int(triangles.max()) >= vertices.shape[1]:
        raise InvalidInputError(f"triangle ids must lie in [0, {vertices.shape[1]})")

    device = vertices.device
    vertices = vertices.detach().float()
    batch = vertices.shape[0]
    corners = vertices[:, triangles]  # (B, T, 3 corners, 3 coords)
    # Pixel columns j whose centre j + 0.5 lies in [u_min, u_max], clipped to the image; rows likewise.
    first = torch.ceil(corners[..., :2].amin(dim=2) - 0.5).clamp(min=0)
    planes, area = _plane_coefficients(corners, first + 0.5)  # w0, w1, depth around the first pixel centre
    last = torch.floor(corners[..., :2].amax(dim=2) - 0.5)
    last = torch.minimum(last, torch.tensor([width - 1.0, height - 1.0], device=device))
    span = (last - first + 1).clamp(min=0).long()  # (B, T, 2) box width and height in pixels
    keep = (area < -1e-12) & (span > 0).all(dim=-1)  # front-facing and on screen

    # Group the kept triangles by window: the smallest listed square that holds the triangle's box.
    n_tri = triangles.shape[0]
    kept = torch.nonzero(keep.reshape(-1)).squeeze(1)  # flat (batch, triangle) ids
    kept_span = span.reshape(-1, 2).index_select(0, kept)
    window = _WINDOWS[torch.bucketize(kept_span.amax(dim=1), _WINDOWS)]
    order = torch.argsort(window)
    kept, kept_span = kept[order], kept_span[order]
    windows, group_sizes = torch.unique_consecutive(window[order], return_counts=True)
    flat_planes = planes.reshape(-1, 3, 3)
    flat_first = first.reshape(-1, 2).long()

    inside_ids = [torch.zeros(0, dtype=torch.long, device=device)]
    inside_offsets = [torch.zeros(0, 2, dtype=torch.long, device=device)]
    for ids, spans, k in zip(kept.split(group_sizes.tolist()), kept_span.split(group_sizes.tolist()),
                             windows.tolist()):
        owner, offset = _inside_window(flat_planes.index_select(0, ids), spans, k)
        inside_ids.append(ids[owner])
        inside_offsets.append(offset)
    flat_id = torch.cat(inside_ids)
    offsets = torch.cat(inside_offsets)
    col, row = (flat_first.index_select(0, flat_id) + offsets).unbind(-1)
    values = _evaluate(flat_planes.index_select(0, flat_id), offsets)  # (P, 3): w0, w1, depth
    pixel = (flat_id // n_tri * height + row) * width + col
    depth = values[:, 2]
    candidate_tri = flat_id % n_tri

    size = batch * height * width
    zbuffer, triangle_map, winner = z_buffer(pixel, depth, candidate_tri, size)
    barycentric = torch.zeros(size, 3, device=device)
    w0, w1 = values[winner, 0], values[winner, 1]
    barycentric[pixel[winner]] = torch.stack([w0, w1, 1 - w0 - w1], dim=-1)
    return Rasterization(
        triangle=triangle_map.view(batch, height, width),
        barycentric=barycentric.view(batch, height, width, 3),
        depth=zbuffer.view(batch, height, width),
        front_facing=area < 0,
    )


def z_buffer(pixel: torch.Tensor, depth: torch.Tensor, triangle: torch.Tensor, size: int):
    """The nearest of each pixel's candidate triangles (ties: the larger triangle id).

    Shape: pixel, depth, triangle (P,) of the candidates -> depth (size,) (-inf where none), triangle (size,)
    (-1 where none), and (P,) bool: the candidates that win (exactly one per pixel that has any)."""
    zbuffer = torch.full((size,), float("-inf"), device=depth.device)
    zbuffer.scatter_reduce_(0, pixel, depth, reduce="amax")
    nearest = depth == zbuffer[pixel]
    triangle_map = torch.full((size,), -1, dtype=torch.long, device=depth.device)
    triangle_map.scatter_reduce_(0, pixel[nearest], triangle[nearest], reduce="amax")
    return zbuffer, triangle_map, nearest & (triangle == triangle_map[pixel])


def _inside_window(planes, spans, k: int):
    """Which of the k × k pixels from each triangle's first box pixel have their centre inside it.

    Shape: planes (M, 3, 3) anchored at the first pixel centre, spans (M, 2) box width and height
    -> owner (P,) index into M and offset (P, 2) column and row from the first pixel, for the inside pixels."""
    steps = torch.arange(k, device=planes.device)
    base = planes[:, :2, 2]
    du, dv = steps.to(planes.dtype), steps.to(planes.dtype)[:, None]
    w0 = base[:, 0, None, None] + planes[:, 0, 0, None, None] * du + planes[:, 0, 1, None, None] * dv
    w1 = base[:, 1, None, None] + planes[:, 1, 0, None, None] * du + planes[:, 1, 1, None, None] * dv
    inside = (w0 >= -_EDGE) & (w1 >= -_EDGE) & (w0 + w1 <= 1 + _EDGE)  # (M, k rows, k columns)
    inside &= (steps < spans[:, 0, None, None]) & (steps[:, None] < spans[:, 1, None, None])
    owner, dv_in, du_in = torch.nonzero(inside, as_tuple=True)
    return owner, torch.stack([du_in, dv_in], dim=-1)


def _plane_coefficients(corners: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine functions of (u, v) giving the barycentric weights w0, w1 and the depth over each triangle.

    Each function is written around an anchor point: ``f(u, v) = a·(u - anchor_u) + b·(v - anchor_v) + c``, with
    c computed from differences to the triangle's first corner. Image coordinates in the hundreds would
    otherwise cancel in float32 and lose pixels on thin triangles.
    Shape: corners (..., 3, 3), anchor (..., 2) -> coefficients (..., 3, 3) with rows [w0, w1, depth] and
    columns [a, b, c], and the signed pixel area (...) (negative for front-facing triangles)."""
    (u0, v0, z0), (u1, v1, z1), (u2, v2, z2) = (corners[..., k, :].unbind(-1) for k in range(3))
    area = signed_area(corners)
    safe = torch.where(area.abs() < 1e-12, torch.full_like(area, -1e-12), area)
    grad_w0 = torch.stack([v1 - v2, u2 - u1], -1) / safe[..., None]
    grad_w1 = torch.stack([v2 - v0, u0 - u2], -1) / safe[..., None]
    grad_depth = grad_w0 * (z0 - z2)[..., None] + grad_w1 * (z1 - z2)[..., None]
    gradients = torch.stack([grad_w0, grad_w1, grad_depth], dim=-2)  # (..., 3, 2)
    offset = (anchor - corners[..., 0, :2])[..., None, :]  # from the first corner, where w0 = 1, w1 = 0
    at_first_corner = torch.stack([torch.ones_like(z0), torch.zeros_like(z0), z0], dim=-1)
    constant = at_first_corner + (gradients * offset).sum(dim=-1)
    return torch.cat([gradients, constant[..., None]], dim=-1), area


def signed_area(corners: torch.Tensor) -> torch.Tensor:
    """Twice the signed pixel area (u1 - u0)(v2 - v0) - (v1 - v0)(u2 - u0) of triangles, negative for
    front-facing ones. Shape: corners (..., 3, ≥2) -> (...)."""
    (u0, v0), (u1, v1), (u2, v2) = (corners[..., k, :2].unbind(-1) for k in range(3))
    return (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)


def _evaluate(planes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Evaluate anchored affine functions at integer offsets from the anchor.

    Shape: planes (P, 3, 3), offsets (P, 2) -> (P, 3)."""
    offsets = offsets.to(planes.dtype)
    return planes[..., 0] * offsets[:, None, 0] + planes[..., 1] * offsets[:, None, 1] + planes[..., 2]


def interpolate(attributes: torch.Tensor, triangles: torch.Tensor, raster: Rasterization) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel (zero on the background); differentiable in them.

    Shape: attributes (N, C) shared by the batch or (B, N, C), triangles (T, 3) -> (B, H, W, C)."""
    batch, height, width = raster.triangle.shape
    shared = attributes.dim() == 2
    check_shape("attributes", attributes, (None, None) if shared else (batch, None, None))
    triangles = triangles.to(device=attributes.device, dtype=torch.long)
    flat_triangle = raster.triangle.reshape(-1)
    foreground = torch.nonzero(flat_triangle >= 0).squeeze(1)
    corner_ids = triangles.index_select(0, flat_triangle[foreground])  # (F, 3)
    if not shared:  # index the (B·N, C) table: vertex id + N · batch id
        corner_ids = corner_ids + (foreground // (height * width))[:, None] * attributes.shape[1]
    table = attributes.reshape(-1, attributes.shape[-1])
    weights = raster.barycentric.reshape(-1, 3).index_select(0, foreground).to(attributes.dtype)
    values = sum(table.index_select(0, corner_ids[:, k]) * weights[:, k, None] for k in range(3))
    out = attributes.new_zeros(batch * height * width, attributes.shape[-1])
    out = out.index_put((foreground,), values)
    return out.view(batch, height, width, -1)
