"""The baselines of the paper's ablation (§3.4) that need no training, on point correspondences.

- ``pnp``: pose only, the mean shape's vertices matched to 2D points by a weak-perspective PnP (Levenberg–
  Marquardt on rotation, scale and translation). On 68 detected landmarks it is "PnP-FAN3D-68"; on the
  detected DAFI vertices it is "PnP + DAFI(512)".
- ``online_optimization``: pose, identity and expression fitted to all correspondences with Gaussian priors
  and an optional robust loss: the DAFI-based on-line optimization of the paper's Fig. 1a (LDFC-like).

Both take per-face vertex ids, so a DAFI's detected vertices (different for every face) feed them directly;
missing correspondences get weight 0.
"""

from __future__ import annotations

import torch

from cprfa._checks import check_shape
from cprfa.fitting.optimize import FitOptions, fit_points
from cprfa.model.face_model import FaceModel


def pnp(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor, weights: torch.Tensor | None = None,
        iterations: int = 20) -> torch.Tensor:
    """Weak-perspective pose of the mean shape from 2D–3D correspondences.

    Shape: points (B, M, 2) pixels, vertex_ids (B, M) -> params (B, P) with α = 0."""
    options = FitOptions(pose_iterations=iterations, iterations=0, fit_identity=False, fit_expression=False)
    return _fit(model, points, vertex_ids, weights, options)


def online_optimization(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor,
                        weights: torch.Tensor | None = None, options: FitOptions | None = None) -> torch.Tensor:
    """Pose, identity and expression from 2D–3D correspondences (projected Levenberg–Marquardt, priors,
    optional robust loss via ``options``). Shape: points (B, M, 2), vertex_ids (B, M) -> params (B, P)."""
    return _fit(model, points, vertex_ids, weights, options or FitOptions())


def _fit(model, points, vertex_ids, weights, options):
    vertex_ids = torch.as_tensor(vertex_ids, dtype=torch.long)
    check_shape("vertex_ids", vertex_ids, (points.shape[0], points.shape[1]))
    return fit_points(model, points, lambda params: vertex_ids, weights, options)
