"""Drawing: pixel-centre convention, hollow invisible points, back-face culling, axis directions, blending."""

import numpy as np
import pytest
import torch

from cprfa.errors import InvalidInputError
from cprfa.model.draw import (
    blend,
    depth_to_gray,
    draw_landmarks,
    draw_pose_axes,
    draw_wireframe,
    front_facing,
)
from cprfa.model.projection import euler_to_rotation, project


def _grey(height=64, width=64):
    return np.full((height, width, 3), 40, np.uint8)


def _changed(before, after):
    return (before != after).any(axis=-1)


def _centroid(weights):
    rows, cols = np.nonzero(weights)
    w = weights[rows, cols].astype(float)
    return np.array([(cols * w).sum(), (rows * w).sum()]) / w.sum()  # (column, row)


def test_landmark_at_pixel_centre_colours_that_pixel():
    image = _grey()
    before = image.copy()
    out = draw_landmarks(image, np.array([[10.5, 20.5]]), color=(255, 0, 0), radius=2)
    assert tuple(out[20, 10]) == (255, 0, 0)  # row v, column u
    assert not _changed(before, out)[20, 14] and not _changed(before, out)[24, 10]
    np.testing.assert_array_equal(image, before)  # input unchanged
    assert out is not image


@pytest.mark.parametrize("point, centre", [((10.5, 20.5), (10.0, 20.0)), ((10.0, 20.0), (9.5, 19.5)),
                                           ((30.25, 12.75), (29.75, 12.25))])
def test_landmark_position_is_sub_pixel(point, centre):
    image = np.zeros((48, 48, 3), np.uint8)
    out = draw_landmarks(image, np.array([point]), color=(255, 255, 255), radius=3)
    # The intensity-weighted centre of the disc, in pixel indices, is the point minus half a pixel.
    np.testing.assert_allclose(_centroid(out[..., 0]), centre, atol=0.08)


def test_invisible_landmarks_are_hollow():
    image = _grey()
    points = torch.tensor([[16.5, 16.5], [40.5, 40.5]])  # torch input works too
    out = draw_landmarks(image, points, visible=np.array([True, False]), color=(0, 255, 0), radius=5)
    assert tuple(out[16, 16]) == (0, 255, 0)  # filled
    assert tuple(out[40, 40]) == (40, 40, 40)  # hollow: centre untouched
    assert out[40, 45, 1] > 200 and out[40, 45, 0] < 20  # the ring, 5 px right of the centre (anti-aliased)


def test_landmark_input_errors():
    with pytest.raises(InvalidInputError, match="NaN"):
        draw_landmarks(_grey(), np.array([[np.nan, 3.0]]))
    with pytest.raises(InvalidInputError, match="visible"):
        draw_landmarks(_grey(), np.zeros((68, 2)), visible=np.ones(5, bool))
    with pytest.raises(InvalidInputError, match="uint8"):
        draw_landmarks(np.zeros((64, 64, 3), np.float32), np.zeros((68, 2)))


def _model_triangle_in_image(yaw=0.0):
    """A triangle wound counter-clockwise in the model's (x, y-up) frame, posed and projected into pixels."""
    model = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    pose = torch.tensor([[0.0, yaw, 0.0, 40.0, 32.5, 50.5]])  # scale 40, origin at pixel [50, 32]'s centre
    return project(model, pose)[0]  # (3, 3) [u, v, depth]


def test_front_facing_follows_the_model_winding():
    vertices = _model_triangle_in_image()
    assert front_facing(vertices, np.array([[0, 1, 2]])).tolist() == [True]
    assert front_facing(vertices, np.array([[0, 2, 1]])).tolist() == [False]
    turned = _model_triangle_in_image(yaw=np.pi)  # seen from behind
    assert front_facing(turned, np.array([[0, 1, 2]])).tolist() == [False]
    flat = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    assert front_facing(flat, np.array([[0, 1, 2]])).tolist() == [False]


def test_wireframe_draws_front_facing_triangles_only():
    image = _grey()
    before = image.copy()
    vertices = _model_triangle_in_image()  # corners (32.5, 50.5), (72.5, 50.5), (32.5, 10.5): pixel centres
    front = draw_wireframe(image, vertices, np.array([[0, 1, 2]]), color=(255, 255, 0), alpha=1.0)
    back = draw_wireframe(image, vertices, np.array([[0, 2, 1]]), color=(255, 255, 0), alpha=1.0)
    both_sides = draw_wireframe(image, vertices, np.array([[0, 2, 1]]), front_facing_only=False, alpha=1.0)
    # Anti-aliased lines: the edges are brightest on the pixels their centres run through.
    assert front[40:, 45, 0].argmax() == 10 and front[50, 45, 0] > 200  # bottom edge (model x axis), row 50
    assert front[30, :40, 0].argmax() == 32 and front[30, 32, 0] > 200  # left edge (model y axis), column 32
    assert not _changed(before, front)[40, 40]  # inside the triangle: only edges are drawn
    assert not _changed(before, front)[52, 45] and not _changed(before, front)[30, 30]  # 2 px off: untouched
    np.testing.assert_array_equal(back, before)  # back-facing: nothing
    assert _changed(before, both_sides)[30, 32]
    np.testing.assert_array_equal(image, before)


def test_wireframe_alpha_blends_lines_only():
    image = _grey()
    vertices = _model_triangle_in_image()
    opaque = draw_wireframe(image, vertices, np.array([[0, 1, 2]]), color=(240, 240, 240), alpha=1.0)
    half = draw_wireframe(image, vertices, np.array([[0, 1, 2]]), color=(240, 240, 240), alpha=0.5)
    expected = (opaque.astype(float) + image) / 2
    assert np.abs(half - expected).max() <= 0.5 + 1e-9
    assert (half[_changed(image, opaque)] != opaque[_changed(image, opaque)]).all()
    np.testing.assert_array_equal(half[~_changed(image, opaque)], image[~_changed(image, opaque)])


def test_wireframe_of_the_face_model(face_model):
    mean = torch.from_numpy(face_model.mean)[None]
    frontal = project(mean, torch.tensor([[0.0, 0.0, 0.0, 6.0, 128, 128]]))[0]
    # The model's windings match: most of the face area faces the camera (the rest faces down or sideways).
    assert front_facing(frontal, face_model.triangles).mean() > 0.8
    image = np.zeros((256, 256, 3), np.uint8)
    out = draw_wireframe(image, frontal, face_model.triangles, alpha=1.0)
    assert _changed(image, out).mean() > 0.05
    behind = project(mean, torch.tensor([[0.0, np.pi, 0.0, 6.0, 128, 128]]))[0]
    assert front_facing(behind, face_model.triangles).mean() < 0.2
    back = draw_wireframe(image, behind, face_model.triangles, alpha=1.0)
    assert _changed(image, out).sum() > 3 * _changed(image, back).sum()


def test_wireframe_input_errors():
    vertices = _model_triangle_in_image()
    with pytest.raises(InvalidInputError, match="outside"):
        draw_wireframe(_grey(), vertices, np.array([[0, 1, 3]]))
    with pytest.raises(InvalidInputError, match="integer"):
        draw_wireframe(_grey(), vertices, np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(InvalidInputError, match="alpha"):
        draw_wireframe(_grey(), vertices, np.array([[0, 1, 2]]), alpha=2.0)


def _axis_colour_at(image, row, col):
    red, green, blue = image[row, col].astype(int)
    return {(255, 0, 0): "x", (0, 255, 0): "y", (0, 0, 255): "z"}.get((red, green, blue))


def test_pose_axes_frontal():
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_pose_axes(image, np.eye(3), np.array([50.5, 50.5]), length=30)
    assert _axis_colour_at(out, 50, 70) == "x"  # model x (subject's left) points to the image right
    assert _axis_colour_at(out, 30, 50) == "y"  # model y (up) points up: smaller v
    assert not _changed(image, out)[50, 30] and not _changed(image, out)[70, 50]
    assert not (out[..., 2] > 0).any()  # z points at the camera: no length on screen
    np.testing.assert_array_equal(image, np.zeros((100, 100, 3), np.uint8))


def test_pose_axes_follow_the_rotation_convention():
    image = np.zeros((100, 100, 3), np.uint8)
    yawed = euler_to_rotation(torch.tensor([[0.0, np.pi / 2, 0.0]]))[0]  # nose turned to the image right
    out = draw_pose_axes(image, yawed, (50.5, 50.5), length=30)
    assert _axis_colour_at(out, 50, 70) == "z"
    assert not (out[..., 0] > 0).any()  # x now points away from the camera
    rolled = euler_to_rotation(np.array([[0.0, 0.0, np.pi / 2]]))[0]  # counter-clockwise on screen
    out = draw_pose_axes(image, rolled, (50.5, 50.5), length=30)
    assert _axis_colour_at(out, 30, 50) == "x"  # x turned from right to up
    assert _axis_colour_at(out, 50, 30) == "y"  # y turned from up to left


@pytest.mark.parametrize("yaw, pixel, on_top", [(np.pi / 4, (50, 60), "z"), (-3 * np.pi / 4, (50, 40), "x")])
def test_pose_axes_nearer_axis_on_top(yaw, pixel, on_top):
    # x and z project onto the same screen direction; the one pointing towards the camera must stay visible.
    rotation = euler_to_rotation(np.array([[0.0, yaw, 0.0]]))[0]
    out = draw_pose_axes(np.zeros((100, 100, 3), np.uint8), rotation, (50.5, 50.5), length=30)
    assert _axis_colour_at(out, *pixel) == on_top


def test_blend_inside_mask_only():
    image = _grey(40, 40)
    before = image.copy()
    overlay = np.zeros((40, 40, 3), np.float32)
    overlay[..., 0] = 1.0  # a float render in [0, 1]
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    out = blend(image, torch.from_numpy(overlay), torch.from_numpy(mask), alpha=0.5)
    assert tuple(out[15, 15]) == (148, 20, 20)  # round(0.5 * 40 + 0.5 * 255) = 148 (half up to even)
    assert tuple(out[5, 5]) == (40, 40, 40)
    np.testing.assert_array_equal(image, before)
    full = blend(image, np.full((40, 40, 3), 240, np.uint8), alpha=0.25)
    assert (full == 90).all()
    with pytest.raises(InvalidInputError, match="shape"):
        blend(image, np.zeros((20, 20, 3), np.uint8))


def test_depth_to_gray_spans_each_region_on_its_own():
    depth = np.full((4, 6), -np.inf)
    depth[:, :2] = [[1.0, 3.0]] * 4  # a near face
    depth[:, 3:5] = [[-50.0, -40.0]] * 4  # a far one: its own range, not the near one's
    regions = np.where(np.isfinite(depth), np.arange(6)[None] // 3, -1)
    gray = depth_to_gray(depth, regions)
    assert (gray[:, [0, 3]] == 40).all() and (gray[:, [1, 4]] == 255).all()
    assert (gray[:, [2, 5]] == 0).all()  # background
    alone = depth_to_gray(depth)  # one region: the far face darker than the near one
    assert (alone[:, 4] < alone[:, 0]).all() and (alone[:, 1] == 255).all()
    with pytest.raises(InvalidInputError):
        depth_to_gray(depth, regions[:2])
