"""Face profiling: synthesize a larger pose of a fitted face, the way 300W-LP was made from 300-W.

Given a face crop and its fitted parameters, ``profile_face`` turns the fitted 3D face by extra yaw and pitch
and warps the whole crop with it:

- the face moves with its fitted mesh: every output face pixel samples the input at the place where the same
  surface point was seen (surface hidden in the input, such as the far cheek, samples whatever covered it
  there — the input's own pixels, the usual 300W-LP fill);
- the rest of the crop follows a smooth background mesh: a lattice of anchors over the crop, each moved as if
  it lay on a plane through the face centre at the face's depth, blended towards staying put with its distance
  from the face (anchors on the crop border stay fixed), triangulated with the face's outer rim;
- the new pose's PNCC, mask and landmarks are rendered exactly from the turned parameters.

All of it goes through the project's rasterizer: the output's source coordinates are a per-vertex attribute,
interpolated per pixel and handed to ``cv2.remap``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay

from cprfa.model.face_model import FaceModel
from cprfa.model.ict import boundary_loops
from cprfa.model.projection import euler_to_rotation, image_vertices
from cprfa.model.raster import interpolate, rasterize

ANCHOR_GRID = 12  # anchors per side of the background lattice
FALLOFF = 0.25  # background motion fades over this fraction of the crop side beyond the face


def turn_params(params: torch.Tensor, yaw: float, pitch: float = 0.0) -> torch.Tensor:
    """Parameters of the same face turned by extra yaw and pitch (radians) about its own centre: the Euler
    angles move by exactly that much (so a target pose is reached exactly), roll, scale and translation stay.
    Shape: (P,) -> (P,)."""
    params = params.clone().to(torch.float64)
    params[0] += pitch
    params[1] += yaw
    return params


def profile_face(model: FaceModel, image: np.ndarray, params: torch.Tensor, yaw: float, pitch: float = 0.0):
    """Warp a square face crop to the face turned by ``yaw`` and ``pitch`` (radians).

    Returns the new image (S, S, 3) uint8 and the new parameters (P,); render the new PNCC, mask and
    landmarks from those parameters.
    Shape: image (S, S, 3), params (P,) in crop pixels."""
    size = image.shape[0]
    params = params.to(torch.float64)
    turned = turn_params(params, yaw, pitch)
    source = image_vertices(model, params[None])[0]  # (N, 3): where each vertex is seen now
    target = image_vertices(model, turned[None])[0]  # (N, 3): where it goes

    rim = max(boundary_loops(model.triangles), key=len)  # the outline of the face area
    anchors, moved = _background_anchors(params, turned, source, size)
    background_source = np.concatenate([source[rim, :2].numpy(), anchors])
    background_target = np.concatenate([target[rim, :2].numpy(), moved])
    triangles = Delaunay(background_source).simplices
    hull = cv2.convexHull(source[rim, :2].numpy().astype(np.float32))
    centroids = background_source[triangles].mean(axis=1)
    outside = [cv2.pointPolygonTest(hull, (float(x), float(y)), False) < 0 for x, y in centroids]
    triangles = triangles[np.array(outside, dtype=bool)]

    far = float(target[:, 2].min()) - 10.0 * size  # the background lies behind every face pixel
    vertices = np.concatenate([
        target.numpy(),
        np.concatenate([background_target, np.full((len(background_target), 1), far)], axis=1),
    ])
    triangles = np.concatenate([model.triangles, _drawable(triangles + model.n_vertices, vertices)])
    source_uv = torch.from_numpy(np.concatenate([source[:, :2].numpy(), background_source])).float()
    raster = rasterize(torch.from_numpy(vertices)[None].float(), torch.from_numpy(triangles), size, size)
    uv = interpolate(source_uv, torch.from_numpy(triangles), raster)[0].numpy()
    covered = raster.mask[0].numpy()
    grid = (np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1) + 0.5).astype(np.float32)
    uv = np.where(covered[..., None], uv, grid)  # anything left uncovered stays where it was
    warped = cv2.remap(image, uv[..., 0] - 0.5, uv[..., 1] - 0.5, cv2.INTER_LINEAR,  # OpenCV: centres at integers
                       borderMode=cv2.BORDER_REPLICATE)
    return warped, turned


def _background_anchors(params, turned, source, size):
    """A lattice over the crop (source positions) and where each anchor moves (see the module docstring)."""
    steps = np.arange(ANCHOR_GRID + 1) / ANCHOR_GRID * size
    anchors = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2)
    centre = source[:, :2].mean(dim=0).numpy()
    delta = (euler_to_rotation(turned[None, :3]) @ euler_to_rotation(params[None, :3]).transpose(1, 2))[0].numpy()
    # the anchor on the plane through the face centre facing the camera (x right, y up, z to the camera)
    offsets = np.stack([anchors[:, 0] - centre[0], centre[1] - anchors[:, 1], np.zeros(len(anchors))], -1)
    turned_offsets = offsets @ delta.T
    moved = np.stack([turned_offsets[:, 0] + centre[0], centre[1] - turned_offsets[:, 1]], -1)
    face_radius = float(np.ptp(source[:, 0].numpy())) / 2
    distance = np.linalg.norm(anchors - centre, axis=1)
    weight = np.clip(1 - (distance - face_radius) / (FALLOFF * size), 0, 1)
    weight[((anchors == 0) | (anchors == size)).any(axis=1)] = 0.0  # the crop border stays put
    return anchors, anchors + weight[:, None] * (moved - anchors)


def _drawable(triangles: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Wind triangles so that the rasterizer draws them (negative signed area in pixels)."""
    a, b, c = (vertices[triangles[:, k], :2] for k in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    triangles = triangles.copy()
    triangles[area > 0] = triangles[area > 0][:, [0, 2, 1]]
    return triangles
