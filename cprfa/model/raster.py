"""A vectorized z-buffer rasterizer for batches of projected meshes, in plain torch on the CPU.

Pixel (row i, column j) covers [j, j+1) × [i, i+1) in image coordinates, so its centre is (j + 0.5, i + 0.5)
(DESIGN.md: origin at the top-left pixel's corner). A pixel belongs to a triangle when its centre lies inside
it (edges shared by two triangles count for the one with the larger depth, ties for the larger triangle id).
Only front-facing triangles are drawn: counter-clockwise in the model's (x, y-up) frame, which stays
counter-clockwise on screen and gives a negative signed area (u1 - u0)(v2 - v0) - (v1 - v0)(u2 - u0) in pixel
coordinates (v down). A face seen from behind therefore renders empty, as the back of a face mask would be
hidden inside the head. Depth grows towards the camera; the nearest triangle wins.

How it stays fast without a compiled kernel: triangles are grouped by the size of their bounding box (in
powers of two), every triangle of a group tests the k × k pixels of its box at once, and the winners are
found by two scatter-reduce passes (nearest depth per pixel, then the largest triangle id at that depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprfa._checks import check_finite, check_shape
from cprfa.errors import InvalidInputError


@dataclass(frozen=True)
class Rasterization:
    """Per-pixel result of ``rasterize``.

    Attributes:
        triangle: (B, H, W) int64 id of the visible triangle, -1 on the background.
        barycentric: (B, H, W, 3) weights of the triangle's three corners at the pixel centre (0 on background).
        depth: (B, H, W) interpolated depth (larger = nearer), -inf on the background.
    """

    triangle: torch.Tensor
    barycentric: torch.Tensor
    depth: torch.Tensor

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
    planes, area = _plane_coefficients(corners)  # (B, T, 3, 3): rows w0, w1, depth over [u, v, 1]
    # Pixel columns j whose centre j + 0.5 lies in [u_min, u_max], clipped to the image; rows likewise.
    first = torch.ceil(corners[..., :2].amin(dim=2) - 0.5).clamp(min=0)
    last = torch.floor(corners[..., :2].amax(dim=2) - 0.5)
    last = torch.minimum(last, torch.tensor([width - 1.0, height - 1.0], device=device))
    span = (last - first + 1).clamp(min=0).long()  # (B, T, 2) box width and height in pixels
    keep = (area < -1e-12) & (span > 0).all(dim=-1)  # front-facing and on screen

    kept = torch.nonzero(keep.reshape(-1)).squeeze(1)  # flat (batch, triangle) ids
    n_tri = triangles.shape[0]
    counts = span.reshape(-1, 2).index_select(0, kept).prod(dim=1)

    def per_candidate(per_triangle: torch.Tensor) -> torch.Tensor:
        flat = per_triangle.reshape(batch * n_tri, *per_triangle.shape[2:])
        return torch.repeat_interleave(flat.index_select(0, kept), counts, dim=0)

    owner_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    local = torch.arange(len(owner_start), device=device) - owner_start
    span_u = per_candidate(span[..., 0])
    origin = per_candidate(first.long())
    col = origin[:, 0] + local % span_u
    row = origin[:, 1] + local // span_u
    values = _evaluate(per_candidate(planes), col, row)  # (P, 3): w0, w1, depth
    inside = (values[:, 0] >= 0) & (values[:, 1] >= 0) & (values[:, 0] + values[:, 1] <= 1)
    flat_id = per_candidate(torch.arange(batch * n_tri, device=device).view(batch, n_tri))[inside]
    pixel = ((flat_id // n_tri * height + row[inside]) * width + col[inside])
    depth = values[inside, 2]
    candidate_tri = flat_id % n_tri

    size = batch * height * width
    zbuffer = torch.full((size,), float("-inf"), device=device)
    zbuffer.scatter_reduce_(0, pixel, depth, reduce="amax")
    nearest = depth == zbuffer[pixel]
    triangle_map = torch.full((size,), -1, dtype=torch.long, device=device)
    triangle_map.scatter_reduce_(0, pixel[nearest], candidate_tri[nearest], reduce="amax")

    barycentric = torch.zeros(size, 3, device=device)
    foreground = torch.nonzero(triangle_map >= 0).squeeze(1)
    fg_batch, fg_rest = foreground // (height * width), foreground % (height * width)
    fg_planes = planes.reshape(batch * n_tri, 3, 3).index_select(0, fg_batch * n_tri + triangle_map[foreground])
    weights = _evaluate(fg_planes, fg_rest % width, fg_rest // width)
    barycentric[foreground] = torch.stack([weights[:, 0], weights[:, 1], 1 - weights[:, 0] - weights[:, 1]], 1)
    return Rasterization(
        triangle=triangle_map.view(batch, height, width),
        barycentric=barycentric.view(batch, height, width, 3),
        depth=zbuffer.view(batch, height, width),
    )


def _plane_coefficients(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine functions of (u, v) giving the barycentric weights w0, w1 and the depth over each triangle.

    Shape: corners (B, T, 3, 3) -> coefficients (B, T, 3, 3) with rows [w0, w1, depth] and columns
    [u, v, 1], and the signed pixel area (B, T) (negative for front-facing triangles)."""
    (u0, v0, z0), (u1, v1, z1), (u2, v2, z2) = (corners[:, :, k].unbind(-1) for k in range(3))
    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
    safe = torch.where(area.abs() < 1e-12, torch.full_like(area, -1e-12), area)
    w0 = torch.stack([v1 - v2, u2 - u1, u1 * v2 - u2 * v1], -1) / safe[..., None]
    w1 = torch.stack([v2 - v0, u0 - u2, u2 * v0 - u0 * v2], -1) / safe[..., None]
    constant = torch.zeros_like(w0)
    constant[..., 2] = 1.0
    depth = w0 * (z0 - z2)[..., None] + w1 * (z1 - z2)[..., None] + constant * z2[..., None]
    return torch.stack([w0, w1, depth], dim=-2), area


def _evaluate(planes: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Evaluate affine functions at pixel centres. Shape: planes (P, 3, 3), col and row (P,) -> (P, 3)."""
    u = (col.to(planes.dtype) + 0.5)[:, None]
    v = (row.to(planes.dtype) + 0.5)[:, None]
    return planes[..., 0] * u + planes[..., 1] * v + planes[..., 2]


def interpolate(attributes: torch.Tensor, triangles: torch.Tensor, raster: Rasterization) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel (zero on the background); differentiable in them.

    Shape: attributes (N, C) shared by the batch or (B, N, C), triangles (T, 3) -> (B, H, W, C)."""
    batch, height, width = raster.triangle.shape
    shared = attributes.dim() == 2
    check_shape("attributes", attributes, (None, None) if shared else (batch, None, None))
    triangles = triangles.to(device=attributes.device, dtype=torch.long)
    flat_triangle = raster.triangle.reshape(-1)
    foreground = torch.nonzero(flat_triangle >= 0).squeeze(1)
    corner_ids = triangles[flat_triangle[foreground]]  # (F, 3)
    if shared:
        corner_values = attributes[corner_ids]  # (F, 3, C)
    else:
        corner_values = attributes[(foreground // (height * width))[:, None], corner_ids]
    weights = raster.barycentric.reshape(-1, 3)[foreground].to(attributes.dtype)
    values = (corner_values * weights[..., None]).sum(dim=1)
    out = attributes.new_zeros(batch * height * width, attributes.shape[-1])
    out = out.index_put((foreground,), values)
    return out.view(batch, height, width, -1)
