import numpy as np
import pytest
import torch

from cprfa.dafi.retrieval import VertexRetriever
from cprfa.errors import InvalidInputError
from cprfa.model.projection import image_vertices, pose_from_box
from cprfa.model.render import render_pncc


def rendered_face(face_model, size=96, yaw=0.3):
    params = torch.zeros(1, 6 + face_model.n_identity + face_model.n_expression, dtype=torch.float64)
    box = torch.tensor([[size * 0.2, size * 0.2, size * 0.8, size * 0.8]], dtype=torch.float64)
    params[:, :6] = pose_from_box(face_model, box, torch.tensor([[0.1, yaw, 0.0]], dtype=torch.float64))
    vertices = image_vertices(face_model, params)
    return render_pncc(face_model, vertices.float(), size, size), vertices[0, :, :2].numpy()


def test_retrieval_finds_exactly_the_vertices_of_a_rendered_dafi(face_model):
    render, positions = rendered_face(face_model)
    pncc, mask = render.pncc.numpy(), render.mask.numpy()
    observed = VertexRetriever(face_model)(pncc, mask)
    detected = observed.detected[0]
    # every detected vertex is visible in the render, and lies where the mesh puts it (within a pixel or so)
    assert detected.any() and render.visible[0].numpy()[detected].mean() > 0.97
    error = np.linalg.norm(observed.positions[0, detected] - positions[detected], axis=1)
    assert np.median(error) < 0.6 and np.percentile(error, 95) < 1.5
    # a vertex hit by several pixels sits at their mean; hits count the pixels
    assert observed.hits[0].sum() <= mask.sum() and (observed.hits[0][detected] >= 1).all()
    assert not observed.positions[0, ~detected].any()
    # the rendered code of a pixel matched exactly is a vertex code: pixels at a vertex's code are found
    codes = face_model.pncc[None, None, :50].astype(np.float32)  # a 1 × 50 "image" of 50 vertex codes
    exact = VertexRetriever(face_model)(codes, np.ones((1, 1, 50), bool))
    assert np.flatnonzero(exact.detected[0]).tolist() == list(range(50))
    assert np.allclose(exact.positions[0, :50], np.stack([np.arange(50) + 0.5, np.full(50, 0.5)], 1))


def test_codes_far_from_every_vertex_are_rejected_and_batches_are_independent(face_model):
    render, _ = rendered_face(face_model)
    pncc, mask = render.pncc.numpy(), render.mask.numpy()
    noisy = np.clip(pncc + 0.05, 0, 1)  # 0.087 away in code space: no vertex that close for most pixels
    observed = VertexRetriever(face_model)(np.concatenate([pncc, noisy, pncc]), np.concatenate([mask] * 3))
    assert observed.detection_rate[1] < 0.2 * observed.detection_rate[0]
    assert np.array_equal(observed.positions[0], observed.positions[2])
    half = VertexRetriever(face_model)(pncc, mask, pixel_size=2.0)
    assert np.allclose(half.positions, 2 * observed.positions[:1])
    offset = np.random.default_rng(0).normal(size=(face_model.n_vertices, 2))  # a calibration: moves the found
    calibrated = VertexRetriever(face_model)(pncc, mask, offset=offset)
    detected = observed.detected[:1, :, None]
    assert np.allclose(calibrated.positions, observed.positions[:1] - offset * detected, atol=1e-4)
    with pytest.raises(InvalidInputError):
        VertexRetriever(face_model)(pncc, mask, offset=offset[:10])
    with pytest.raises(InvalidInputError):
        VertexRetriever(face_model)(pncc[0], mask[0])
