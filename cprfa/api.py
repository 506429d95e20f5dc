"""The user-facing Python API.

Posing the face model in a face box and drawing it over a photo: the PNCC (the DAFI the HS-U-Net predicts),
depth, the 68 landmarks, the mesh wireframe and the pose axes. Aligning real faces is ``cprfa.align``.
Angles are in degrees here (radians inside the package).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cprfa.errors import InvalidInputError
from cprfa.model.draw import blend, draw_landmarks, draw_pose_axes, draw_wireframe
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import ParamLayout, euler_to_rotation, image_vertices, pose_from_box
from cprfa.model.render import render_pncc


@dataclass(frozen=True)
class PosedModel:
    """The face model posed in an image.

    Attributes:
        params: (P,) parameter vector [pitch, yaw, roll (radians), scale, tx, ty, α_id..., α_exp...].
        rotation: (3, 3) model-to-camera rotation.
        vertices: (N, 3) image-space [u, v, depth] of every vertex (pixels; depth larger = nearer).
        landmarks: (68, 3) the fixed landmark vertices in image space.
        visible: (N,) bool vertex visibility.
        pncc: (H, W, 3) float32 PNCC image in [0, 1], 0 on the background.
        mask: (H, W) bool foreground.
        depth: (H, W) float32 depth, -inf on the background.
    """

    params: np.ndarray
    rotation: np.ndarray
    vertices: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    pncc: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def pose_model_in_box(
    image_size: tuple[int, int],
    box: tuple[float, float, float, float],
    pitch: float = 0.0,
    yaw: float = 0.0,
    roll: float = 0.0,
    expressions: dict[str, float] | None = None,
    model: FaceModel | None = None,
) -> PosedModel:
    """Pose the mean face at the given angles (degrees) so its 68 landmarks fill ``box`` = (x0, y0, x1, y1),
    and render it into an image of ``image_size`` = (height, width).

    ``expressions`` maps expression names (ARKit names for the default model) to weights."""
    model = model or default_face_model()
    height, width = image_size
    if height < 1 or width < 1:
        raise InvalidInputError(f"image size must be positive, got {image_size}")
    for name, angle, limit in (("pitch", pitch, 90), ("yaw", yaw, 180), ("roll", roll, 180)):
        if not -limit <= angle <= limit:
            raise InvalidInputError(f"{name} must lie in [-{limit}, {limit}] degrees, got {angle}")
    layout = ParamLayout.of(model)
    params = layout.initial(1, dtype=torch.float64)
    angles = torch.tensor([[math.radians(pitch), math.radians(yaw), math.radians(roll)]], dtype=torch.float64)
    params[:, layout.pose] = pose_from_box(model, torch.tensor([box], dtype=torch.float64), angles)
    for name, weight in (expressions or {}).items():
        if name not in model.expression_names:
            raise InvalidInputError(f"unknown expression '{name}'; the model has: {', '.join(model.expression_names)}")
        if model.expression_prior == "blendshape" and not 0.0 <= weight <= 1.0:
            raise InvalidInputError(f"blendshape weight of '{name}' must lie in [0, 1], got {weight}")
        params[0, layout.expression.start + model.expression_names.index(name)] = weight

    vertices = image_vertices(model, params).float()
    render = render_pncc(model, vertices, height, width)
    return PosedModel(
        params=params[0].numpy(),
        rotation=euler_to_rotation(angles)[0].numpy(),
        vertices=vertices[0].numpy(),
        landmarks=vertices[0, model.landmarks68].numpy(),
        visible=render.visible[0].numpy(),
        pncc=render.pncc[0].numpy(),
        mask=render.mask[0].numpy(),
        depth=render.depth[0].numpy(),
    )


def draw_posed_model(image: np.ndarray, posed: PosedModel, model: FaceModel | None = None) -> np.ndarray:
    """Overlay on an RGB uint8 image: the PNCC blended over the face, the front-facing wireframe, the 68
    landmarks (hidden ones hollow) and the pose axes at the nose tip. Returns a new image."""
    model = model or default_face_model()
    pncc_rgb = (posed.pncc * 255).round().astype(np.uint8)
    overlay = blend(image, pncc_rgb, posed.mask, alpha=0.45)
    overlay = draw_wireframe(overlay, posed.vertices, model.triangles, alpha=0.25)
    overlay = draw_landmarks(overlay, posed.landmarks[:, :2], visible=posed.visible[model.landmarks68])
    face_width = float(np.ptp(posed.landmarks[:, 0]))
    return draw_pose_axes(overlay, posed.rotation, posed.landmarks[30, :2], length=0.5 * face_width)
