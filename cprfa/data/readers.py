"""Readers for landmark data sets: 300-W ``.pts`` files and folders, and 300W-LP / AFLW2000-3D ``.mat`` files.

Every landmark this module returns is in cprfa's pixel convention: the origin is the top-left CORNER of the
image, x to the right and y down, so pixel (row i, column j) covers [j, j + 1] x [i, i + 1] and has its centre at
(j + 0.5, i + 0.5); an image W pixels wide spans x in [0, W].

Both data sets store 1-based pixel centres, MATLAB style (pixel (row i, column j), counted from 0, has its centre
at (j + 1, i + 1)), so both go through ``from_one_based`` (subtract 0.5) on reading and nothing else converts:

- 300-W ``.pts``: 1-based by the common reading of the format (menpo, iBUG's own library, subtracts 1 to get
  0-based centres: "landmarks on a 480x480 image are in the range [1-480]"), and so documented for
  /work/shared/data/300w. On its 1537 faces, ``value - 0.5`` keeps every landmark inside [0, W] x [0, H], while
  raw values overshoot W by up to 0.44 and ``value - 1`` falls below 0 by up to 0.42.
- 300W-LP and AFLW2000-3D were made with 3DDFA's MATLAB code (fitted to the 1-based 300-W annotations), which
  maps its model frame to the image as ``ProjectVertex(2,:) = height + 1 - ProjectVertex(2,:)``, MATLAB pixel
  indices; 3DDFA's Python port keeps ``std_size + 1 - y``. (face3d's ``h - y - 1`` is its own 0-based choice.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from cprfa.errors import InvalidInputError

N_LANDMARKS = 68
ONE_BASED_OFFSET = 0.5  # cprfa coordinate = 1-based pixel-centre coordinate - ONE_BASED_OFFSET
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def from_one_based(points: np.ndarray) -> np.ndarray:
    """1-based pixel-centre coordinates (300-W ``.pts``, MATLAB) -> cprfa pixels, as a new float64 array.

    A 1-based file puts the centre of pixel (row i, col j) at (j + 1, i + 1); cprfa puts it at (j + 0.5, i + 0.5)
    (origin at the top-left pixel's corner). So cprfa = value - 1 + 0.5 = value - 0.5, for x and y alike.
    """
    return np.asarray(points, dtype=np.float64) - ONE_BASED_OFFSET


def to_one_based(points: np.ndarray) -> np.ndarray:
    """cprfa pixels -> 1-based pixel-centre coordinates: the inverse of ``from_one_based`` (adds 0.5)."""
    return np.asarray(points, dtype=np.float64) + ONE_BASED_OFFSET


# ----------------------------------------------------------------------------------------------- 300-W .pts


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read a 300-W ``.pts`` file into 68 landmarks (68, 2) float64 (x, y) in cprfa pixels.

    The file is ``version: 1``, ``n_points: 68``, ``{``, 68 lines ``x y`` (1-based pixel centres), ``}``.
    Raises InvalidInputError naming the file when it is missing, unreadable or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"landmark file not found: {path}")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot read landmark file {path}: {error}") from None
    if len(lines) < 3 or not lines[0].startswith("version:") or lines[2] != "{":
        raise InvalidInputError(f"{path} is not a .pts file: it must start with 'version: 1', 'n_points: 68', '{{'")
    if lines[1].replace(" ", "") != f"n_points:{N_LANDMARKS}":
        raise InvalidInputError(f"{path}: expected 'n_points: {N_LANDMARKS}', got {lines[1]!r}")
    rows = lines[3:]
    if len(rows) != N_LANDMARKS + 1 or rows[-1] != "}":
        raise InvalidInputError(
            f"{path}: expected {N_LANDMARKS} lines 'x y' between '{{' and '}}', got {len(rows) - 1} lines"
            + ("" if rows and rows[-1] == "}" else " and no closing '}'")
        )
    points = np.zeros((N_LANDMARKS, 2))
    for index, row in enumerate(rows[:-1]):
        try:
            points[index] = [float(v) for v in row.split()]
        except ValueError:  # not numbers, or not two of them
            raise InvalidInputError(f"{path}: landmark {index + 1} must be two numbers 'x y', got {row!r}") from None
    if not np.isfinite(points).all():
        raise InvalidInputError(f"{path}: the landmarks contain NaN or infinite values")
    return from_one_based(points)


def write_pts(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write 68 landmarks (68, 2) in cprfa pixels as a 300-W ``.pts`` file (1-based); return the path.

    ``read_pts`` reads back the same points (to 1e-6 pixel). Parent folders are created."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (N_LANDMARKS, 2) or not np.isfinite(points).all():
        raise InvalidInputError(
            f"cannot write {path}: landmarks must be {N_LANDMARKS} finite (x, y) pairs, got shape {points.shape}"
        )
    rows = "".join(f"{x:.6f} {y:.6f}\n" for x, y in to_one_based(points))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"version: 1\nn_points: {N_LANDMARKS}\n{{\n{rows}}}\n")
    return path


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box (x0, y0, x1, y1) around landmarks (N, 2), in their coordinates (cprfa pixels)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0 or not np.isfinite(points).all():
        raise InvalidInputError(f"landmarks must be finite (x, y) pairs of shape (N, 2), got shape {points.shape}")
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


@dataclass(frozen=True, eq=False)
class Face300W:
    """One 300-W face: ``image`` path, ``landmarks`` (68, 2) float64 in cprfa pixels (read-only), the ``split``
    folder name (``afw``, ``helen_train``, ``helen_test``) and the face ``name`` (file stem, ``<photo>_<face>``)."""

    image: Path
    landmarks: np.ndarray
    split: str
    name: str


def iter_300w(
    root: str | os.PathLike,
    splits: tuple[str, ...] = ("afw", "helen_train"),
    skipped: list[tuple[Path, str]] | None = None,
) -> Iterator[Face300W]:
    """Yield the faces of a 300-W folder ``root/<split>/<name>.jpg`` + ``<name>.pts``, split by split in the
    order given, names sorted within a split.

    An image whose ``.pts`` is missing or malformed is skipped: ``(image path, reason)`` is appended to
    ``skipped`` when a list is given, else a warning is issued. A missing ``root`` or split folder raises
    InvalidInputError. The default splits are the training ones; ``helen_test`` is for evaluation only.
    """
    root = Path(root)
    if isinstance(splits, str):
        splits = (splits,)
    folders = [root / split for split in splits]
    for folder in folders:
        if not folder.is_dir():
            raise InvalidInputError(f"300-W split folder not found: {folder}")
    for split, folder in zip(splits, folders):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for image in images:
            try:
                landmarks = read_pts(image.with_suffix(".pts"))
            except InvalidInputError as error:
                if skipped is None:
                    warnings.warn(f"skipping {image}: {error}", stacklevel=2)
                else:
                    skipped.append((image, str(error)))
                continue
            landmarks.setflags(write=False)
            yield Face300W(image=image, landmarks=landmarks, split=split, name=image.stem)


# ----------------------------------------------------------------------------------- 300W-LP / AFLW2000-3D .mat


@dataclass(frozen=True, eq=False)
class LPAnnotation:
    """The annotation of one 300W-LP or AFLW2000-3D ``.mat`` file (arrays float64, read-only).

    Attributes:
        path: the ``.mat`` file.
        landmarks: (68, 2) x, y in cprfa pixels: from ``pt3d_68`` (AFLW2000-3D, whose ``pt2d`` holds AFLW's 21
            points) when present, else from ``pt2d`` (2 x 68, 300W-LP); both 1-based in the file.
        landmarks_3d: (68, 3) from ``pt3d_68``, x and y in cprfa pixels, z as stored; None without ``pt3d_68``.
        pitch, yaw, roll: the head rotation in radians, ``Pose_Para[0:3]`` (3DDFA's phi, gamma, theta).
        translation: (3,) ``Pose_Para[3:6]`` (tx, ty, tz) as stored, in 3DDFA's y-up model frame (not cprfa
            pixels): 3DDFA projects ``v = scale * R(pitch, yaw, roll) @ X + translation`` and puts it at the
            1-based pixel (v_x, H + 1 - v_y) of an image H pixels high, i.e. at cprfa (v_x - 0.5, H + 0.5 - v_y).
        scale: ``Pose_Para[6]``.
        shape_params: (199,) ``Shape_Para``, BFM 2009 identity coefficients.
        expression_params: (29,) ``Exp_Para``, FaceWarehouse expression coefficients.
        roi: ``roi``, its 4 numbers exactly as stored (not converted to cprfa pixels), or None when absent.
    """

    path: Path
    landmarks: np.ndarray
    landmarks_3d: np.ndarray | None
    pitch: float
    yaw: float
    roll: float
    translation: np.ndarray
    scale: float
    shape_params: np.ndarray
    expression_params: np.ndarray
    roi: tuple[float, float, float, float] | None


def read_300wlp_mat(path: str | os.PathLike) -> LPAnnotation:
    """Read a 300W-LP / AFLW2000-3D ``.mat`` annotation; see ``LPAnnotation``.

    Needs ``pt2d`` (2 x 68) or ``pt3d_68`` (3 x 68), ``Pose_Para`` (7 values), ``Shape_Para`` (199) and
    ``Exp_Para`` (29); ``roi`` (4 values) is optional. Raises InvalidInputError naming the file when it is missing,
    not a readable MATLAB file, or lacks or misshapes one of these.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"annotation file not found: {path}")
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as error:
        raise InvalidInputError(f"cannot read {path} as a MATLAB .mat file: {error}") from None

    def field(name: str, shapes: tuple[tuple[int, ...], ...], required: bool = True) -> np.ndarray | None:
        if name not in mat:
            if required:
                raise InvalidInputError(f"{path} has no '{name}'")
            return None
        value = mat[name]
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.shape in shapes):
            shape = getattr(value, "shape", type(value).__name__)
            raise InvalidInputError(f"{path}: '{name}' must be numbers of shape {shapes[0]}, got {shape}")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            raise InvalidInputError(f"{path}: '{name}' contains NaN or infinite values")
        return value

    n = N_LANDMARKS
    pt3d = field("pt3d_68", ((3, n),), required=False)
    landmarks_3d = None
    if pt3d is not None:
        landmarks_3d = pt3d.T.copy()
        landmarks_3d[:, :2] = from_one_based(landmarks_3d[:, :2])
        landmarks = landmarks_3d[:, :2].copy()
    else:
        landmarks = from_one_based(field("pt2d", ((2, n),)).T)
    pose = field("Pose_Para", ((1, 7), (7, 1), (7,))).ravel()
    shape_params = field("Shape_Para", ((199, 1), (1, 199), (199,))).ravel()
    expression_params = field("Exp_Para", ((29, 1), (1, 29), (29,))).ravel()
    roi = field("roi", ((1, 4), (4, 1), (4,)), required=False)
    translation = pose[3:6].copy()
    for array in (landmarks, landmarks_3d, translation, shape_params, expression_params):
        if array is not None:
            array.setflags(write=False)
    return LPAnnotation(
        path=path,
        landmarks=landmarks,
        landmarks_3d=landmarks_3d,
        pitch=float(pose[0]),
        yaw=float(pose[1]),
        roll=float(pose[2]),
        translation=translation,
        scale=float(pose[6]),
        shape_params=shape_params,
        expression_params=expression_params,
        roi=None if roi is None else tuple(float(v) for v in roi.ravel()),
    )
