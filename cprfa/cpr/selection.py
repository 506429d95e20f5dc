"""Vertex selection for the CPRs (paper §2.2, "Point-set selection for CPR").

Each vertex is scored on a reference set of predicted DAFIs with known ground truth by two probabilities:

- p1, how often it is detected (retrieved from the DAFI) over the reference faces;
- p2, how often a detection is accurate: the fraction of its detections within ``ACCURATE_NME`` % of the face
  size (sqrt(w·h) of the ground-truth landmark box) of where the ground-truth parameters put it.

Vertices are ranked by p1 · p2 (the chance to be found and well placed; ties by p1). The C selected split
into three channels of C/2 (DESIGN.md): channel 1 the best C/2 of the subject's right half (x < 0),
channel 2 the best C/2 of the left half (x ≥ 0: the midline goes left), channel 3 every other vertex of the
first two, alternating sides; each channel's order is then shuffled once with the seed. The reference set
must not be the evaluation set: the command uses the training faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.model.face_model import FaceModel

ACCURATE_NME = 2.5  # %
SELECTION_FORMAT = "cprfa-vertex-selection"
DEFAULT_SELECTION = Path(__file__).parent / "assets" / "selection_512.npz"


@dataclass(frozen=True, eq=False)
class VertexSelection:
    """channels (3, C/2) int64 vertex ids in CPR order; p1, p2 (N,) float32; seed; reference (a description)."""

    channels: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    seed: int
    reference: str

    @property
    def count(self) -> int:
        return 2 * self.channels.shape[1]

    @property
    def vertex_ids(self) -> np.ndarray:
        """The C distinct selected vertices (channels 1 and 2)."""
        return np.concatenate(self.channels[:2])

    def save(self, path: str | Path) -> None:
        np.savez(path, format=SELECTION_FORMAT, channels=self.channels, p1=self.p1, p2=self.p2,
                 seed=self.seed, reference=self.reference)

    @classmethod
    def load(cls, path: str | Path) -> VertexSelection:
        path = Path(path)
        try:
            with np.load(path) as data:
                if str(data["format"]) != SELECTION_FORMAT:
                    raise ModelFileError(f"{path} is not a cprfa vertex selection")
                return cls(data["channels"].astype(np.int64), data["p1"], data["p2"], int(data["seed"]),
                           str(data["reference"]))
        except (OSError, ValueError, KeyError) as error:
            raise ModelFileError(f"{path} is not a readable cprfa vertex selection ({error})") from None


def vertex_statistics(detected: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p1 and p2 of every vertex from a reference set.

    Shape: detected (F, N) bool, error (F, N) distance to the ground truth in % of the face size
    -> p1, p2 (N,) float32."""
    accurate = detected & (error < ACCURATE_NME)
    hits = detected.sum(axis=0)
    p1 = hits / max(len(detected), 1)
    p2 = np.divide(accurate.sum(axis=0), hits, out=np.zeros(hits.shape), where=hits > 0)
    return p1.astype(np.float32), p2.astype(np.float32)


def reference_statistics(estimator, faces, model: FaceModel) -> tuple[np.ndarray, np.ndarray]:
    """p1 and p2 measured with an HS-U-Net (cprfa.dafi.predict.DafiEstimator) on built faces
    (cprfa.train.dafi.FaceArrays)."""
    from cprfa.dafi.evaluate import observe

    batches = list(observe(estimator, faces, model))
    return vertex_statistics(np.concatenate([batch.observed.detected for batch in batches]),
                             np.concatenate([batch.error for batch in batches]))


def select_vertices(model: FaceModel, p1: np.ndarray, p2: np.ndarray, count: int = 512, seed: int = 0,
                    reference: str = "") -> VertexSelection:
    """The C = ``count`` best vertices in three shuffled channels (module docstring)."""
    p1, p2 = np.asarray(p1, np.float32), np.asarray(p2, np.float32)
    if p1.shape != (model.n_vertices,) or p2.shape != p1.shape:
        raise InvalidInputError(f"p1 and p2 must be ({model.n_vertices},), got {p1.shape} and {p2.shape}")
    if count < 4 or count % 4:
        raise InvalidInputError(f"count must be a positive multiple of 4, got {count}")
    half = count // 2
    right = model.mean[:, 0] < 0
    ranked = np.lexsort((-p1, -(p1 * p2)))  # best first
    sides = [ranked[right[ranked]][:half], ranked[~right[ranked]][:half]]
    if min(len(side) for side in sides) < half:
        raise InvalidInputError(f"the model has fewer than {half} vertices on a side; choose a smaller count")
    both = np.stack([sides[0][::2], sides[1][::2]], axis=1).reshape(-1)  # alternating sides, C/2 in all
    rng = np.random.default_rng(seed)
    channels = np.stack([rng.permutation(channel) for channel in (*sides, both)]).astype(np.int64)
    return VertexSelection(channels, p1, p2, seed, reference)
