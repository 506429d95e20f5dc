"""Evaluation metrics (DESIGN.md conventions)."""

from __future__ import annotations

import numpy as np

FAILURE_NME = 10.0
YAW_BUCKETS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))  # |yaw| in degrees: [0, 30], (30, 60], (60, 90]


def yaw_bucket(yaw_degrees) -> np.ndarray:
    """Index into YAW_BUCKETS of each |yaw| (beyond 90° counts in the last). Shape: (B,) -> (B,) int."""
    return np.digitize(np.abs(np.asarray(yaw_degrees, np.float64)), [high for _, high in YAW_BUCKETS[:-1]], right=True)


def nme(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Normalized mean error in %: mean point distance over sqrt(w·h) of the target points' tight box.

    Shape: predicted and target (B, N, 2) -> (B,)."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if predicted.shape != target.shape or predicted.ndim != 3 or predicted.shape[-1] != 2:
        raise ValueError(f"predicted and target must both be (B, N, 2), got {predicted.shape}, {target.shape}")
    size = np.sqrt(np.prod(target.max(axis=1) - target.min(axis=1), axis=1))
    return 100.0 * np.linalg.norm(predicted - target, axis=-1).mean(axis=1) / size


def summarize(errors: np.ndarray) -> dict[str, float]:
    """Mean, median, 90th percentile and failure rate (NME > 10 %) of per-image NMEs in %."""
    errors = np.asarray(errors, np.float64)
    return {
        "images": len(errors),
        "mean": float(errors.mean()),
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
        "failure_rate": float(100.0 * (errors > FAILURE_NME).mean()),
    }
