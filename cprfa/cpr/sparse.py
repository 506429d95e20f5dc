"""The sparse source of CPR fusion (paper §2.5): 68 landmarks as a second point set, CPR-C2.

Any 68-point source in the 300-W order and the 2D convention (jaw points on the silhouette, DESIGN.md) fits:
the HS-U-Net's landmark head by default, or the user's own points. A point the source does not give is a
missing vertex, zeroing its CPR entries as a missing DAFI vertex does; a face with no source at all has its
CPR-C2 branch switched off (``present`` False).

Channels: the DAFI's three channels split the face into halves, which 68 points are too few for. Each of the
three landmark channels holds all 68 points: channel 1 in the 300-W order, so that Λrxy's "next vertex"
walks along the jaw, brows, nose, eyes and lips; channels 2 and 3 in two fixed random orders (``SEED``),
relating distant points. The generated set Y^G puts the jaw points on the current fit's silhouette
(cprfa.model.contour), as the source does.

``synthetic_landmarks`` draws the source's failure modes for training: localization noise, points it
misses, and faces with no source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEED = 68
N_LANDMARKS = 68


def landmark_channels() -> torch.Tensor:
    """Indices into the 68 landmarks for the three channels (module docstring). Shape: -> (3, 68)."""
    generator = torch.Generator().manual_seed(SEED)
    return torch.stack([torch.arange(N_LANDMARKS),
                        torch.randperm(N_LANDMARKS, generator=generator),
                        torch.randperm(N_LANDMARKS, generator=generator)])


@dataclass(frozen=True)
class LandmarkSettings:
    absent: float = 0.2  # share of faces without a sparse source
    noise: tuple[float, float] = (0.01, 0.05)  # σ per coordinate × face size, uniform per face
    missing: tuple[float, float] = (0.0, 0.2)  # share of points the source does not give, uniform per face


def synthetic_landmarks(truth: torch.Tensor, face_size: torch.Tensor, generator: torch.Generator,
                        settings: LandmarkSettings = LandmarkSettings()) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse source drawn around true landmarks. Shape: truth (B, 68, 2), face_size (B,) -> points
    (B, 68, 2), given (B, 68) bool (all False for a face without a source)."""
    batch = len(truth)

    def per_face(bounds):
        low, high = bounds
        return low + (high - low) * torch.rand(batch, generator=generator)

    sigma = per_face(settings.noise) * face_size
    points = truth + sigma[:, None, None] * torch.randn(truth.shape, generator=generator, dtype=truth.dtype)
    given = torch.rand(batch, N_LANDMARKS, generator=generator) >= per_face(settings.missing)[:, None]
    present = torch.rand(batch, generator=generator) >= settings.absent
    given &= present[:, None]
    return points * given[..., None], given
