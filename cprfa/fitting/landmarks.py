"""Fit the face model to 68 2D landmarks (300-W convention), with silhouette jaw correspondences.

This is how the project turns real 300-W annotations into pseudo-dense ground truth (the way 300W-LP was
made) and, on detected landmarks, it is the "PnP-68"-style baseline of the paper's ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprfa._checks import check_shape
from cprfa.fitting.optimize import FitOptions, fit_points
from cprfa.model.contour import landmarks_2d, silhouette_landmark_ids
from cprfa.model.face_model import FaceModel
from cprfa.model.projection import landmarks_3d


@dataclass(frozen=True)
class LandmarkFit:
    """Result of ``fit_landmarks`` for B faces.

    Attributes:
        params: (B, P) fitted parameters (ParamLayout).
        landmarks: (B, 68, 2) the fitted model's landmarks in the 2D (300-W) convention.
        error: (B,) mean distance between fitted and target landmarks (those with weight > 0), in pixels.
    """

    params: torch.Tensor
    landmarks: torch.Tensor
    error: torch.Tensor


def fit_landmarks(
    model: FaceModel,
    points: torch.Tensor,
    weights: torch.Tensor | None = None,
    options: FitOptions | None = None,
    contour: bool = True,
) -> LandmarkFit:
    """Fit pose, identity and expression to 68 landmarks per face.

    With ``contour`` the jaw points 0–7 and 9–16 match the silhouette vertex of their contour line, chosen
    anew at every iteration (cprfa.model.contour); without it all 68 points stay on fixed vertices (the 3D
    convention). ``weights`` (B, 68): 0 marks a missing landmark.
    Shape: points (B, 68, 2) pixels -> LandmarkFit."""
    check_shape("points", points, (None, 68, 2))
    points = torch.as_tensor(points, dtype=torch.float64)
    if contour:
        def vertex_for(params):
            return silhouette_landmark_ids(model, params)
    else:
        fixed = torch.as_tensor(model.landmarks68).expand(len(points), -1)

        def vertex_for(params):
            return fixed
    params = fit_points(model, points, vertex_for, weights, options)
    fitted = (landmarks_2d(model, params) if contour else landmarks_3d(model, params))[..., :2]
    valid = torch.ones(points.shape[:2], dtype=torch.bool) if weights is None else torch.as_tensor(weights) > 0
    distance = torch.where(valid, (fitted - points).norm(dim=-1), 0.0)
    error = distance.sum(dim=1) / valid.sum(dim=1)
    return LandmarkFit(params=params, landmarks=fitted, error=error)
