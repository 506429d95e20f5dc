import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from cprfa.errors import InvalidInputError
from cprfa.model.projection import ParamLayout, image_vertices, pose_from_box
from cprfa.model.raster import interpolate, rasterize
from cprfa.model.render import render_pncc, visible_vertices, visible_vertices_of

# counter-clockwise on screen (negative signed area in pixels, v down) = front-facing
FRONT = torch.tensor([[[1.0, 1.0, 5.0], [1.0, 9.0, 1.0], [9.0, 1.0, 5.0]]])
TRIANGLE = torch.tensor([[0, 1, 2]])


def posed(face_model, yaw_degrees, size=128, batch=1):
    layout = ParamLayout.of(face_model)
    box = torch.tensor([[0.3, 0.3, 0.7, 0.7]]) * size
    angles = torch.tensor([[0.0, math.radians(yaw_degrees), 0.0]])
    params = layout.initial(1)
    params[:, :6] = pose_from_box(face_model, box, angles)
    return image_vertices(face_model, params.expand(batch, -1))


def test_single_triangle_coverage_barycentric_and_depth():
    raster = rasterize(FRONT, TRIANGLE, 12, 12)
    rows, cols = torch.nonzero(raster.mask[0], as_tuple=True)
    centres_u, centres_v = cols + 0.5, rows + 0.5
    # inside the triangle u >= 1, v >= 1, u + v <= 10 (pixel centres)
    expected = {(r, c) for r in range(12) for c in range(12) if c + 0.5 >= 1 and r + 0.5 >= 1 and c + r + 1 <= 10}
    assert set(zip(rows.tolist(), cols.tolist())) == expected
    weights = raster.barycentric[0, rows, cols]
    assert torch.allclose(weights.sum(-1), torch.ones(len(rows)))
    reconstructed = weights @ FRONT[0, :, :2]
    assert torch.allclose(reconstructed, torch.stack([centres_u, centres_v], -1), atol=1e-5)
    assert torch.allclose(raster.depth[0, rows, cols], weights @ FRONT[0, :, 2], atol=1e-5)
    assert torch.isinf(raster.depth[0][~raster.mask[0]]).all()


def test_back_facing_triangle_is_not_drawn():
    assert not rasterize(FRONT[:, [0, 2, 1]], TRIANGLE, 12, 12).mask.any()


def test_nearest_triangle_wins():
    near = FRONT + torch.tensor([0.0, 0.0, 10.0])
    vertices = torch.cat([FRONT, near], dim=1)
    raster = rasterize(vertices, torch.tensor([[0, 1, 2], [3, 4, 5]]), 12, 12)
    assert raster.mask.any() and (raster.triangle[raster.mask] == 1).all()


def test_batch_equals_single_renders(face_model):
    vertices = torch.cat([posed(face_model, yaw) for yaw in (-50, 0, 70)])
    batch = render_pncc(face_model, vertices, 96, 96)
    for i in range(3):
        single = render_pncc(face_model, vertices[i:i + 1], 96, 96)
        assert torch.equal(single.raster.triangle[0], batch.raster.triangle[i])
        assert torch.allclose(single.pncc[0], batch.pncc[i])
        assert torch.equal(single.visible[0], batch.visible[i])


def test_rendered_pncc_maps_back_to_the_right_vertices(face_model):
    vertices = posed(face_model, 25, size=256)
    render = render_pncc(face_model, vertices, 256, 256)
    assert render.pncc.shape == (1, 256, 256, 3) and render.mask.float().mean() > 0.1
    assert render.pncc.min() >= 0 and render.pncc.max() <= 1
    rows, cols = torch.nonzero(render.mask[0], as_tuple=True)
    codes = render.pncc[0, rows, cols].numpy()
    code_distance, nearest = cKDTree(face_model.pncc).query(codes)
    accepted = code_distance < 0.01  # the DAFI retrieval rule (paper §3.3)
    assert accepted.mean() > 0.7  # the rest lie between vertices, e.g. over the closed eyes
    corners = face_model.triangles[render.raster.triangle[0, rows, cols].numpy()]
    assert (corners == nearest[:, None]).any(axis=1)[accepted].mean() > 0.95
    pixel_centres = np.stack([cols.numpy() + 0.5, rows.numpy() + 0.5], -1)
    distance = np.linalg.norm(vertices[0, nearest, :2].numpy() - pixel_centres, axis=1)[accepted]
    assert np.median(distance) < 1.0 and distance.max() < 3.0


def test_visibility_flips_when_yaw_passes_90_degrees(face_model):
    lm = face_model.landmarks68
    visible = {yaw: render_pncc(face_model, posed(face_model, yaw), 128, 128).visible[0]
               for yaw in (-60, 0, 60, 85, 95, 120)}
    assert visible[0][lm].all()
    assert visible[85][lm[30]] and not visible[95][lm[30]] and not visible[120][lm[30]]  # the nose tip
    # positive yaw turns the nose to the image's right and the subject's left cheek away from the camera
    assert not visible[60][lm[[13, 35]]].any() and visible[60][lm[[3, 31]]].all()
    assert not visible[-60][lm[[3, 31]]].any() and visible[-60][lm[[13, 35]]].all()
    assert visible[0].sum() > visible[60].sum() > visible[95].sum()


def test_visibility_of_chosen_vertices_equals_that_of_all(face_model):
    vertices = torch.cat([posed(face_model, yaw) for yaw in (-70, 0, 40, 95)])
    render = render_pncc(face_model, vertices, 128, 128)
    ids = torch.as_tensor(np.concatenate([face_model.landmarks68, np.arange(0, face_model.n_vertices, 7)]))
    chosen = visible_vertices(vertices, face_model.torch_tensors()["triangles"], render.raster, vertex_ids=ids)
    assert torch.equal(chosen, render.visible[:, ids])


def test_visibility_without_the_whole_raster_is_the_same(face_model):
    vertices = torch.cat([posed(face_model, yaw) for yaw in (-70, 0, 40, 95)])
    vertices[1, :, 0] += 50  # partly outside the image
    ids = torch.as_tensor(np.concatenate([face_model.landmarks68, np.arange(0, face_model.n_vertices, 7)]))
    triangles = face_model.torch_tensors()["triangles"]
    quick = visible_vertices_of(vertices, triangles, ids, 128, 128)
    assert torch.equal(quick, render_pncc(face_model, vertices, 128, 128).visible[:, ids])
    assert quick[1].sum() < visible_vertices_of(posed(face_model, 0), triangles, ids, 128, 128).sum()
    far = vertices + torch.tensor([1000.0, 0.0, 0.0])  # no vertex in the image: none visible
    assert not visible_vertices_of(far, triangles, ids, 128, 128).any()


def test_render_depth_and_mask_agree(face_model):
    render = render_pncc(face_model, posed(face_model, -30), 64, 64)
    assert torch.equal(render.mask, torch.isfinite(render.depth))
    assert render.visible.shape == (1, face_model.n_vertices) and render.visible.dtype == torch.bool


def test_interpolate_is_differentiable():
    raster = rasterize(FRONT.double(), TRIANGLE, 12, 12)
    attributes = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, TRIANGLE, raster), (attributes,))


def test_bad_meshes():
    with pytest.raises(InvalidInputError, match="empty"):
        rasterize(torch.zeros(1, 0, 3), TRIANGLE, 8, 8)
    with pytest.raises(InvalidInputError, match="triangle ids"):
        rasterize(FRONT, torch.tensor([[0, 1, 3]]), 8, 8)
    with pytest.raises(InvalidInputError, match="NaN"):
        rasterize(torch.full((1, 3, 3), float("nan")), TRIANGLE, 8, 8)
    with pytest.raises(InvalidInputError, match="size"):
        rasterize(FRONT, TRIANGLE, 0, 8)


def test_thin_triangle_far_from_the_origin_keeps_its_pixel():
    # the centre (410.5, 424.5) lies inside by a barycentric margin of 0.01; float32 cancellation in products
    # of ~400 px coordinates once lost such pixels, leaving single-pixel holes in rendered faces
    vertices = torch.tensor([[[410.11, 425.22, 1.0], [410.65, 424.78, 1.0], [410.35, 424.19, 1.0]]])
    raster = rasterize(vertices, TRIANGLE, 512, 512)
    assert raster.triangle[0, 424, 410] == 0 and raster.mask.sum() == 1
