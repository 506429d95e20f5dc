"""The normalized frame in which the CPR aligner works (paper §2.3: p0 = [0, 0, 0, 1, 0, 0], α0 = 0).

The paper leaves the frame open. Here it is the crop's pixel frame moved and scaled so that p0 is the crop
policy's canonical face: the mean shape, frontal, filling the tight 68-landmark box that the crop policy
(cprfa.data.crop) puts at the centre of a crop of side ``size``. One normalized unit is one model unit (cm)
of that face; a face of the usual size has s ≈ 1 and t a few units from 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprfa.data.crop import CROP_ENLARGE, CROP_SHIFT_UP
from cprfa.model.face_model import FaceModel
from cprfa.model.projection import pose_from_box


@dataclass(frozen=True)
class NormalizedFrame:
    """Crop pixel = origin + unit × normalized point; parameters follow (s_crop = unit·s, t_crop = origin +
    unit·t)."""

    origin: tuple[float, float]
    unit: float

    @classmethod
    def for_crop(cls, model: FaceModel, size: int) -> NormalizedFrame:
        side = size / CROP_ENLARGE
        centre_v = size / 2 + CROP_SHIFT_UP * side
        box = torch.tensor([[size / 2 - side / 2, centre_v - side / 2, size / 2 + side / 2, centre_v + side / 2]],
                           dtype=torch.float64)
        pose = pose_from_box(model, box)[0]
        return cls((float(pose[4]), float(pose[5])), float(pose[3]))

    def points_to_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Crop pixels -> normalized. Shape: (..., 2) -> (..., 2)."""
        return (points - points.new_tensor(self.origin)) / self.unit

    def points_from_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Normalized -> crop pixels. Shape: (..., 2) -> (..., 2)."""
        return points * self.unit + points.new_tensor(self.origin)

    def params_to_frame(self, params: torch.Tensor) -> torch.Tensor:
        """Crop-pixel parameters -> normalized. Shape: (B, P) -> (B, P)."""
        out = params.clone()
        out[:, 3] = params[:, 3] / self.unit
        out[:, 4:6] = self.points_to_frame(params[:, 4:6])
        return out

    def params_from_frame(self, params: torch.Tensor) -> torch.Tensor:
        """Normalized parameters -> crop pixels. Shape: (B, P) -> (B, P)."""
        out = params.clone()
        out[:, 3] = params[:, 3] * self.unit
        out[:, 4:6] = self.points_from_frame(params[:, 4:6])
        return out
