"""Synthetic observed point sets Y^O with known parameters: the training and test data of the CPR aligner.

A face is drawn from the face model (identity ~ N(0, identity_std²) per mode; each expression blendshape
active with ``expression_probability``, weight U(0, 1)), posed with |yaw| up to ``yaw_max`` and realistic
pitch and roll (normal, clipped; the defaults match the spread of the 300-W training fits), scaled around 1 and
centred as the crop policy centres a face (jittered) in the normalized frame of cprfa.cpr.frame. Its vertices
are projected; the renderer says which the camera sees. Then the failure modes of real DAFIs (paper §2.1)
are drawn per face:

- occlusion: with ``occlusion_probability``, a rectangle (aspect 1:2 to 2:1) covering a fraction of the
  face's 68-landmark box drawn from ``occlusion`` hides every vertex inside it;
- drop-out: each remaining vertex is lost with a rate drawn from ``dropout``;
- noise: Gaussian localization error with σ drawn from ``noise`` (× the face size sqrt(w·h) of the landmark
  box);
- outliers: a fraction drawn from ``outliers`` of the detected vertices take the position of another visible
  vertex (a wrong vertex id, as a DAFI code retrieved to the wrong vertex).

Ranges are (low, high), uniform; a degenerate range fixes the value, as the test sets do. Everything is drawn
from one torch.Generator, so a seed gives the same point sets on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cprfa.cpr.frame import NormalizedFrame
from cprfa.model.face_model import FaceModel
from cprfa.model.projection import ParamLayout, image_vertices, landmarks_3d
from cprfa.model.render import render_pncc

RENDER_CHUNK = 64  # faces rendered at once (bounds the rasterizer's memory)


@dataclass(frozen=True)
class PointSetSettings:
    yaw_max: float = 90.0  # degrees
    pitch_std: float = 12.0
    pitch_max: float = 35.0
    roll_std: float = 8.0
    roll_max: float = 30.0
    scale: tuple[float, float] = (0.85, 1.3)  # log-uniform
    centre_jitter: float = 0.05  # × face size, normal
    identity_std: float = 1.0
    expression_probability: float = 0.3
    occlusion_probability: float = 0.5
    occlusion: tuple[float, float] = (0.1, 0.5)
    dropout: tuple[float, float] = (0.0, 0.5)
    noise: tuple[float, float] = (0.0, 0.03)
    outliers: tuple[float, float] = (0.0, 0.1)
    render_size: int = 128  # resolution of the visibility render


# The synthetic test set of the CPR benchmark: every face 30 % occluded with 5 % outliers (issue 6's target).
OCCLUDED_TEST = PointSetSettings(occlusion_probability=1.0, occlusion=(0.3, 0.3), dropout=(0.3, 0.3),
                                 noise=(0.01, 0.01), outliers=(0.05, 0.05))


@dataclass(frozen=True, eq=False)
class PointSets:
    """A batch of B synthetic faces over the model's N vertices, in the normalized frame.

    params (B, P) true parameters; points (B, N, 2) observed positions (0 where not detected); detected (B, N)
    bool; visible (B, N) bool (what the camera sees, before the failure modes); face_size (B,) sqrt(w·h) of
    the true 68-landmark box (3D convention)."""

    params: torch.Tensor
    points: torch.Tensor
    detected: torch.Tensor
    visible: torch.Tensor
    face_size: torch.Tensor


def synthetic_point_sets(model: FaceModel, count: int, seed: int,
                         settings: PointSetSettings = PointSetSettings()) -> PointSets:
    """``count`` synthetic faces and their observed point sets (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    params = sample_params(model, count, generator, settings)
    vertices = image_vertices(model, params)[..., :2]
    frame = NormalizedFrame.for_crop(model, settings.render_size)
    crop_vertices = image_vertices(model, frame.params_from_frame(params))
    visible = torch.cat([render_pncc(model, chunk, settings.render_size, settings.render_size).visible
                         for chunk in crop_vertices.split(RENDER_CHUNK)])
    landmarks = landmarks_3d(model, params)[..., :2]
    low, high = landmarks.amin(dim=1), landmarks.amax(dim=1)
    face_size = (high - low).prod(dim=1).sqrt()
    points, detected = corrupt(vertices, visible, low, high, generator, settings)
    return PointSets(params, points, detected, visible, face_size)


def sample_params(model: FaceModel, count: int, generator: torch.Generator,
                  settings: PointSetSettings = PointSetSettings()) -> torch.Tensor:
    """Random faces in the normalized frame. Shape: -> (count, P)."""
    layout = ParamLayout.of(model)
    params = layout.initial(count)

    def uniform(low, high):
        return low + (high - low) * torch.rand(count, generator=generator)

    def clipped_normal(std, limit):
        return (std * torch.randn(count, generator=generator)).clamp(-limit, limit)

    degrees = torch.stack([clipped_normal(settings.pitch_std, settings.pitch_max),
                           uniform(-settings.yaw_max, settings.yaw_max),
                           clipped_normal(settings.roll_std, settings.roll_max)], dim=1)
    params[:, :3] = torch.deg2rad(degrees)
    params[:, 3] = torch.exp(uniform(*(math.log(v) for v in settings.scale)))
    params[:, layout.identity] = settings.identity_std * torch.randn(count, layout.n_identity, generator=generator)
    active = torch.rand(count, layout.n_expression, generator=generator) < settings.expression_probability
    params[:, layout.expression] = active * torch.rand(count, layout.n_expression, generator=generator)

    # Centre the 68-landmark box where the crop policy puts the canonical face's, jittered.
    canonical = landmarks_3d(model, layout.initial(1))[0, :, :2]
    target = (canonical.amin(dim=0) + canonical.amax(dim=0)) / 2
    landmarks = landmarks_3d(model, params)[..., :2]
    low, high = landmarks.amin(dim=1), landmarks.amax(dim=1)
    size = (high - low).prod(dim=1).sqrt()
    jitter = settings.centre_jitter * size[:, None] * torch.randn(count, 2, generator=generator)
    params[:, 4:6] += target - (low + high) / 2 + jitter
    return params


def corrupt(vertices: torch.Tensor, visible: torch.Tensor, box_low: torch.Tensor, box_high: torch.Tensor,
            generator: torch.Generator, settings: PointSetSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The DAFI failure modes (module docstring) applied to projected vertices.

    Shape: vertices (B, N, 2), visible (B, N), box_low / box_high (B, 2) the landmark box -> points (B, N, 2),
    detected (B, N)."""
    batch, n = visible.shape

    def per_face(bounds):
        low, high = bounds
        return low + (high - low) * torch.rand(batch, generator=generator)

    box_size = box_high - box_low
    face_size = box_size.prod(dim=1).sqrt()
    # occlusion rectangle of a given share of the landmark box, inside it
    area = per_face(settings.occlusion) * box_size.prod(dim=1)
    aspect = torch.exp(per_face((-math.log(2), math.log(2))))
    width = torch.minimum((area * aspect).sqrt(), box_size[:, 0])
    height = torch.minimum(area / width.clamp(min=1e-9), box_size[:, 1])
    corner = box_low + (box_size - torch.stack([width, height], dim=1)) * torch.rand(batch, 2, generator=generator)
    far = corner + torch.stack([width, height], dim=1)
    inside = ((vertices >= corner[:, None]) & (vertices <= far[:, None])).all(dim=-1)
    occluded = inside & (torch.rand(batch, generator=generator) < settings.occlusion_probability)[:, None]

    dropped = torch.rand(batch, n, generator=generator) < per_face(settings.dropout)[:, None]
    detected = visible & ~occluded & ~dropped
    sigma = per_face(settings.noise) * face_size
    points = vertices + sigma[:, None, None] * torch.randn(batch, n, 2, generator=generator)

    # outliers: a detected vertex takes the position of a random visible vertex of its face
    outlier = detected & (torch.rand(batch, n, generator=generator) < per_face(settings.outliers)[:, None])
    weights = visible.float() + 1e-12
    donors = torch.multinomial(weights, n, replacement=True, generator=generator)
    donor_points = torch.gather(vertices, 1, donors[..., None].expand(-1, -1, 2))
    points = torch.where(outlier[..., None], donor_points, points)
    return points * detected[..., None], detected
