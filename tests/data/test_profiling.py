import math

import numpy as np
import torch

from cprfa.data.profiling import profile_face, turn_params
from cprfa.model.projection import ParamLayout, image_vertices, pose_from_box
from cprfa.model.render import render_pncc

SIZE = 128


def frontal_params(face_model, yaw=0.0):
    params = ParamLayout.of(face_model).initial(1, dtype=torch.float64)
    box = torch.tensor([[0.3, 0.3, 0.7, 0.7]], dtype=torch.float64) * SIZE
    params[:, :6] = pose_from_box(face_model, box, torch.tensor([[0.0, yaw, 0.0]], dtype=torch.float64))
    return params[0]


def pncc_photo(face_model, params):
    render = render_pncc(face_model, image_vertices(face_model, params[None]).float(), SIZE, SIZE)
    return (render.pncc[0].numpy() * 255).round().astype(np.uint8), render


def test_turn_params_adds_yaw_and_keeps_the_rest(face_model):
    params = frontal_params(face_model, yaw=0.2)
    turned = turn_params(params, math.radians(30))
    assert math.isclose(turned[1].item(), 0.2 + math.radians(30), abs_tol=1e-9)
    assert torch.equal(turned[3:], params[3:])


def test_profiled_face_shows_the_surface_the_new_pose_shows(face_model):
    # a "photo" whose colours are the PNCC codes: after profiling, each face pixel must carry the code that a
    # direct render at the new pose puts there
    params = frontal_params(face_model)
    photo, _ = pncc_photo(face_model, params)
    warped, turned = profile_face(face_model, photo, params, math.radians(30))
    expected, render = pncc_photo(face_model, turned)
    assert math.isclose(turned[1].item(), math.radians(30), abs_tol=1e-9)
    # compare where the new view shows surface that the frontal view saw too (not the newly seen side)
    seen_before = render_pncc(face_model, image_vertices(face_model, params[None]).float(), SIZE, SIZE).visible[0]
    corners = torch.as_tensor(face_model.triangles)[render.raster.triangle[0].clamp(min=0)]
    compare = render.mask[0] & seen_before[corners].all(dim=-1)
    compare = compare.numpy()
    assert compare.mean() > 0.1
    error = np.abs(warped.astype(int) - expected.astype(int))[compare].max(axis=-1)
    assert np.median(error) <= 2 and np.percentile(error, 90) <= 8


def test_crop_border_stays_put(face_model):
    params = frontal_params(face_model)
    ramp = np.linspace(0, 255, SIZE)
    photo = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0 + 0 * ramp[None, :]), -1)
    photo = photo.round().astype(np.uint8)
    warped, _ = profile_face(face_model, photo, params, math.radians(45), math.radians(10))
    assert warped.shape == photo.shape and warped.dtype == np.uint8
    for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):  # rows and columns at the crop border
        assert np.abs(warped[edge].astype(int) - photo[edge]).mean() < 3
    assert np.abs(warped.astype(int) - photo).mean() > 5  # while the inside moved
