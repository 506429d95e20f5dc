"""Build the default face model from the ICT-FaceKit Light model (MIT licence).

Choices, fixed here for every later stage:

- Only the face area, vertices [0, 9409) of ICT-FaceKit Light, is kept; head and neck are dropped so that the
  bundled model stays small. Vertex ids inside the face area are unchanged, so ICT's landmark and jawline ids
  stay exact, and no decimation is done.
- Every quad whose four corners lie in the face area is split into two triangles along its (0, 2) diagonal;
  quads with a repeated corner give one triangle. Windings are flipped, if needed, so that triangles are
  counter-clockwise seen from the front (normals out of the face).
- All 100 identity modes and all 53 expression blendshapes are kept, unscaled (ICT ships identity modes already
  scaled to unit-variance weights). The committed file stores the bases as float16 (largest error 5e-4 cm).
- Jaw contour candidates are ICT's extended jawlines (17 vertices a side, from the ear to the chin).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cprfa.errors import ModelFileError
from cprfa.model.face_model import FaceModel

ICT_REQUIRED = ("neutral", "identity_modes", "expression_modes", "expression_names", "quads", "landmarks68",
                "right_jawline_extended", "left_jawline_extended", "face_area_vertices")
ICT_SOURCE = ("ICT-FaceKit Light, face area [0, 9409), (c) 2020 USC Institute for Creative Technologies, "
              "MIT licence; converted by cprfa.model.ict")


def quads_to_triangles(quads: np.ndarray) -> np.ndarray:
    """Split (Q, 4) quads into triangles (0, 1, 2) and (0, 2, 3); drop triangles with a repeated corner.

    Shape: (Q, 4) -> (T, 3) with T <= 2Q."""
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=0)
    distinct = (
        (triangles[:, 0] != triangles[:, 1])
        & (triangles[:, 1] != triangles[:, 2])
        & (triangles[:, 0] != triangles[:, 2])
    )
    return triangles[distinct]


def orient_outward(triangles: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Flip all windings if most triangle normals point into the face (z < 0 in the frontal view)."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    normal_z = np.cross(b - a, c - a)[:, 2]
    if (normal_z > 0).sum() < (normal_z < 0).sum():
        return triangles[:, [0, 2, 1]]
    return triangles


def build_ict_face_model(npz_path: str | Path) -> FaceModel:
    """Derive the default FaceModel from ``ict_face_model.npz`` (see the module docstring for the choices)."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise ModelFileError(f"ICT-FaceKit file not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            missing = [key for key in ICT_REQUIRED if key not in npz.files]
            if missing:
                raise ModelFileError(f"{npz_path} is not the ICT-FaceKit conversion: it lacks {missing}")
            ict = {key: npz[key] for key in ICT_REQUIRED}
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{npz_path} is not a readable .npz file: {error}") from None

    start, stop = (int(v) for v in ict["face_area_vertices"])
    if start != 0:
        raise ModelFileError(f"{npz_path}: expected the face area to start at vertex 0, got {start}")
    mean = ict["neutral"][:stop]
    quads = ict["quads"]
    quads = quads[(quads < stop).all(axis=1)]
    triangles = orient_outward(quads_to_triangles(quads), mean)
    return FaceModel(
        name="ICT-FaceKit Light (face area)",
        mean=mean,
        identity_basis=ict["identity_modes"][:, :stop],
        expression_basis=ict["expression_modes"][:, :stop],
        expression_names=tuple(ict["expression_names"]),
        expression_prior="blendshape",
        triangles=triangles,
        landmarks68=ict["landmarks68"],
        contour_right=ict["right_jawline_extended"],
        contour_left=ict["left_jawline_extended"],
        face_area=np.arange(stop),
        source=ICT_SOURCE,
    )
