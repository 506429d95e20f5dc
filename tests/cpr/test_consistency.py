import math

import torch

from cprfa.cpr.consistency import ConsistencyWeight, error_pool, path_multipliers, pool_order, residual_error
from cprfa.cpr.sparse import landmark_channels, synthetic_landmarks


def test_the_pool_is_the_first_kappa_share_of_each_face_detected_vertices():
    points = torch.arange(2 * 40 * 2, dtype=torch.float32).reshape(2, 40, 2)
    detected = torch.zeros(2, 40, dtype=torch.bool)
    detected[0, :20] = True
    detected[1, ::4] = True  # 10 vertices
    order = pool_order(40, torch.Generator().manual_seed(5))
    ids, positions, weight = error_pool(points, detected, 0.25, order)
    assert ids.shape == (2, 5) and weight.sum(dim=1).tolist() == [5, 3]  # ceil(0.25 · 20), ceil(0.25 · 10)
    for face in range(2):
        taken = ids[face][weight[face] > 0]
        assert detected[face, taken].all()
        expected = [int(v) for v in order if detected[face, v]][:len(taken)]
        assert taken.tolist() == expected
        assert torch.equal(positions[face][weight[face] > 0], points[face, taken])
    # a face's pool does not depend on the batch
    alone = error_pool(points[1:], detected[1:], 0.25, order)
    assert torch.equal(alone[0][0, :3], ids[1, :3])


def test_the_path_error_ignores_a_common_offset_and_padding():
    observed = torch.randn(3, 7, 2)
    weight = torch.ones(3, 7)
    weight[2, 4:] = 0
    generated = observed + torch.tensor([2.0, -1.0])
    assert torch.allclose(residual_error(generated, observed, weight), torch.zeros(3), atol=1e-6)
    generated = observed.clone()
    generated[:, 0] += 1.0
    generated[2, 5:] += 100.0  # padding does not count
    error = residual_error(generated, observed, weight)
    assert error[2] < 1.0 and torch.allclose(error[0], error[1])
    assert torch.allclose(path_multipliers(5), torch.arange(1, 11) / 5)


def test_beta_starts_at_one_and_stays_within_zero_and_two():
    network = ConsistencyWeight(5)
    errors = torch.rand(4, 10) * 10
    assert torch.equal(network(errors, torch.ones(4)), torch.ones(4, 1))
    torch.nn.init.normal_(network.layers[-1].weight, std=100.0)
    beta = network(errors * 1e6, torch.full((4,), 1e-9))  # extreme ratios stay finite
    assert torch.isfinite(beta).all() and (beta >= 0).all() and (beta <= 2).all()


def test_landmark_channels_and_the_synthetic_sparse_source():
    channels = landmark_channels()
    assert channels.shape == (3, 68) and torch.equal(channels[0], torch.arange(68))
    assert all(sorted(channel.tolist()) == list(range(68)) for channel in channels)
    assert torch.equal(channels, landmark_channels())  # fixed
    truth = torch.rand(400, 68, 2) * 100
    points, given = synthetic_landmarks(truth, torch.full((400,), 100.0), torch.Generator().manual_seed(0))
    absent = ~given.any(dim=1)
    assert math.isclose(absent.float().mean().item(), 0.2, abs_tol=0.06)
    assert (points[~given] == 0).all()
    error = (points - truth).norm(dim=-1)[given] / 100
    assert 0.01 < error.mean() < 0.06 and given[~absent].float().mean() > 0.85
