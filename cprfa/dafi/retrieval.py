"""Vertex retrieval (paper §2.1): each foreground pixel's predicted code → the model vertex with the nearest
PNCC code (scipy cKDTree over the mean shape's normalized coordinates), accepted when closer than 0.01. A
vertex hit by several pixels takes the mean of their positions. The result is the observed point set Y^O.
The pipeline passes the pixels the HS-U-Net is confident are face (``DafiPrediction.confident``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cprfa.errors import InvalidInputError
from cprfa.model.face_model import FaceModel

MATCH_DISTANCE = 0.01
# From this many pixels on the KD-tree's query runs on every core; below, on one: scipy starts a Python thread per
# worker at each query, and with torch's threads still spinning after the HS-U-Net that start costs more than a
# face's ~10,000 pixels take (3.0 against 4.8 ms; even at about 30,000; 30 against 46 ms at 164,000).
PARALLEL_QUERIES = 25_000


@dataclass(frozen=True, eq=False)
class ObservedPoints:
    """Y^O for a batch: positions (B, N, 2) float32 in pixels (u right, v down, pixel corners; the pixel centre
    for a single hit; 0 where not detected), detected (B, N) bool, hits (B, N) int32 pixels per vertex."""

    positions: np.ndarray
    detected: np.ndarray
    hits: np.ndarray

    @property
    def detection_rate(self) -> np.ndarray:
        """(B,) fraction of the model's vertices detected."""
        return self.detected.mean(axis=1)


class VertexRetriever:
    """Built once per face model (the KD-tree over its N PNCC codes), then called on batches of DAFIs."""

    def __init__(self, model: FaceModel, max_distance: float = MATCH_DISTANCE):
        if not max_distance > 0:
            raise InvalidInputError(f"max_distance must be positive, got {max_distance}")
        self.n_vertices = model.n_vertices
        self.max_distance = max_distance
        self._tree = cKDTree(model.pncc.astype(np.float64))

    def __call__(self, dafi: np.ndarray, mask: np.ndarray, pixel_size: float = 1.0,
                 offset: np.ndarray | None = None) -> ObservedPoints:
        """Retrieve the vertices seen in each DAFI.

        ``pixel_size`` scales DAFI pixels to output pixels (e.g. 2 for a DAFI at half the crop's resolution);
        ``offset`` (N, 2) output pixels is subtracted from every detected vertex's position (the network's
        calibration, ``DafiEstimator.vertex_offset``).
        Shape: dafi (B, H, W, 3) codes in [0, 1], mask (B, H, W) bool -> ObservedPoints with N = model vertices."""
        dafi, mask = np.asarray(dafi), np.asarray(mask, dtype=bool)
        if dafi.ndim != 4 or dafi.shape[-1] != 3 or mask.shape != dafi.shape[:3]:
            raise InvalidInputError(f"dafi must be (B, H, W, 3) and mask (B, H, W), got {dafi.shape}, {mask.shape}")
        batch, n = len(dafi), self.n_vertices
        face, row, column = np.nonzero(mask)
        distance, vertex = self._tree.query(dafi[face, row, column].astype(np.float64),
                                            distance_upper_bound=self.max_distance,
                                            workers=-1 if len(face) >= PARALLEL_QUERIES else 1)
        matched = distance < self.max_distance
        slot = face[matched] * n + vertex[matched]
        hits = np.bincount(slot, minlength=batch * n)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.bincount(slot, weights=column[matched] + 0.5, minlength=batch * n) / hits
            v = np.bincount(slot, weights=row[matched] + 0.5, minlength=batch * n) / hits
        positions = np.nan_to_num(np.stack([u, v], axis=-1)).reshape(batch, n, 2) * pixel_size
        detected = (hits > 0).reshape(batch, n)
        if offset is not None:
            if np.shape(offset) != (n, 2):
                raise InvalidInputError(f"offset must be ({n}, 2), got {np.shape(offset)}")
            positions -= np.where(detected[..., None], offset, 0.0)
        return ObservedPoints(positions.astype(np.float32), detected, hits.reshape(batch, n).astype(np.int32))
