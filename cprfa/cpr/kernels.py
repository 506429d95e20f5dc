"""Convolutional Point-set Representations (paper §2.2; DESIGN.md "CPR kernels").

A CPR turns an ordered point set into matrices a CNN can read: entry (i, j) of a channel relates vertex i to
vertex j (and, for Λrxy, to k, the vertex after j in the channel's order, cyclically). Every function here is
batched over faces and channels and vectorized over vertex pairs; a vertex that is not observed zeroes every
entry it takes part in. Points are (B, K, n, 2) pixel positions of the K channels' n vertices, ``detected``
(B, K, n) bool; ``gather_channels`` makes them from per-vertex arrays and a selection.

| CPR | entry (i, j) | network input |
| --- | --- | --- |
| Λt | y^O_i − y^G_j (x and y) | used directly; closed-form step: the mean of its non-zero entries |
| Λs | ‖y_i − y_j‖ within one set | Λs^G / Λs^O where both are non-zero, else 0 (capped: below) |
| Λrz | (y_i × y_j) / (‖y_i‖ ‖y_j‖) on points centred on the set's observed centroid | Λrz^G − Λrz^O |
| Λrxy | û(y_i − y_j) · û(y_j − y_k) | Λrxy^G − Λrxy^O |

One finding, kept as a documented deviation for the regressor's input: Λrz as tabled is built within one set
from centred points, so it is invariant to rotating that set about its centroid — Λrz^G − Λrz^O is exactly
zero when Y^O is Y^G turned in the image plane (a test shows it), and cannot tell the rz regressor the angle
it must find. ``rotation_z_input`` therefore compares the sets across: entry (i, j) = ŷ^G_i × ŷ^O_j −
ŷ^G_i × ŷ^G_j on centred unit vectors, which keeps the invariances the table asks of Λrz (translation and
scale of either set) and equals sin(θ + angle_ij) − sin(angle_ij) for a turn by θ.
"""

from __future__ import annotations

import math

import torch

EPSILON = 1e-9


def gather_channels(values: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Per-vertex values in channel order. Shape: values (B, N, ...), channels (K, n) -> (B, K, n, ...)."""
    picked = values.index_select(1, channels.reshape(-1))
    return picked.reshape(values.shape[0], *channels.shape, *values.shape[2:])


def pair_mask(detected: torch.Tensor) -> torch.Tensor:
    """(B, K, n) -> (B, K, n, n): both vertices of the pair observed."""
    return detected[..., :, None] & detected[..., None, :]


def centred(points: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """Points minus the centroid of the observed ones of their channel. Shape: (B, K, n, 2) -> (B, K, n, 2)."""
    weight = detected[..., None].to(points.dtype)
    centroid = (points * weight).sum(dim=2, keepdim=True) / weight.sum(dim=2, keepdim=True).clamp(min=1)
    return points - centroid


def translation_cpr(observed: torch.Tensor, generated: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """Λt: entry (i, j) = y^O_i − y^G_j. Shape: (B, K, n, 2) twice, (B, K, n) -> (B, K, 2, n, n) as [x, y]."""
    difference = observed[..., :, None, :] - generated[..., None, :, :]  # (B, K, n, n, 2)
    difference = difference * pair_mask(detected)[..., None]
    return difference.permute(0, 1, 4, 2, 3)


def translation_step(observed: torch.Tensor, generated: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """The closed-form translation update: the mean of Λt's entries over observed pairs (= the mean observed
    position minus the mean generated position of the same vertices). Shape: ... -> (B, 2)."""
    weight = detected[..., None].to(observed.dtype)
    count = weight.sum(dim=(1, 2)).clamp(min=1)
    return ((observed - generated) * weight).sum(dim=(1, 2)) / count


def scale_cpr(points: torch.Tensor, detected: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Λs: entry (i, j) = ‖y_i − y_j‖. ``pairs``: ``pair_mask(detected)`` when the caller has it.
    Shape: (B, K, n, 2), (B, K, n) -> (B, K, n, n)."""
    return masked(_distances(points), pair_mask(detected) if pairs is None else pairs)


def scale_input(generated: torch.Tensor, observed: torch.Tensor, detected: torch.Tensor,
                cap: float = math.inf) -> torch.Tensor:
    """Λs^G / Λs^O where both entries are non-zero, else 0, at most ``cap``.
    Shape: points (B, K, n, 2) twice -> (B, K, n, n)."""
    return scale_ratio(scale_cpr(generated, detected), inverse_scale(scale_cpr(observed, detected)), cap)


def scale_ratio(generated_cpr: torch.Tensor, inverse_observed: torch.Tensor, cap: float = math.inf) -> torch.Tensor:
    """``scale_input`` from Λs^G and ``inverse_scale(Λs^O)`` (an alignment computes the latter once).
    Shape: (B, K, n, n) twice -> (B, K, n, n)."""
    ratio = masked(generated_cpr, inverse_observed)
    if math.isinf(cap):
        return ratio
    return ratio.clamp(max=cap) if ratio.requires_grad else ratio.clamp_(max=cap)


def inverse_scale(observed_cpr: torch.Tensor) -> torch.Tensor:
    """1 / Λs^O where it is non-zero, else 0: the observed side of ``scale_input``, which an alignment computes
    once (an entry where Λs^G is 0 stays 0 in the product). Shape: (B, K, n, n) -> (B, K, n, n)."""
    return (observed_cpr > EPSILON) / observed_cpr.clamp(min=EPSILON)


def rotation_z_cpr(points: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """Λrz: entry (i, j) = (y_i × y_j) / (‖y_i‖ ‖y_j‖), the sine of the angle from y_i to y_j, on points
    centred on their channel's observed centroid. Shape: (B, K, n, 2), (B, K, n) -> (B, K, n, n)."""
    unit = _unit(centred(points, detected))
    return _cross(unit, unit) * pair_mask(detected)


def rotation_z_input(generated: torch.Tensor, observed: torch.Tensor, detected: torch.Tensor,
                     pairs: torch.Tensor | None = None) -> torch.Tensor:
    """The rz regressor's input (module docstring): ŷ^G_i × ŷ^O_j − ŷ^G_i × ŷ^G_j on unit vectors of points
    centred on their own set's observed centroid. Shape: points (B, K, n, 2) twice -> (B, K, n, n)."""
    unit_g = _unit(centred(generated, detected))
    unit_o = _unit(centred(observed, detected))
    # one product: ŷ^G_i × (ŷ^O_j − ŷ^G_j)
    return masked(_cross(unit_g, unit_o - unit_g), pair_mask(detected) if pairs is None else pairs)


def rotation_xy_cpr(points: torch.Tensor, detected: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Λrxy: entry (i, j) = û(y_i − y_j) · û(y_j − y_k), k the vertex after j in channel order (cyclic); 0 when
    i, j or k is not observed. ``valid``: ``rotation_xy_mask(detected)`` when the caller has it.
    Shape: (B, K, n, 2), (B, K, n) -> (B, K, n, n)."""
    points = centred(points, detected)
    step = _unit(points - torch.roll(points, shifts=-1, dims=2))  # û(y_j − y_k), (B, K, n, 2)
    # (y_i − y_j) · û_j = y_i · û_j − y_j · û_j, divided by ‖y_i − y_j‖
    along = (points * step).sum(dim=-1)[..., None, :].flatten(0, 1)
    projection = torch.baddbmm(along, points.flatten(0, 1), step.transpose(-1, -2).flatten(0, 1), beta=-1)
    projection = projection.view(*points.shape[:-1], points.shape[-2])
    distances = _distances(points)
    valid = rotation_xy_mask(detected) if valid is None else valid
    if points.requires_grad:
        return (projection / distances.clamp(min=EPSILON)).clamp(-1.0, 1.0) * valid
    return projection.div_(distances.clamp_(min=EPSILON)).clamp_(-1.0, 1.0).mul_(valid)  # see ``masked``


def rotation_xy_mask(detected: torch.Tensor) -> torch.Tensor:
    """The entries of Λrxy that exist: i, j and k observed, i ≠ j (û(0) = 0). Shape: (B, K, n) -> (B, K, n, n)."""
    valid = pair_mask(detected) & torch.roll(detected, shifts=-1, dims=2)[..., None, :]
    return valid & (torch.eye(detected.shape[2], device=detected.device) == 0)


def masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values · mask``, written into ``values`` (a fresh result of its caller) when no gradient flows through
    it: an aligner's step then makes one full-size (B, K, n, n) temporary fewer."""
    return values * mask if values.requires_grad else values.mul_(mask)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp(min=EPSILON)


def _cross(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Entry (i, j) = first_i × second_j (2D cross product). Shape: (..., n, 2) twice -> (..., n, n)."""
    turned = torch.stack([second[..., 1], -second[..., 0]], dim=-1)
    return first @ turned.transpose(-1, -2)


def _distances(points: torch.Tensor) -> torch.Tensor:
    """Entry (i, j) = ‖y_i − y_j‖, from the coordinate differences themselves (exact, and exactly 0 on the
    diagonal, unlike the faster-looking expansion by matrix products, which loses precision to cancellation).
    With gradients: ``torch.cdist``, whose gradient is zero where a distance is 0; without (inference): the
    same differences squared in place, about three times faster. Shape: (..., n, 2) -> (..., n, n)."""
    if points.requires_grad:
        return torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    x, y = points[..., 0].contiguous(), points[..., 1].contiguous()  # broadcasting strided views: 4× slower
    dx, dy = x[..., :, None] - x[..., None, :], y[..., :, None] - y[..., None, :]
    return dx.mul_(dx).addcmul_(dy, dy).sqrt_()
