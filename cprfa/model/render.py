"""Render posed face models: PNCC image, foreground mask, depth, visible vertices (built on ``raster``).

The PNCC image is the DAFI the HS-U-Net learns to predict (DESIGN.md): each face pixel holds the PNCC code of the
model surface it shows, interpolated from the three corners of its triangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprfa._checks import check_shape
from cprfa.model.face_model import FaceModel
from cprfa.model.raster import (
    _EDGE,
    Rasterization,
    _evaluate,
    _plane_coefficients,
    interpolate,
    rasterize,
    z_buffer,
)

VISIBILITY_TOLERANCE = 0.01


@dataclass(frozen=True)
class Render:
    """What ``render_pncc`` returns for a batch of B meshes of N vertices into H × W images.

    Attributes:
        pncc: (B, H, W, 3) PNCC code per pixel in [0, 1]; 0 on the background.
        mask: (B, H, W) bool foreground.
        depth: (B, H, W) depth (larger = nearer); -inf on the background.
        visible: (B, N) bool, vertices seen by the camera (see ``visible_vertices``).
        raster: the underlying per-pixel triangle ids and barycentric weights.
    """

    pncc: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    visible: torch.Tensor
    raster: Rasterization


@torch.no_grad()
def render_pncc(model: FaceModel, vertices: torch.Tensor, height: int, width: int) -> Render:
    """Render the PNCC image, mask, depth and visible vertices of posed meshes of ``model``.

    Shape: vertices (B, N, 3) image-space [u, v, depth] of all the model's vertices -> Render of (B, H, W)."""
    check_shape("vertices", vertices, (None, model.n_vertices, 3))
    tensors = model.torch_tensors(vertices.device)
    raster = rasterize(vertices, tensors["triangles"], height, width)
    pncc = interpolate(tensors["pncc"], tensors["triangles"], raster)
    visible = visible_vertices(vertices, tensors["triangles"], raster)
    return Render(pncc=pncc, mask=raster.mask, depth=raster.depth, visible=visible, raster=raster)


def visible_vertices(
    vertices: torch.Tensor, triangles: torch.Tensor, raster: Rasterization, tolerance: float = VISIBILITY_TOLERANCE,
    vertex_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which vertices the camera sees in a rasterized image: all, or only ``vertex_ids`` (n,).

    A vertex is visible when it is a corner of a front-facing triangle, lies inside the image, and the surface
    drawn at its pixel does not hide it: that pixel is background, or its triangle has the vertex as a corner,
    or that triangle's plane, extended to the vertex's exact (u, v), is at most ``tolerance`` × the mesh's
    width (in u) nearer than the vertex. Evaluating the winning plane at the vertex itself, not at the pixel
    centre, keeps steep surfaces near the silhouette from hiding their own vertices.

    Shape: vertices (B, N, 3), triangles (T, 3), raster of (B, H, W) -> (B, N or n) bool."""
    batch, n_vertices, _ = vertices.shape
    _, height, width = raster.triangle.shape
    vertices = vertices.detach().float()
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    ids = torch.arange(n_vertices, device=vertices.device) if vertex_ids is None else vertex_ids.to(vertices.device)

    front = raster.front_facing.long()[..., None].expand(-1, -1, 3).reshape(batch, -1)
    front_corner = torch.zeros(batch, n_vertices, dtype=torch.long, device=vertices.device)
    front_corner.scatter_reduce_(1, triangles.reshape(1, -1).expand(batch, -1), front, reduce="amax")

    extent = (vertices[..., 0].amax(dim=1, keepdim=True) - vertices[..., 0].amin(dim=1, keepdim=True)).clamp(min=1e-6)
    points = vertices[:, ids]
    u, v, depth = points.unbind(-1)
    col, row = torch.floor(u).long(), torch.floor(v).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    pixel_triangle = raster.triangle[
        torch.arange(batch, device=vertices.device)[:, None], row.clamp(0, height - 1), col.clamp(0, width - 1)
    ]  # (B, n)
    background = pixel_triangle < 0
    winner = pixel_triangle.clamp(min=0)
    own = (triangles[winner] == ids[None, :, None]).any(dim=-1)
    winner_corners = vertices[torch.arange(batch, device=vertices.device)[:, None, None], triangles[winner]]
    planes, _ = _plane_coefficients(winner_corners, points[..., :2])  # (B, n, 3, 3) around each vertex
    surface_depth = planes[..., 2, 2]
    unhidden = surface_depth <= depth + tolerance * extent
    return (front_corner[:, ids] > 0) & inside & (background | own | unhidden)


def visible_vertices_of(vertices: torch.Tensor, triangles: torch.Tensor, vertex_ids: torch.Tensor, height: int,
                        width: int, tolerance: float = VISIBILITY_TOLERANCE) -> torch.Tensor:
    """``visible_vertices`` of a few vertices in an H × W image, without rasterizing it: only the triangles drawn
    at those vertices' pixels matter. A summed-area table of the pixels finds the front-facing triangles whose
    pixel box holds one of them; each such pair of pixel and triangle is tested as ``rasterize`` tests it (the
    same arithmetic), and the nearest triangle wins the pixel (ties: the larger id). The same answer for a small
    part of the time (it tests every pair at once: meant for tens of vertices, such as the landmarks).

    Shape: vertices (B, N, 3), triangles (T, 3), vertex_ids (n,) -> (B, n) bool."""
    vertices = vertices.detach().float()
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    batch, device = len(vertices), vertices.device
    pixel = torch.floor(vertices[:, vertex_ids, :2]).long()  # (B, n, 2) column, row
    col, row = pixel.unbind(-1)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    marked = torch.zeros(batch, height + 1, width + 1, dtype=torch.int32, device=device)
    faces = torch.arange(batch, device=device)[:, None].expand_as(col)
    marked[faces[inside], row[inside] + 1, col[inside] + 1] = 1
    table = marked.cumsum(1).cumsum(2).flatten(1)  # table[b, i, j]: marked pixels in rows < i and columns < j
    corner_ids = triangles.T.reshape(-1)  # every triangle's first corner, then second, then third
    u0, u1, u2 = vertices[..., 0].contiguous().index_select(1, corner_ids).view(batch, 3, -1).unbind(1)
    v0, v1, v2 = vertices[..., 1].contiguous().index_select(1, corner_ids).view(batch, 3, -1).unbind(1)
    # the pixels whose centre lies in each triangle's box, clipped to the image (as rasterize takes them)
    first_u = torch.ceil(torch.minimum(torch.minimum(u0, u1), u2) - 0.5).long().clamp_(0, width)
    first_v = torch.ceil(torch.minimum(torch.minimum(v0, v1), v2) - 0.5).long().clamp_(0, height)
    end_u = torch.maximum(torch.floor(torch.maximum(torch.maximum(u0, u1), u2) + 0.5).long().clamp_(max=width), first_u)
    end_v = torch.maximum(torch.floor(torch.maximum(torch.maximum(v0, v1), v2) + 0.5).long().clamp_(max=height), first_v)

    def at(rows, cols):
        return torch.gather(table, 1, rows * (width + 1) + cols)

    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)  # raster.signed_area
    covering = (at(end_v, end_u) - at(first_v, end_u) - at(end_v, first_u) + at(first_v, first_u)) > 0
    drawable = (area < -1e-12) & covering  # (B, T)
    subset = torch.nonzero(drawable.any(dim=0)).squeeze(1)  # ascending ids
    first = torch.stack([first_u[:, subset], first_v[:, subset]], dim=-1)
    end = torch.stack([end_u[:, subset], end_v[:, subset]], dim=-1)
    in_box = ((pixel[:, :, None] >= first[:, None]) & (pixel[:, :, None] < end[:, None])).all(dim=-1)
    face, point, candidate = torch.nonzero(in_box & inside[..., None] & drawable[:, None, subset], as_tuple=True)
    candidate_corners = vertices[face[:, None], triangles[subset[candidate]]]  # (P, 3, 3)
    anchor = first[face, candidate]
    planes, _ = _plane_coefficients(candidate_corners, anchor + 0.5)
    w0, w1, depth = _evaluate(planes, pixel[face, point] - anchor).unbind(-1)
    covers = (w0 >= -_EDGE) & (w1 >= -_EDGE) & (w0 + w1 <= 1 + _EDGE)
    slot = face * pixel.shape[1] + point  # (P,) into the (B·n,) vertices
    _, winner, _ = z_buffer(slot[covers], depth[covers], subset[candidate[covers]], pixel.shape[0] * pixel.shape[1])
    drawn = torch.full((batch, height, width), -1, dtype=torch.long, device=device)
    drawn[faces[inside], row[inside], col[inside]] = winner.view(batch, -1)[inside]
    raster = Rasterization(drawn, vertices.new_zeros(batch, height, width, 3),
                           vertices.new_full(drawn.shape, float("-inf")), area < 0)
    return visible_vertices(vertices, triangles, raster, tolerance, vertex_ids)
