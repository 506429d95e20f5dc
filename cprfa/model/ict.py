"""Build the default face model from the ICT-FaceKit Light model (MIT licence).

Choices, fixed here for every later stage:

- Only the face area, vertices [0, 9409) of ICT-FaceKit Light, is kept; head and neck are dropped so that the
  bundled model stays small. Vertex ids inside the face area are unchanged, so ICT's landmark and jawline ids
  stay exact, and no decimation is done.
- Every quad whose four corners lie in the face area is split into two triangles along its (0, 2) diagonal;
  quads with a repeated corner give one triangle. Windings are flipped, if needed, so that triangles are
  counter-clockwise seen from the front (normals out of the face).
- The two eye openings (where ICT's separate eyeball meshes sit) are closed by triangle strips across them,
  so that the rendered PNCC labels the eyes too, as 300W-LP's BFM does; no vertex is added. The mouth stays
  open: what shows through it (teeth, tongue) is not face surface.
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


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """The mesh's boundary loops, each a vertex-id array ordered along the triangles' winding."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    _, inverse, counts = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True, return_counts=True)
    following = dict(edges[counts[inverse.ravel()] == 1].tolist())
    loops, seen = [], set()
    for start in following:
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        while (vertex := following[loop[-1]]) != start:
            loop.append(vertex)
            seen.add(vertex)
        loops.append(np.array(loop))
    return loops


def cap_loops(triangles: np.ndarray, loops: list[np.ndarray], vertices: np.ndarray) -> np.ndarray:
    """Close each boundary loop by a strip zigzagging between its two sides from its leftmost (min x) vertex,
    with every cap triangle facing the camera in the frontal view. Strips keep the triangles narrow (a fan
    from one vertex would give long slivers that are slow to rasterize).
    Shape: (T, 3) -> (T + Σ(len(loop) - 2), 3)."""
    caps = []
    for loop in loops:
        loop = np.roll(loop, -int(vertices[loop, 0].argmin()))
        low, high = 1, len(loop) - 1
        caps.append([loop[0], loop[low], loop[high]])
        while high - low > 1:
            if (high - low) % 2:
                caps.append([loop[low], loop[low + 1], loop[high]])
                low += 1
            else:
                caps.append([loop[low], loop[high - 1], loop[high]])
                high -= 1
    caps = np.array(caps)
    a, b, c = (vertices[caps[:, k]] for k in range(3))
    backwards = np.cross(b - a, c - a)[:, 2] < 0
    caps[backwards] = caps[backwards][:, [0, 2, 1]]
    return np.concatenate([triangles, caps])


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
    loops = boundary_loops(triangles)
    centres = np.array([mean[loop].mean(axis=0) for loop in loops])
    eye_loops = []
    for eye in (slice(36, 42), slice(42, 48)):  # the opening nearest each eye's six landmarks
        distance = np.linalg.norm(centres - mean[ict["landmarks68"][eye]].mean(axis=0), axis=1)
        if distance.min() > 1.5:
            raise ModelFileError(f"{npz_path}: no eye opening found near landmarks {eye.start}-{eye.stop - 1}")
        eye_loops.append(loops[int(distance.argmin())])
    triangles = cap_loops(triangles, eye_loops, mean)
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
