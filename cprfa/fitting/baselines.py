"""The baselines of the paper's ablation (§3.4) that need no training, on point correspondences.

- ``pnp``: pose only, the mean shape's vertices matched to 2D points by a weak-perspective PnP (Levenberg–
  Marquardt on rotation, scale and translation). On 68 detected landmarks it is "PnP-FAN3D-68"; on the
  detected DAFI vertices it is "PnP + DAFI(512)".
- ``online_optimization``: pose, identity and expression fitted to all correspondences with Gaussian priors
  and an optional robust loss: the DAFI-based on-line optimization of the paper's Fig. 1a (LDFC-like).
- ``online_optimization_with_landmarks``: the same with 68 sparse landmarks (2D convention: the jaw points
  follow the silhouette) added to the DAFI correspondences — an on-line counterpart of the paper's fusion of a
  dense and a sparse source. The two sources weigh ``landmark_share`` and 1 − ``landmark_share`` in total.

Both take per-face vertex ids, so a DAFI's detected vertices (different for every face) feed them directly;
missing correspondences get weight 0.
"""

from __future__ import annotations

import torch

from cprfa._checks import check_shape
from cprfa.errors import InvalidInputError
from cprfa.fitting.optimize import FitOptions, fit_points
from cprfa.model.contour import silhouette_landmark_ids
from cprfa.model.face_model import FaceModel


def pnp(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor, weights: torch.Tensor | None = None,
        iterations: int = 20) -> torch.Tensor:
    """Weak-perspective pose of the mean shape from 2D–3D correspondences.

    Shape: points (B, M, 2) pixels, vertex_ids (B, M) -> params (B, P) with α = 0."""
    options = FitOptions(pose_iterations=iterations, iterations=0, fit_identity=False, fit_expression=False)
    return _fit(model, points, vertex_ids, weights, options)


def online_optimization(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor,
                        weights: torch.Tensor | None = None, options: FitOptions | None = None,
                        initial: torch.Tensor | None = None) -> torch.Tensor:
    """Pose, identity and expression from 2D–3D correspondences (projected Levenberg–Marquardt, priors,
    optional robust loss via ``options``), from ``initial`` parameters (default: the mean face on the points'
    box). Shape: points (B, M, 2), vertex_ids (B, M), initial (B, P) -> params (B, P)."""
    return _fit(model, points, vertex_ids, weights, options or FitOptions(), initial)


def _fit(model, points, vertex_ids, weights, options, initial=None):
    vertex_ids = torch.as_tensor(vertex_ids, dtype=torch.long)
    check_shape("vertex_ids", vertex_ids, (points.shape[0], points.shape[1]))
    return fit_points(model, points, lambda params: vertex_ids, weights, options, initial)


def online_optimization_with_landmarks(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor,
                                       weights: torch.Tensor, landmarks: torch.Tensor, landmark_share: float = 0.5,
                                       options: FitOptions | None = None,
                                       initial: torch.Tensor | None = None,
                                       landmark_robust_scale: float | None = None,
                                       landmark_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pose, identity and expression from DAFI correspondences plus 68 landmarks (2D convention), from
    ``initial`` parameters (default: the mean face placed on the points' box). ``landmark_robust_scale``: the
    robust loss's scale on the landmarks (a fraction of the box size; default ``options.robust_scale``, the
    vertices' own). ``landmark_weights`` in [0, 1] scale each landmark's part of ``landmark_share`` (default:
    all 1), so that a hidden or uncertain landmark weighs less.

    Shape: points (B, M, 2), vertex_ids (B, M), weights (B, M), landmarks (B, 68, 2), initial (B, P),
    landmark_weights (B, 68) -> params (B, P)."""
    if not 0.0 <= landmark_share < 1.0:
        raise InvalidInputError(f"landmark_share must lie in [0, 1), got {landmark_share}")
    vertex_ids = torch.as_tensor(vertex_ids, dtype=torch.long)
    check_shape("vertex_ids", vertex_ids, (points.shape[0], points.shape[1]))
    check_shape("landmarks", landmarks, (points.shape[0], 68, 2))
    weights = weights.to(torch.float64)
    dense = (1.0 - landmark_share) * weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    sparse = torch.full((len(points), 68), landmark_share / 68, dtype=torch.float64)
    if landmark_weights is not None:
        check_shape("landmark_weights", landmark_weights, (points.shape[0], 68))
        sparse = sparse * landmark_weights.to(torch.float64).clamp(0.0, 1.0)
    scale = points.shape[1] + 68  # keep the data term's weight per point near 1, as the priors were tuned
    all_points = torch.cat([points.to(torch.float64), landmarks.to(torch.float64)], dim=1)
    all_weights = torch.cat([dense, sparse], dim=1) * scale

    def vertex_for(params):
        return torch.cat([vertex_ids, silhouette_landmark_ids(model, params)], dim=1)

    options = options or FitOptions()
    scales = torch.full((all_points.shape[1],), options.robust_scale, dtype=torch.float64)
    if landmark_robust_scale is not None:
        scales[-68:] = landmark_robust_scale
    return fit_points(model, all_points, vertex_for, all_weights, options, initial, scales)
