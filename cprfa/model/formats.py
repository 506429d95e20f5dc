"""Loaders that turn the linear face models users already have into a ``FaceModel``.

Supported files (``load_face_model`` picks the loader from the suffix):

- ``.npz``: cprfa's own format (``FaceModel.load``).
- ``.pkl``: 3DDFA / 3DDFA_V2 BFM pickles such as ``bfm_noneck_v3.pkl`` (``load_3ddfa_bfm``).
- ``.mat``: Basel Face Model 2009 ``01_MorphableModel.mat``, optionally with 3DDFA's ``Model_Expression.mat``
  and a crop (``trimIndex``) file (``load_bfm2009``).
- ``.bin``: Surrey Face Model / eos ``MorphableModel`` cereal archives such as ``sfm_shape_3448.bin``
  (``load_surrey_model``).

Choices shared by every loader, so that the result follows the FaceModel conventions (DESIGN.md):

- Units become centimetres: BFM 2009 and everything derived from it (3DDFA) is in micrometres (x 1e-4); the
  Surrey Face Model is in millimetres (x 0.1). As a guard against a file in another unit, the converted mean
  shape must span 1-100 cm.
- All three source models already use cprfa's axes (x to the subject's left, y up, z out of the face), so no
  axis is flipped; triangle windings are made counter-clockwise seen from the front with
  ``cprfa.model.ict.orient_outward`` (BFM 2009 stores them the other way round).
- PCA bases are scaled by their standard deviations so that weights are ~N(0, 1); PCA expression models get
  ``expression_prior="gaussian"``, eos blendshapes ``"blendshape"``.
- ``face_area`` is every vertex. Jaw contour candidates default to the jaw landmark vertices
  (landmarks 0-7 for ``contour_right``, 9-16 for ``contour_left``) unless given.
- ``landmarks68``, wherever a loader takes it, is either 68 vertex ids (0-based, ids of the returned model),
  a dict {ibug point number 1-68: vertex id}, or the path of an eos mapping file (see
  ``read_eos_landmark_mapping``); it must cover all 68 points.
- Every problem with a file (missing, truncated, corrupt, another format, inconsistent sizes, NaN) raises
  ``ModelFileError`` naming the file and the problem.
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import numpy as np

from cprfa.errors import ModelFileError
from cprfa.model.face_model import FaceModel
from cprfa.model.ict import orient_outward

CM_PER_MICROMETRE = 1e-4
CM_PER_MILLIMETRE = 0.1
_EXTENT_CM = (1.0, 100.0)
_LICENCE = "licence: that of the original file's distributor"

PathLike = str | os.PathLike


# --- shared helpers -----------------------------------------------------------------------------------------


def _fail(path, problem: str) -> NoReturn:
    raise ModelFileError(f"{path}: {problem}")


def _existing_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    return path


def _ids(values, path, what: str) -> np.ndarray:
    """Integer ids from an int or integral float array; anything else is an error."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            _fail(path, f"{what} must be whole numbers")
    elif array.dtype.kind not in "iu":
        _fail(path, f"{what} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _floats(values, path, what: str, dtype=np.float64) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        _fail(path, f"{what} must be numeric, got dtype {array.dtype}")
    array = array.astype(dtype, copy=False)
    if not np.isfinite(array).all():
        _fail(path, f"{what} contains NaN or infinite values")
    return array


def _column(values, path, what: str) -> np.ndarray:
    """A (K,), (K, 1) or (1, K) array as a flat float vector."""
    array = _floats(values, path, what)
    if array.ndim > 2 or (array.ndim == 2 and 1 not in array.shape):
        _fail(path, f"{what} must be a vector, got shape {array.shape}")
    return array.reshape(-1)


def _matrix(values, path, what: str, rows: int | None = None) -> np.ndarray:
    """A (rows, K) basis, kept in float32 (bases are large and FaceModel stores float32 anyway)."""
    array = _floats(values, path, what, np.float32)
    if array.ndim != 2 or array.shape[0] != (array.shape[0] if rows is None else rows):
        _fail(path, f"{what} must have shape ({rows}, K), got {array.shape}")
    return array


def _modes(basis: np.ndarray) -> np.ndarray:
    """(3N, K) vertex-interleaved (x0, y0, z0, x1, ...) columns -> (K, N, 3)."""
    return basis.T.reshape(basis.shape[1], basis.shape[0] // 3, 3)


def _triangles(values, path, n: int, what: str, one_based: bool = False) -> np.ndarray:
    """(T, 3) or transposed (3, T) triangle ids -> (T, 3) 0-based, checked against n vertices."""
    tri = _ids(values, path, what)
    if tri.ndim != 2 or 3 not in tri.shape or tri.size == 0:
        _fail(path, f"{what} must have shape (T, 3) or (3, T), got {tri.shape}")
    if tri.shape[1] != 3:
        tri = tri.T
    if one_based:
        tri = tri - 1
    if tri.min() < 0 or tri.max() >= n:
        hint = " (they look 1-based)" if not one_based and tri.min() >= 1 and tri.max() == n else ""
        _fail(path, f"{what} hold vertex ids outside [0, {n}){hint}")
    return np.ascontiguousarray(tri)


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    parts, start = [], None
    for i, k in enumerate(numbers):
        if start is None:
            start = k
        if i + 1 == len(numbers) or numbers[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def _landmarks(landmarks68, path, n: int, fallback=None, hint: str = "") -> np.ndarray:
    """Resolve the ``landmarks68`` argument (see the module docstring) to 68 vertex ids in [0, n)."""
    if landmarks68 is None:
        if fallback is not None:
            return fallback
        _fail(path, "the file holds no 68-point landmark list: pass landmarks68= (68 vertex ids, a dict "
                    "{ibug point 1-68: vertex id}, or an eos mapping file)" + hint)
    source = path
    if isinstance(landmarks68, (str, os.PathLike)):
        source, mapping = landmarks68, read_eos_landmark_mapping(landmarks68)
    elif isinstance(landmarks68, Mapping):
        mapping = {int(k): v for k, v in landmarks68.items()}
    else:
        mapping = None
    if mapping is not None:
        missing = [k for k in range(1, 69) if k not in mapping]
        if missing:
            raise ModelFileError(
                f"{source}: the landmark mapping lacks ibug points {_ranges(missing)}; complete it, e.g. "
                "{**read_eos_landmark_mapping(file), 1: vertex_id, ...} (eos leaves out the jaw contour, "
                "which it fits separately, and the inner mouth corners 61 and 65)"
            )
        landmarks68 = [mapping[k] for k in range(1, 69)]
    ids = _ids(landmarks68, source, "landmarks68")
    if ids.shape != (68,):
        _fail(source, f"landmarks68 must hold 68 vertex ids, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= n:
        _fail(source, f"landmarks68 holds vertex ids outside [0, {n}) of the model from {path}")
    return ids


def _build(path, *, name, mean, identity, expression, expression_names, prior, triangles, landmarks68,
           contour_right, contour_left, unit, source) -> FaceModel:
    """Checks shared by all loaders, default contours and winding, then the FaceModel."""
    for what, array in (("mean shape", mean), ("identity basis", identity), ("expression basis", expression)):
        if not np.isfinite(array).all():
            _fail(path, f"the {what} contains NaN or infinite values")
    extent = float((mean.max(axis=0) - mean.min(axis=0)).max())
    if not _EXTENT_CM[0] <= extent <= _EXTENT_CM[1]:
        _fail(path, f"after converting {unit} to cm the mean shape spans {extent:.3g} cm, not a face "
                    f"({_EXTENT_CM[0]:g}-{_EXTENT_CM[1]:g} cm expected): is the file really in {unit}?")
    contour_right = landmarks68[0:8] if contour_right is None else _ids(contour_right, path, "contour_right")
    contour_left = landmarks68[9:17] if contour_left is None else _ids(contour_left, path, "contour_left")
    try:
        return FaceModel(
            name=name,
            mean=mean,
            identity_basis=identity,
            expression_basis=expression,
            expression_names=tuple(expression_names),
            expression_prior=prior,
            triangles=orient_outward(triangles, mean),
            landmarks68=landmarks68,
            contour_right=contour_right,
            contour_left=contour_left,
            face_area=np.arange(len(mean)),
            source=source,
        )
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None


# --- eos side files -----------------------------------------------------------------------------------------

_MAPPING_LINE = re.compile(r'^"?(\d+)"?\s*(?:=\s*)?(\d+)$')


def read_eos_landmark_mapping(path: PathLike) -> dict[int, int]:
    """Read an eos landmark mapping (``ibug_to_sfm.txt``, ``ibug_to_bfm.txt``): {ibug point 1-68: vertex id}.

    Both layouts eos has shipped are read: the TOML one (a ``[landmark_mappings]`` table of ``37 = 177``
    lines, ``#`` comments) and the older boost-info one (``landmarkMappings { 37 177 }``, ``;`` comments).
    Other sections (``[contour_landmarks]``) are ignored. Vertex ids are returned as written: eos uses them
    as 0-based ids. The stock files are partial (no jaw contour points 1-8 and 10-17, no inner mouth
    corners 61 and 65 for the SFM; only about 20 points for the BFM), so the loaders ask for the rest.
    """
    path = _existing_file(path, "eos landmark mapping file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path} is not a readable text file: {error}") from None
    mapping: dict[int, int] = {}
    in_mappings = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            in_mappings = line.replace(" ", "").lower() == "[landmark_mappings]"
        elif re.match(r"^landmarkMappings\b", line):
            in_mappings = True
        elif line.startswith("}"):
            in_mappings = False
        elif in_mappings and line != "{":
            match = _MAPPING_LINE.match(line)
            if not match:
                _fail(f"{path}:{number}", f"cannot read the landmark mapping line '{raw.strip()}'")
            ibug, vertex = int(match.group(1)), int(match.group(2))
            if not 1 <= ibug <= 68 or ibug in mapping:
                _fail(f"{path}:{number}", f"ibug point {ibug} is outside 1-68 or mapped twice")
            mapping[ibug] = vertex
    if not mapping:
        _fail(path, "no landmark mappings found: not an eos landmark mapping file")
    return mapping


def read_eos_model_contours(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read eos ``*_model_contours.json``: (right, left) contour vertex ids.

    Layout: ``{"model_contour": {"right_contour": [ids], "left_contour": [ids]}}``; eos' right contour goes
    with ibug landmarks 1-8, i.e. the subject's right, like cprfa's ``contour_right``."""
    path = _existing_file(path, "eos model contour file")
    try:
        contour = json.loads(path.read_text(encoding="utf-8"))["model_contour"]
        right, left = contour["right_contour"], contour["left_contour"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        problem = f"{type(error).__name__} {error}"
        raise ModelFileError(f"{path} is not an eos model contour file: {problem}") from None
    return _ids(right, path, "right_contour").reshape(-1), _ids(left, path, "left_contour").reshape(-1)


# --- 3DDFA pickles ------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The few globals that pickled numpy arrays need, under NumPy 1 (numpy.core) and 2 (numpy._core)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy < 2 without the numpy._core alias
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_PICKLE_GLOBALS = {
    **_numpy_globals(),
    **{("builtins", kind.__name__): kind for kind in (dict, list, tuple, set, frozenset, bytearray)},
    ("_codecs", "encode"): codecs.encode,  # protocol 2 pickles store bytes this way
}


# What a corrupt or foreign pickle can raise while numpy arrays are rebuilt from it.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, LookupError,
                  OverflowError, MemoryError, RuntimeError, OSError, struct.error)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers; refuses every other global.

    A pickle can call any importable function while it loads (``os.system`` and friends), so the files
    users download are never handed to ``pickle.load``."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise ModelFileError(
                f"refused to unpickle the global '{module}.{name}': only numpy arrays and plain containers "
                "are allowed in model pickles"
            ) from None


def _load_pickle(path: PathLike, what: str):
    path = _existing_file(path, what)
    try:
        with path.open("rb") as file:
            return _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except _PICKLE_ERRORS as error:  # any failure inside pickle/numpy means a corrupt or foreign file
        raise ModelFileError(f"{path} is not a readable pickle: {type(error).__name__}: {error}") from None


def _param_std(param_std, k_shp: int, k_exp: int) -> tuple[np.ndarray, np.ndarray]:
    source = "param_std"
    if isinstance(param_std, (str, os.PathLike)):
        source = param_std
        stats = _load_pickle(param_std, "3DDFA parameter statistics file")
        if isinstance(stats, Mapping):
            key = next((k for k in ("std", "param_std") if k in stats), None)
            if key is None:
                _fail(source, f"holds no 'std' or 'param_std' entry (keys: {sorted(map(str, stats))})")
            stats = stats[key]
        param_std = stats
    std = _column(param_std, source, "param_std")
    if len(std) == 12 + k_shp + k_exp:  # 3DDFA's layout: 12 pose values, then shape, then expression
        std = std[12:]
    if len(std) != k_shp + k_exp:
        _fail(source, f"param_std has {len(std)} values; expected {k_shp} + {k_exp} (shape + expression), "
                      f"optionally after 12 pose values (use shape_dim / exp_dim to match a truncated model)")
    if (std <= 0).any():
        _fail(source, "param_std must be positive")
    return std[:k_shp], std[k_shp:]


def load_3ddfa_bfm(path: PathLike, *, triangles_path: PathLike | None = None, param_std=None,
                   shape_dim: int | None = None, exp_dim: int | None = None, contour_right=None,
                   contour_left=None, name: str | None = None) -> FaceModel:
    """Load a 3DDFA / 3DDFA_V2 BFM pickle (``bfm_noneck_v3.pkl`` and its relatives).

    Layout (cleardusk/3DDFA_V2 ``bfm/bfm.py``, cleardusk/3DDFA ``utils/params.py``): a pickled dict with

    - ``u`` (3N, 1): mean shape, vertex-interleaved x0, y0, z0, x1, ... (3DDFA reshapes it with
      ``reshape(3, -1, order='F')``), usually float32;
    - ``w_shp`` (3N, K_shp) and ``w_exp`` (3N, K_exp): shape and expression bases, same row layout;
    - ``tri``: 0-based triangles, stored transposed (3, T) by 3DDFA_V2; (T, 3) is accepted too. 3DDFA_V2
      rebuilt the triangles of ``bfm_noneck_v3.pkl`` and ships them in a separate ``configs/tri.pkl`` (a bare
      (3, T) array): pass it as ``triangles_path``, which then replaces ``tri``;
    - ``keypoints`` (204,): indices into the flattened 3N array of the 68 landmarks' x, y, z; the landmark
      vertex is ``keypoints[0::3] // 3``.

    Units: 3DDFA's models are cropped from BFM 2009 (``u`` = BFM ``shapeMU`` + 3DDFA's expression mean) and
    keep its micrometres, so everything is multiplied by 1e-4 to get centimetres. Axes are BFM's, which are
    cprfa's already.

    Priors: the coefficients' standard deviations are not in this file. ``param_std`` gives them: an array
    (K_shp + K_exp values, or 3DDFA's 12 + K_shp + K_exp with the pose first, as in
    ``param_mean_std_62d_120x120.pkl``), or the path of such a pickle holding ``std`` (3DDFA_V2) or
    ``param_std`` (3DDFA). The bases are multiplied by it, column by column, so weights are ~N(0, 1); 3DDFA's
    coefficient means are not folded into the mean shape. Without ``param_std`` the bases are kept as stored
    (weights are then raw 3DDFA coefficients, not N(0, 1)) and ``source`` says so. ``shape_dim`` /
    ``exp_dim`` keep only the first columns, as 3DDFA_V2's ``BFMModel`` does. Expressions are PCA modes:
    ``expression_prior="gaussian"``.

    Contours: the file has no contour candidates, so the jaw landmark vertices are used unless
    ``contour_right`` / ``contour_left`` are given. Pickles are read with an unpickler that admits only numpy
    arrays and plain containers (a hostile pickle raises ModelFileError naming the refused global).
    """
    path = _existing_file(path, "3DDFA BFM pickle")
    data = _load_pickle(path, "3DDFA BFM pickle")
    if not isinstance(data, Mapping):
        _fail(path, f"expected a pickled dict (3DDFA BFM layout), got {type(data).__name__}")
    required = ["u", "w_shp", "w_exp", "keypoints"] + ([] if triangles_path else ["tri"])
    missing = [key for key in required if key not in data]
    if missing:
        hint = " (for bfm_noneck_v3.pkl pass triangles_path= 3DDFA_V2's configs/tri.pkl)"
        hint = hint if missing == ["tri"] else ""
        _fail(path, f"is not a 3DDFA BFM pickle: it lacks {missing}{hint}")

    u = _column(data["u"], path, "u")
    if len(u) % 3:
        _fail(path, f"u has {len(u)} values, not a multiple of 3")
    n = len(u) // 3
    w_shp = _matrix(data["w_shp"], path, "w_shp", 3 * n)
    w_exp = _matrix(data["w_exp"], path, "w_exp", 3 * n)
    for what, dim, basis in (("shape_dim", shape_dim, w_shp), ("exp_dim", exp_dim, w_exp)):
        if dim is not None and not 0 <= dim <= basis.shape[1]:
            _fail(path, f"{what}={dim} but the file has {basis.shape[1]} columns")
    w_shp, w_exp = w_shp[:, :shape_dim], w_exp[:, :exp_dim]

    keypoints = _ids(data["keypoints"], path, "keypoints").reshape(-1)
    first = keypoints[0::3]
    if (keypoints.shape != (204,) or (first % 3).any() or (keypoints[1::3] != first + 1).any()
            or (keypoints[2::3] != first + 2).any() or first.min() < 0 or first.max() >= 3 * n):
        _fail(path, "keypoints must be 204 indices (x, y, z of 68 vertices) into the 3N-long u")
    landmarks68 = first // 3

    if triangles_path is not None:
        tri = _load_pickle(triangles_path, "3DDFA triangles pickle")
        if isinstance(tri, Mapping):
            tri = tri.get("tri")
        triangles = _triangles(tri, triangles_path, n, "the triangles")
    else:
        triangles = _triangles(data["tri"], path, n, "tri")

    if param_std is None:
        scaling = "bases kept as stored (no param_std given): weights are raw 3DDFA coefficients, not N(0, 1)"
    else:
        std_shp, std_exp = _param_std(param_std, w_shp.shape[1], w_exp.shape[1])
        w_shp, w_exp = w_shp * std_shp, w_exp * std_exp
        scaling = "bases scaled by param_std so weights are ~N(0, 1)"
    return _build(
        path,
        name=name or f"3DDFA BFM ({path.name})",
        mean=u.reshape(n, 3) * CM_PER_MICROMETRE,
        identity=_modes(w_shp) * CM_PER_MICROMETRE,
        expression=_modes(w_exp) * CM_PER_MICROMETRE,
        expression_names=[f"exp{k:02d}" for k in range(w_exp.shape[1])],
        prior="gaussian",
        triangles=triangles,
        landmarks68=landmarks68,
        contour_right=contour_right,
        contour_left=contour_left,
        unit="micrometres",
        source=f"3DDFA BFM pickle {path.name} (derived from the Basel Face Model 2009; {_LICENCE}); "
               f"micrometres -> cm; {scaling}; converted by cprfa.model.formats",
    )


# --- Basel Face Model 2009 ----------------------------------------------------------------------------------


def _load_mat(path: PathLike, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    import scipy.io

    path = _existing_file(path, what)
    # What scipy raises for corrupt or foreign files (its readers use struct and zlib underneath).
    errors = (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, EOFError, LookupError,
              OverflowError, MemoryError, struct.error, zlib.error)
    try:
        mat = scipy.io.loadmat(path, variable_names=list(required + optional))
    except NotImplementedError as error:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ModelFileError(f"{path}: {error}; re-save it from MATLAB with save(..., '-v7')") from None
    except errors as error:
        problem = f"{type(error).__name__}: {error}"
        raise ModelFileError(f"{path} is not a readable MATLAB .mat file: {problem}") from None
    missing = [key for key in required if key not in mat]
    if missing:
        _fail(path, f"is not a {what}: it lacks {missing}")
    return mat


def load_bfm2009(path: PathLike, *, expression_path: PathLike | None = None,
                 trim_path: PathLike | None = None, landmarks68=None, contour_right=None, contour_left=None,
                 name: str | None = None) -> FaceModel:
    """Load the Basel Face Model 2009 (``01_MorphableModel.mat``), optionally with 3DDFA's expressions.

    Layout (MATLAB v5, read with scipy; see patrikhuber/eos ``share/scripts/convert-bfm2009-to-eos.py`` and
    yfeng95/face3d ``examples/Data/BFM/generate.m``): ``shapeMU`` (3N, 1) vertex-interleaved mean, ``shapePC``
    (3N, 199) orthonormal basis, ``shapeEV`` (199, 1) standard deviations (not variances), ``tl`` (T, 3)
    1-based triangles; N = 53490. Colour entries are not read.

    ``expression_path``: 3DDFA's ``Model_Expression.mat``: ``mu_exp`` (3N', 1, optional; added to the mean, as
    3DDFA and face3d do), ``w_exp`` (3N', 29) and ``sigma_exp`` (29, 1) standard deviations, on the
    N' = 53215-vertex crop of the BFM. ``trim_path``: a .mat with ``trimIndex`` (N' 1-based BFM vertex ids;
    Deep3DFaceRecon's ``BFM_exp_idx.mat``, 3DDFA's ``model_info.mat``); row i of the expression basis belongs
    to BFM vertex ``trimIndex[i]``. When the expression basis has fewer vertices than the BFM the crop is
    required; with a crop the returned model has the cropped vertices in trimIndex order and keeps only the
    triangles whose three corners survive. A crop can also be applied without expressions.

    Bases are multiplied by their standard deviations (``shapePC * shapeEV``, ``w_exp * sigma_exp``) so
    weights are ~N(0, 1); ``expression_prior="gaussian"`` (without expressions the expression basis is empty).
    Units: BFM 2009 is in micrometres (x 1e-4 to cm). Axes: BFM's x points to the subject's left, y up and z
    out of the face (Deep3DFaceRecon projects x unflipped to image columns and flips only y), which is
    cprfa's convention, so no axis changes; windings are made counter-clockwise seen from the front.

    Landmarks: the BFM has no 68-point list. ``landmarks68`` (ids of the returned, possibly cropped, model;
    see the module docstring) is required unless the crop file carries 3DDFA's ``keypoints`` (68 1-based ids
    into the cropped model, as ``model_info.mat`` does), which are then used.
    """
    path = _existing_file(path, "BFM 2009 model file")
    bfm = _load_mat(path, "BFM 2009 model (01_MorphableModel.mat)", ("shapeMU", "shapePC", "shapeEV", "tl"))
    mu = _column(bfm["shapeMU"], path, "shapeMU")
    if len(mu) % 3:
        _fail(path, f"shapeMU has {len(mu)} values, not a multiple of 3")
    n = len(mu) // 3
    pc = _matrix(bfm["shapePC"], path, "shapePC", 3 * n)
    ev = _column(bfm["shapeEV"], path, "shapeEV").astype(np.float32)
    if len(ev) != pc.shape[1] or (ev <= 0).any():
        _fail(path, f"shapeEV must hold {pc.shape[1]} positive standard deviations, got {len(ev)} values")
    triangles = _triangles(bfm["tl"], path, n, "tl", one_based=True)
    mean, identity = mu.reshape(n, 3), _modes(pc * ev)
    expression = np.zeros((0, n, 3))

    keep = keypoints = None
    if trim_path is not None:
        trim = _load_mat(trim_path, "crop file (trimIndex)", ("trimIndex",), ("keypoints",))
        keep = _ids(trim["trimIndex"], trim_path, "trimIndex").reshape(-1) - 1
        if keep.size == 0 or keep.min() < 0 or keep.max() >= n or len(np.unique(keep)) != len(keep):
            _fail(trim_path, f"trimIndex must hold distinct 1-based vertex ids in [1, {n}]")
        if "keypoints" in trim:
            keypoints = _ids(trim["keypoints"], trim_path, "keypoints").reshape(-1) - 1
            if keypoints.shape != (68,) or keypoints.min() < 0 or keypoints.max() >= len(keep):
                _fail(trim_path, f"keypoints must be 68 1-based ids into the {len(keep)} cropped vertices")
    if keep is not None:
        mean, identity = mean[keep], identity[:, keep]
        new_id = np.full(n, -1)
        new_id[keep] = np.arange(len(keep))
        triangles = new_id[triangles]
        triangles = triangles[(triangles >= 0).all(axis=1)]
        if len(triangles) == 0:
            _fail(trim_path, "no triangle has all three corners inside trimIndex")

    if expression_path is not None:
        exp = _load_mat(expression_path, "3DDFA expression model (Model_Expression.mat)",
                        ("w_exp", "sigma_exp"), ("mu_exp",))
        w_exp = _matrix(exp["w_exp"], expression_path, "w_exp")
        rows, n_exp = w_exp.shape[0], len(mean)
        if keep is None and rows != 3 * n:
            _fail(expression_path, f"the expression basis has {rows // 3} vertices but the BFM {n}: pass "
                                   "trim_path= a .mat with the matching trimIndex (e.g. BFM_exp_idx.mat)")
        if keep is not None and rows == 3 * n:  # an expression basis on the full BFM: crop it the same way
            rows_kept = (3 * keep[:, None] + np.arange(3)).reshape(-1)
        elif rows == 3 * n_exp:
            rows_kept = slice(None)
        else:
            _fail(expression_path, f"the expression basis has {rows} rows; expected 3 x {n_exp} (the crop)")
        w_exp = w_exp[rows_kept]
        sigma = _column(exp["sigma_exp"], expression_path, "sigma_exp").astype(np.float32)
        if len(sigma) != w_exp.shape[1] or (sigma <= 0).any():
            _fail(expression_path, f"sigma_exp must hold {w_exp.shape[1]} positive standard deviations")
        expression = _modes(w_exp * sigma)
        if "mu_exp" in exp:
            mu_exp = _column(exp["mu_exp"], expression_path, "mu_exp")
            if len(mu_exp) != rows:
                _fail(expression_path, f"mu_exp has {len(mu_exp)} values, w_exp {rows} rows")
            mean = mean + mu_exp[rows_kept].reshape(-1, 3)

    crop = f", cropped to {len(mean)} vertices by {Path(trim_path).name}" if keep is not None else ""
    exp_note = f", expressions from {Path(expression_path).name}" if expression_path is not None else ""
    return _build(
        path,
        name=name or f"Basel Face Model 2009 ({path.name})",
        mean=mean * CM_PER_MICROMETRE,
        identity=identity * CM_PER_MICROMETRE,
        expression=expression * CM_PER_MICROMETRE,
        expression_names=[f"exp{k:02d}" for k in range(len(expression))],
        prior="gaussian",
        triangles=triangles,
        landmarks68=_landmarks(landmarks68, path, len(mean), keypoints,
                               " (or a trim_path .mat with 3DDFA's 68 'keypoints', e.g. model_info.mat)"),
        contour_right=contour_right,
        contour_left=contour_left,
        unit="micrometres",
        source=f"Basel Face Model 2009 {path.name}{crop}{exp_note} ({_LICENCE}); micrometres -> cm; bases "
               "scaled by their standard deviations; converted by cprfa.model.formats",
    )


# --- Surrey Face Model / eos --------------------------------------------------------------------------------


class _CerealReader:
    """Reads a cereal ``BinaryInputArchive``: little-endian scalars, container sizes as uint64, no header."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if size > left:
            _fail(self.path, f"truncated or corrupt: {what} needs {size} bytes at offset {self.pos}, "
                             f"only {left} are left")
        self.pos += size
        return self.data[self.pos - size:self.pos]

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, min_item_size: int, what: str) -> int:
        size = self.scalar("<Q", f"the size of {what}")
        if size * min_item_size > len(self.data) - self.pos:
            _fail(self.path, f"truncated or corrupt: {what} claims {size} items, more than the file holds")
        return size

    def nullopt(self, what: str) -> bool:
        flag = self.scalar("<B", what)
        if flag > 1:
            _fail(self.path, f"corrupt: {what} holds the byte {flag} at offset {self.pos - 1}, not a bool")
        return bool(flag)

    def string(self, what: str) -> str:
        return self.take(self.count(1, what), what).decode("utf-8", errors="replace")

    def matrix(self, what: str) -> np.ndarray:
        """eos' Eigen float matrix: int32 rows, int32 cols, then rows*cols float32 in column-major order."""
        rows, cols = self.scalar("<i", f"{what} rows"), self.scalar("<i", f"{what} cols")
        if rows < 0 or cols < 0:
            _fail(self.path, f"corrupt: {what} has shape ({rows}, {cols})")
        values = np.frombuffer(self.take(4 * rows * cols, what), dtype="<f4")
        return values.reshape(cols, rows).T

    def triangles(self, what: str) -> np.ndarray:
        count = self.count(12, what)
        return np.frombuffer(self.take(12 * count, what), dtype="<i4").reshape(count, 3).astype(np.int64)

    def pca_model(self, what: str) -> dict:
        """eos ``PcaModel``: mean, orthonormal_pca_basis, eigenvalues, triangle_list (unversioned)."""
        return {"mean": self.matrix(f"the {what} mean"), "basis": self.matrix(f"the {what} basis"),
                "eigenvalues": self.matrix(f"the {what} eigenvalues"),
                "triangles": self.triangles(f"the {what} triangle list")}


def _pca_parts(model: dict, path, what: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (3N,), basis scaled by sqrt(eigenvalue) (3N, K)) of a parsed eos PcaModel, checked."""
    mean, basis, ev = model["mean"], model["basis"], model["eigenvalues"]
    expected = f" (the shape model has {rows} rows)" if rows is not None else ""
    rows = mean.shape[0] if rows is None else rows
    if mean.shape != (rows, 1) or rows % 3 or basis.shape[0] != rows or ev.shape != (basis.shape[1], 1):
        _fail(path, f"inconsistent {what}: mean {mean.shape}, basis {basis.shape}, eigenvalues {ev.shape}"
                    f"{expected}")
    for key, array in (("mean", mean), ("basis", basis), ("eigenvalues", ev)):
        if not np.isfinite(array).all():
            _fail(path, f"the {what} {key} contains NaN or infinite values")
    if (ev < 0).any():
        _fail(path, f"the {what} has negative eigenvalues (they are variances)")
    return mean[:, 0], basis * np.sqrt(ev[:, 0])


def load_surrey_model(path: PathLike, *, landmarks68=None, contours_path: PathLike | None = None,
                      contour_right=None, contour_left=None, name: str | None = None) -> FaceModel:
    """Load a Surrey Face Model / eos ``MorphableModel`` archive (``sfm_shape_3448.bin`` and the like).

    Layout (patrikhuber/eos ``include/eos/morphablemodel/MorphableModel.hpp``, ``PcaModel.hpp``,
    ``Blendshape.hpp``, ``io/eigen_cerealisation.hpp``, ``cpp17/*_serialization.hpp``): a cereal binary
    archive (little-endian, no header, sizes as uint64) holding

    - uint32 class version (1-4; eos refuses 0, the old cv::Mat format, and so does this loader);
    - shape model and colour model, each a PcaModel: mean, orthonormal_pca_basis and eigenvalues as Eigen
      float matrices (int32 rows, int32 cols, float32 column-major data; mean and eigenvalues are columns),
      then triangle_list (uint64 count, count x 3 int32, 0-based);
    - version >= 2: optional expression model (uint8 "nullopt", 1 = absent), a variant (int32 index): 0 = a
      PcaModel, 1 = blendshapes (uint64 count, each a string name (uint64 length + bytes) and a 3N x 1
      deformation matrix);
    - version >= 3: optional landmark definitions (uint8 nullopt, uint64 count, string -> int32); read but not
      used, since eos names them by semantic identifiers, not ibug numbers;
    - texture coordinates (uint64 count, count x 2 float64); version 4: texture triangles (like
      triangle_list). Nothing may follow.

    Vectors are vertex-interleaved (x0, y0, z0, x1, ...). eos' eigenvalues are variances, so the orthonormal
    basis is multiplied by sqrt(eigenvalue) and weights are ~N(0, 1). A PCA expression model is handled the
    same way and its mean is added to the shape mean (as eos' ``get_mean`` does):
    ``expression_prior="gaussian"``. Blendshapes are deformations per unit weight, kept as they are, with
    their names: ``expression_prior="blendshape"``. Without an expression model the expression basis is empty.
    The colour model is read and ignored.

    Units: the SFM is in millimetres (x 0.1 to cm). Axes: x to the subject's left, y up, z out of the face
    (eos ``share/sfm_reference.obj``: nose tip vertex 114 has the largest z, the subject's right eye corner
    177 has x < 0), cprfa's convention, so no axis changes.

    Landmarks: the archive holds no 68-point list: ``landmarks68`` is required (see the module docstring;
    eos' ``share/ibug_to_sfm.txt`` can be given as a path but lacks points 1-8, 10-17, 61 and 65, so it has to
    be completed). Contours: ``contours_path`` (eos ``share/sfm_model_contours.json``) or ``contour_right`` /
    ``contour_left``; by default the jaw landmark vertices.
    """
    path = _existing_file(path, "eos / Surrey Face Model file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{path} is not readable: {error}") from None
    reader = _CerealReader(data, path)
    version = reader.scalar("<I", "the class version")
    if version == 0:
        _fail(path, "is an eos model in the old cv::Mat format (class version 0), which eos no longer reads; "
                    "download a current model file")
    if version > 4:
        _fail(path, f"is not an eos MorphableModel archive (class version {version}; eos writes 1-4)")
    shape = reader.pca_model("shape model")
    reader.pca_model("colour model")
    expression = None
    if version >= 2 and not reader.nullopt("the expression model flag"):
        kind = reader.scalar("<i", "the expression model type")
        if kind == 0:
            expression = ("pca", reader.pca_model("expression model"))
        elif kind == 1:
            count = reader.count(16, "the blendshapes")
            expression = ("blendshapes", [(reader.string("a blendshape name"), reader.matrix("a blendshape"))
                                          for _ in range(count)])
        else:
            _fail(path, f"corrupt: expression model type {kind} (eos writes 0 = PCA, 1 = blendshapes)")
    if version >= 3 and not reader.nullopt("the landmark definitions flag"):
        for _ in range(reader.count(12, "the landmark definitions")):
            reader.string("a landmark name")
            reader.scalar("<i", "a landmark vertex")
    reader.take(16 * reader.count(16, "the texture coordinates"), "the texture coordinates")
    if version >= 4:
        reader.triangles("the texture triangles")
    if reader.pos != len(data):
        _fail(path, f"{len(data) - reader.pos} unexpected bytes after the model: not an eos MorphableModel "
                    f"archive of version {version}")

    mean, identity = _pca_parts(shape, path, "shape model")
    n = len(mean) // 3
    if n == 0:
        _fail(path, "the shape model has no vertices")
    if expression is None:
        expression_basis, names, prior = np.zeros((3 * n, 0)), [], "gaussian"
    elif expression[0] == "pca":
        exp_mean, expression_basis = _pca_parts(expression[1], path, "expression model", rows=3 * n)
        mean = mean + exp_mean
        names, prior = [f"exp{k:02d}" for k in range(expression_basis.shape[1])], "gaussian"
    else:
        shapes = expression[1]
        bad = [name for name, deformation in shapes if deformation.shape != (3 * n, 1)]
        if bad:
            _fail(path, f"blendshapes {bad} do not have {3 * n} rows like the shape model")
        names, prior = [name for name, _ in shapes], "blendshape"
        expression_basis = np.concatenate([d for _, d in shapes], axis=1) if shapes else np.zeros((3 * n, 0))
    if contours_path is not None:
        contour_right, contour_left = read_eos_model_contours(contours_path)
    return _build(
        path,
        name=name or f"Surrey Face Model ({path.name})",
        mean=mean.reshape(n, 3) * CM_PER_MILLIMETRE,
        identity=_modes(identity) * CM_PER_MILLIMETRE,
        expression=_modes(expression_basis) * CM_PER_MILLIMETRE,
        expression_names=names,
        prior=prior,
        triangles=_triangles(shape["triangles"], path, n, "the shape model triangles"),
        landmarks68=_landmarks(landmarks68, path, n),
        contour_right=contour_right,
        contour_left=contour_left,
        unit="millimetres",
        source=f"eos MorphableModel {path.name} (class version {version}; Surrey Face Model, {_LICENCE}); "
               "millimetres -> cm; PCA bases scaled by sqrt(eigenvalue); converted by cprfa.model.formats",
    )


# --- dispatch -----------------------------------------------------------------------------------------------

_LOADERS = {".pkl": load_3ddfa_bfm, ".mat": load_bfm2009, ".bin": load_surrey_model}


def load_face_model(path: PathLike, **kwargs) -> FaceModel:
    """Load any supported model by suffix: ``.npz`` (``FaceModel.load``), ``.pkl`` (``load_3ddfa_bfm``),
    ``.mat`` (``load_bfm2009``) or ``.bin`` (``load_surrey_model``); ``kwargs`` go to that loader."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if kwargs:
            raise ModelFileError(f"{path}: a cprfa .npz model takes no options, got {sorted(kwargs)}")
        return FaceModel.load(path)
    if suffix not in _LOADERS:
        raise ModelFileError(f"{path}: unknown face model format '{suffix}' (known: .npz, .pkl, .mat, .bin)")
    return _LOADERS[suffix](path, **kwargs)
