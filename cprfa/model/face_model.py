"""The linear 3D face model (paper Eq. 1) and its on-disk format.

``X = mean + identity_basis · α_id + expression_basis · α_exp``

Conventions (DESIGN.md): units are centimetres; model space has x to the subject's left, y up and z out of the
face. Identity weights are scaled so that their prior is N(0, 1). Expression weights follow
``expression_prior``: ``"blendshape"`` (weights in [0, 1], the ICT-FaceKit / ARKit convention) or ``"gaussian"``
(PCA weights ~ N(0, 1), BFM-style expression bases). Triangles are wound counter-clockwise when seen from the
front in the (x, y-up) plane, so their normals point out of the face.

No part of cprfa assumes a vertex count: every model, whatever file it came from, is a ``FaceModel``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cprfa.errors import ModelFileError

FORMAT_NAME = "cprfa-face-model"
FORMAT_VERSION = 1
EXPRESSION_PRIORS = ("blendshape", "gaussian")
DEFAULT_MODEL_PATH = Path(__file__).parent / "assets" / "ict_face_light.npz"
_MIDLINE_CM = 1e-3


@dataclass(frozen=True, eq=False)
class FaceModel:
    """A linear face model with everything the pipeline needs besides the bases.

    Attributes:
        name: human-readable name, e.g. ``"ICT-FaceKit Light (face area)"``.
        mean: (N, 3) mean shape in cm.
        identity_basis: (K_id, N, 3) identity offsets per unit weight.
        expression_basis: (K_exp, N, 3) expression offsets per unit weight.
        expression_names: K_exp names (ARKit names for the default model).
        expression_prior: ``"blendshape"`` or ``"gaussian"`` (see the module docstring).
        triangles: (T, 3) vertex ids, counter-clockwise seen from the front.
        landmarks68: (68,) Multi-PIE 68-point vertex ids (the fixed-vertex "3D" convention).
        contour_right: candidate vertex ids for the silhouette jaw landmarks 0–7 (subject's right).
        contour_left: candidate vertex ids for the silhouette jaw landmarks 9–16 (subject's left).
        face_area: vertex ids of the face area; the PNCC code is normalized over them.
        source: where the model came from (file, licence); stored with it.
    Derived (computed, not stored):
        side: (N,) int8, -1 on the subject's right (x < 0), +1 on the left, 0 on the midline.
        pncc: (N, 3) mean shape normalized to [0, 1] per axis over the face area.
    """

    name: str
    mean: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    expression_names: tuple[str, ...]
    expression_prior: str
    triangles: np.ndarray
    landmarks68: np.ndarray
    contour_right: np.ndarray
    contour_left: np.ndarray
    face_area: np.ndarray
    source: str = ""
    _torch_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arrays = {
            "mean": (self.mean, np.float32),
            "identity_basis": (self.identity_basis, np.float32),
            "expression_basis": (self.expression_basis, np.float32),
            "triangles": (self.triangles, np.int64),
            "landmarks68": (self.landmarks68, np.int64),
            "contour_right": (self.contour_right, np.int64),
            "contour_left": (self.contour_left, np.int64),
            "face_area": (self.face_area, np.int64),
        }
        for key, (value, dtype) in arrays.items():
            object.__setattr__(self, key, np.array(value, dtype=dtype))  # a private copy
        object.__setattr__(self, "expression_names", tuple(str(n) for n in self.expression_names))
        self._validate()

    def _validate(self) -> None:
        def fail(problem: str) -> None:
            raise ModelFileError(f"face model '{self.name}': {problem}")

        if self.mean.ndim != 2 or self.mean.shape[1] != 3 or len(self.mean) < 3:
            fail(f"mean must have shape (N, 3) with N >= 3, got {self.mean.shape}")
        n = len(self.mean)
        for key in ("identity_basis", "expression_basis"):
            basis = getattr(self, key)
            if basis.ndim != 3 or basis.shape[1:] != (n, 3):
                fail(f"{key} must have shape (K, {n}, 3), got {basis.shape}")
        if len(self.expression_names) != len(self.expression_basis):
            fail(f"{len(self.expression_names)} expression names for {len(self.expression_basis)} expressions")
        if self.expression_prior not in EXPRESSION_PRIORS:
            fail(f"expression_prior must be one of {EXPRESSION_PRIORS}, got '{self.expression_prior}'")
        for key in ("mean", "identity_basis", "expression_basis"):
            if not np.isfinite(getattr(self, key)).all():
                fail(f"{key} contains NaN or infinite values")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3 or len(self.triangles) == 0:
            fail(f"triangles must have shape (T, 3) with T >= 1, got {self.triangles.shape}")
        if self.landmarks68.shape != (68,):
            fail(f"landmarks68 must have 68 vertex ids, got shape {self.landmarks68.shape}")
        for key in ("triangles", "landmarks68", "contour_right", "contour_left", "face_area"):
            ids = getattr(self, key)
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                fail(f"{key} holds vertex ids outside [0, {n})")
        if self.face_area.size < 3:
            fail("face_area must hold at least 3 vertices")

    # --- sizes -------------------------------------------------------------------------------------------

    @property
    def n_vertices(self) -> int:
        return len(self.mean)

    @property
    def n_identity(self) -> int:
        return len(self.identity_basis)

    @property
    def n_expression(self) -> int:
        return len(self.expression_basis)

    # --- derived per-vertex data -------------------------------------------------------------------------

    @functools.cached_property
    def side(self) -> np.ndarray:
        """(N,) int8: -1 for the subject's right (x < 0), +1 for the left, 0 on the midline."""
        x = self.mean[:, 0]
        return np.where(x > _MIDLINE_CM, 1, np.where(x < -_MIDLINE_CM, -1, 0)).astype(np.int8)

    @functools.cached_property
    def pncc(self) -> np.ndarray:
        """(N, 3) float32 PNCC code: the mean shape normalized to [0, 1] per axis over the face area.

        Vertices outside the face area may fall outside [0, 1]."""
        face = self.mean[self.face_area]
        low, high = face.min(axis=0), face.max(axis=0)
        return ((self.mean - low) / np.maximum(high - low, 1e-12)).astype(np.float32)

    # --- torch views -------------------------------------------------------------------------------------

    def torch_tensors(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
        """Cached torch copies: ``mean`` (N, 3), ``basis`` (N, 3, K_id + K_exp), the same basis stored mode
        by mode as ``basis_modes_first`` (cprfa.model.projection.modes_first) and ``pncc`` (N, 3).

        The basis stacks identity then expression modes, matching the layout of the coefficient vector α.
        Normal tensors even when first asked for in inference mode, so that autograd can use them later."""
        key = (str(torch.device(device)), dtype)
        if key not in self._torch_cache:
            modes = np.concatenate([self.identity_basis, self.expression_basis], axis=0)  # (K, N, 3)
            with torch.inference_mode(False):
                self._torch_cache[key] = {
                    "mean": torch.tensor(self.mean, dtype=dtype, device=device),
                    "basis": torch.as_tensor(np.ascontiguousarray(modes.transpose(1, 2, 0)), dtype=dtype,
                                             device=device),
                    "basis_modes_first": torch.as_tensor(modes, dtype=dtype, device=device).permute(1, 2, 0),
                    "pncc": torch.tensor(self.pncc, dtype=dtype, device=device),
                    "triangles": torch.tensor(self.triangles, device=device),
                }
        return self._torch_cache[key]

    # --- file format -------------------------------------------------------------------------------------

    def save(self, path: str | Path, compact: bool = False) -> str:
        """Write the model as a deterministic ``.npz`` (same model, same bytes); return its sha256.

        ``compact`` stores the bases as float16 (max error about 5e-4 of a unit for the ICT model), which
        halves the file; the mean stays float32."""
        basis_dtype = np.float16 if compact else np.float32
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "expression_prior": self.expression_prior,
            "expression_names": list(self.expression_names),
            "source": self.source,
            "units": "cm",
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            "mean": self.mean,
            "identity_basis": self.identity_basis.astype(basis_dtype),
            "expression_basis": self.expression_basis.astype(basis_dtype),
            "triangles": self.triangles.astype(np.int32),
            "landmarks68": self.landmarks68.astype(np.int32),
            "contour_right": self.contour_right.astype(np.int32),
            "contour_left": self.contour_left.astype(np.int32),
            "face_area": self.face_area.astype(np.int32),
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, member.getvalue())
        data = buffer.getvalue()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> FaceModel:
        """Read a model written by ``save``; a missing, corrupt or foreign file raises ModelFileError."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"face model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ModelFileError(f"{path} is not a readable cprfa face model (.npz): {error}") from None
        try:
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ModelFileError(f"{path} is not a cprfa face model: no valid 'meta' entry") from None
        if meta.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{path} is not a cprfa face model (format '{meta.get('format')}')")
        if meta.get("version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{path} has face-model format version {meta.get('version')}; this cprfa reads {FORMAT_VERSION}"
            )
        required = ("mean", "identity_basis", "expression_basis", "triangles", "landmarks68",
                    "contour_right", "contour_left", "face_area")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise ModelFileError(f"{path} lacks the arrays {missing}")
        return cls(
            name=meta["name"],
            expression_names=tuple(meta["expression_names"]),
            expression_prior=meta["expression_prior"],
            source=meta.get("source", ""),
            **{key: arrays[key] for key in required},
        )


@functools.lru_cache(maxsize=1)
def default_face_model() -> FaceModel:
    """The bundled model derived from ICT-FaceKit Light (MIT), built by ``cprfa build-model``."""
    return FaceModel.load(DEFAULT_MODEL_PATH)
