import math

import numpy as np
import torch

from cprfa.cpr.kernels import (
    gather_channels,
    rotation_xy_cpr,
    rotation_z_cpr,
    rotation_z_input,
    scale_cpr,
    scale_input,
    translation_cpr,
    translation_step,
)


def random_sets(seed=0, batch=2, channels=3, n=16):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(batch, channels, n, 2, generator=generator, dtype=torch.float64) * 20 + 64
    detected = torch.rand(batch, channels, n, generator=generator) > 0.3
    return points, detected


def turn(points, angle, centre=64.0):
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                            dtype=points.dtype)
    return (points - centre) @ rotation.T + centre


def test_invariances_of_the_kernels():
    points, detected = random_sets()
    shift = torch.tensor([13.0, -7.5], dtype=torch.float64)
    scaled = (points - 64) * 1.7 + 64
    turned = turn(points, 0.4)
    close = lambda a, b: torch.allclose(a, b, atol=1e-9)
    assert close(scale_cpr(points + shift, detected), scale_cpr(points, detected))
    assert close(rotation_z_cpr(points + shift, detected), rotation_z_cpr(points, detected))
    assert close(rotation_z_cpr(scaled, detected), rotation_z_cpr(points, detected))
    for moved in (points + shift, scaled, turned):
        assert close(rotation_xy_cpr(moved, detected), rotation_xy_cpr(points, detected))
    # and what they are sensitive to
    assert not close(scale_cpr(scaled, detected), scale_cpr(points, detected))
    assert not close(rotation_xy_cpr(points * torch.tensor([1.0, 0.6], dtype=torch.float64), detected),
                     rotation_xy_cpr(points, detected))


def test_missing_vertices_zero_every_entry_they_take_part_in():
    points, detected = random_sets(1)
    for kernel in (scale_cpr, rotation_z_cpr, rotation_xy_cpr):
        values = kernel(points, detected)
        assert (values[~detected] == 0).all() and (values.transpose(-1, -2)[~detected] == 0).all()
    following_missing = torch.roll(~detected, shifts=-1, dims=2)  # Λrxy's k = the vertex after j
    assert (rotation_xy_cpr(points, detected).transpose(-1, -2)[following_missing] == 0).all()
    lam = translation_cpr(points, points + 1, detected)
    assert lam.shape == (2, 3, 2, 16, 16) and (lam.permute(0, 1, 3, 4, 2)[~detected] == 0).all()
    # an unobserved vertex's position does not matter
    moved = points.clone()
    moved[~detected] += 100.0
    for kernel in (scale_cpr, rotation_z_cpr, rotation_xy_cpr):
        assert torch.allclose(kernel(moved, detected), kernel(points, detected))


def test_network_inputs_carry_the_parameter_they_drive():
    generated, detected = random_sets(2)
    shift = torch.tensor([5.0, -3.0], dtype=torch.float64)
    assert torch.allclose(translation_step(generated + shift, generated, detected), shift.expand(2, 2))
    scaled = (generated - 64) * 0.8 + 64
    ratio = scale_input(generated, scaled, detected)
    pairs = detected[..., :, None] & detected[..., None, :] & ~torch.eye(16, dtype=torch.bool)
    assert torch.allclose(ratio[pairs], torch.full_like(ratio[pairs], 1 / 0.8))
    assert torch.equal(scale_input(generated, scaled, detected, cap=4.0), ratio)  # the cap spares such ratios
    near = scaled.clone()
    near[:, :, 1] = near[:, :, 0] + 0.01  # a pair of vertices nearly on top of each other in Y^O
    capped, uncapped = scale_input(generated, near, detected, cap=4.0), scale_input(generated, near, detected)
    assert capped.max() == 4.0 and uncapped.max() > 100
    assert torch.equal(capped[uncapped < 4.0], uncapped[uncapped < 4.0])
    # Λrz^G − Λrz^O is blind to an in-plane turn of the whole set; the cross-set input is not
    turned = turn(generated, 0.3)
    assert torch.allclose(rotation_z_cpr(generated, detected) - rotation_z_cpr(turned, detected),
                          torch.zeros(2, 3, 16, 16, dtype=torch.float64), atol=1e-9)
    signal = rotation_z_input(generated, turned, detected)
    assert signal.abs().max() > 0.2
    assert torch.allclose(rotation_z_input(generated, generated + shift, detected),
                          torch.zeros_like(signal), atol=1e-9)
    assert torch.allclose(rotation_z_input(generated, (turned - 64) * 2 + 64, detected), signal, atol=1e-9)


def test_gather_channels_follows_the_selection():
    values = torch.arange(20, dtype=torch.float64).reshape(1, 10, 2)
    channels = torch.tensor([[3, 1], [0, 9], [1, 9]])
    gathered = gather_channels(values, channels)
    assert gathered.shape == (1, 3, 2, 2)
    assert np.array_equal(gathered[0, :, :, 0].numpy(), 2 * channels.numpy())


def test_distances_are_exact_and_differentiable_where_points_coincide():
    points, detected = random_sets(n=8)
    points[:, :, 3] = points[:, :, 2]  # two vertices at the same place
    expected = torch.linalg.vector_norm(points[..., :, None, :] - points[..., None, :, :], dim=-1)
    both = detected[..., :, None] & detected[..., None, :]
    assert torch.allclose(scale_cpr(points, detected), expected * both, atol=1e-9)
    assert torch.equal(torch.diagonal(scale_cpr(points, detected), dim1=-2, dim2=-1), torch.zeros(2, 3, 8,
                                                                                                 dtype=points.dtype))
    without_gradient = rotation_xy_cpr(points, detected)  # the inference path
    points.requires_grad_(True)
    with_gradient = rotation_xy_cpr(points, detected)
    assert torch.allclose(with_gradient, without_gradient, atol=1e-12)
    assert torch.allclose(scale_cpr(points, detected), expected * both, atol=1e-9)
    (scale_cpr(points, detected).sum() + with_gradient.sum()).backward()
    assert torch.isfinite(points.grad).all()
