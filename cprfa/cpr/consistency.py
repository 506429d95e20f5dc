"""Consistency-aware parameter updating, CAPU (paper §2.4, Eqs. 5–7; Fig. 4a).

In round two a regressor's step Δ is not applied as it is: the reprojection error of a pool of detected DAFI
vertices is measured at 2M points of the path {Δ/M, 2Δ/M, …, 2Δ} (Eq. 6), and a small network maps the 2M
errors to β ∈ [0, 2] (Eq. 7); the update is β·Δ. The pool is κ (10 %) of *all* the vertices retrieved from
the DAFI, not only the C selected ones: the "wisdom of the crowd" that checks the step globally.

Choices the paper leaves open, made here:

- The pool of a face is the first κ share of its detected vertices in one fixed random order of the model's
  vertices (``POOL_SEED``), so a face gets the same pool alone or in a batch, and the pool is spread over
  the face. Training draws a fresh order per batch.
- The error at a path point is the mean distance between the pool's generated and observed positions after
  removing their mean offset: translation is re-fitted in closed form after every stage, so only what the
  step changes should count.
- The network reads log(e_i / e_0), e_0 being the error before the step: β depends on the shape of the error
  curve along the path, not on the face's size or on how far the fit still is from the points.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOL_SEED = 0
ERROR_FLOOR = 1e-4  # normalized units (about a micrometre of face): keeps the log ratios finite


def pool_order(n_vertices: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random order of the model's vertices (the fixed one of ``POOL_SEED`` without a generator). (N,)"""
    generator = generator or torch.Generator().manual_seed(POOL_SEED)
    return torch.randperm(n_vertices, generator=generator)


def error_pool(points: torch.Tensor, detected: torch.Tensor, kappa: float, order: torch.Tensor):
    """The κ share of each face's detected vertices taken in ``order``.

    Shape: points (B, N, 2), detected (B, N), order (N,) -> ids (B, E), positions (B, E, 2), weight (B, E)
    (1 for a pool vertex, 0 for padding), E the largest pool of the batch (at least 1)."""
    ordered = detected[:, order]
    wanted = torch.ceil(kappa * ordered.sum(dim=1)).long()  # (B,)
    rank = torch.cumsum(ordered.long(), dim=1)  # 1-based rank of each detected vertex in the order
    taken = ordered & (rank <= wanted[:, None])
    size = max(int(wanted.max()) if len(wanted) else 0, 1)
    # stable sort puts the taken vertices first, in order
    position = torch.argsort((~taken).to(torch.uint8), dim=1, stable=True)[:, :size]
    ids = order[position]
    weight = torch.gather(taken, 1, position).to(points.dtype)
    positions = torch.gather(points, 1, ids[..., None].expand(-1, -1, 2)) * weight[..., None]
    return ids, positions, weight


def path_multipliers(samples: int) -> torch.Tensor:
    """{1/M, 2/M, …, 2} (Eq. 6). Shape: -> (2M,)."""
    return torch.arange(1, 2 * samples + 1, dtype=torch.float32) / samples


def residual_error(generated: torch.Tensor, observed: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean distance between generated and observed pool positions once their mean offset is removed.

    Shape: generated (..., B, E, 2), observed (B, E, 2), weight (B, E) -> (..., B)."""
    residual = generated - observed
    total = weight.sum(dim=-1).clamp(min=1)
    offset = (residual * weight[..., None]).sum(dim=-2, keepdim=True) / total[..., None, None]
    distance = torch.linalg.vector_norm(residual - offset, dim=-1)
    return (distance * weight).sum(dim=-1) / total


class ConsistencyWeight(nn.Module):
    """Φ_DNN of Eq. 7: the 2M log error ratios along the path -> β = 2·sigmoid(MLP) ∈ [0, 2].

    The last layer starts at zero, so β starts at 1 (round one's plain step)."""

    def __init__(self, samples: int, hidden: int = 32):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2 * samples, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, errors: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Shape: errors (B, 2M) along the path, before (B,) at the current parameters -> β (B, 1)."""
        ratios = torch.log((errors + ERROR_FLOOR) / (before[:, None] + ERROR_FLOOR))
        return 2 * torch.sigmoid(self.layers(ratios.clamp(-math.log(1e3), math.log(1e3))))
