"""DAFI accuracy (paper §3.3, Table 1): NME and average detection rate (ADR) of the vertices retrieved from
the predicted DAFI, for vertex sets (the 68 landmark vertices, all face vertices, the C selected by CPR), by
|yaw| bucket; and the landmark head's 68-point NME.

Per face and vertex set: the detection rate is detected / all vertices of the set; the NME is the mean
distance of the detected vertices to where the ground-truth parameters put them, over sqrt(w·h) of the
ground-truth landmark box (DESIGN.md), in %. A face fails when its NME > 10 % or its detection rate < 10 %
(a face with no vertex of the set detected has no NME and fails). Bucket cells are means over the faces
of the bucket; "balanced" is the mean of the bucket means, "std" their standard deviation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cprfa.dafi.predict import DafiEstimator, DafiPrediction
from cprfa.dafi.retrieval import ObservedPoints, VertexRetriever
from cprfa.eval.metrics import FAILURE_NME, YAW_BUCKETS, nme, yaw_bucket
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import image_vertices

FAILURE_DETECTION = 10.0  # %


@dataclass(frozen=True, eq=False)
class ObservedBatch:
    """One batch of ``observe``: the faces ``start:stop``, the prediction, the retrieved vertices, and each
    vertex's position where the ground-truth parameters put it, truth (b, N, 2) crop pixels, and its distance to
    the retrieved one, error (b, N) in % of the face size."""

    start: int
    stop: int
    prediction: DafiPrediction
    observed: ObservedPoints
    truth: np.ndarray
    error: np.ndarray


def observe(estimator: DafiEstimator, faces, model: FaceModel, batch_size: int = 32) -> Iterator[ObservedBatch]:
    """Run the HS-U-Net and vertex retrieval over built faces (cprfa.train.dafi.FaceArrays at the estimator's
    input size, with detail crops at its ``detail_size`` when it refines its landmarks), batch by batch, with the estimator's calibration of the retrieved positions. The face size is
    sqrt(w·h) of the ground-truth landmark box."""
    retriever = VertexRetriever(model)
    for start in range(0, len(faces), batch_size):
        stop = min(start + batch_size, len(faces))
        detail = None if faces.detail is None else faces.detail[start:stop]
        prediction = estimator.predict(faces.images[start:stop], detail=detail)
        observed = retriever(prediction.dafi, prediction.confident, offset=estimator.vertex_offset)
        truth = image_vertices(model, torch.from_numpy(faces.params[start:stop]).double())[..., :2].numpy()
        targets = faces.landmarks[start:stop]
        size = np.sqrt(np.prod(targets.max(axis=1) - targets.min(axis=1), axis=1))
        error = (np.linalg.norm(observed.positions - truth, axis=-1) / size[:, None] * 100).astype(np.float32)
        yield ObservedBatch(start, stop, prediction, observed, truth, error)


def dafi_errors(estimator: DafiEstimator, faces, batch_size: int = 32, model: FaceModel | None = None,
                vertex_sets: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-face errors on ``faces`` (cprfa.train.dafi.FaceArrays at the estimator's input size).

    Returns (n,) arrays: landmark_nme_per_face (the landmark head), and for each vertex set ``name`` (default
    "all" and "68") ``{name}_nme`` (NaN where none detected) and ``{name}_detection`` (%); plus
    vertex_nme_per_face and detection_rate_per_face (the "all" set) and yaw (degrees)."""
    model = model or default_face_model()
    vertex_sets = vertex_sets or {"all": np.arange(model.n_vertices), "68": np.asarray(model.landmarks68)}
    result = {key: [] for key in ["landmark_nme_per_face"] + [f"{name}_{kind}" for name in vertex_sets
                                                               for kind in ("nme", "detection")]}
    for batch in observe(estimator, faces, model, batch_size):
        result["landmark_nme_per_face"].append(nme(batch.prediction.landmarks, faces.landmarks[batch.start:batch.stop]))
        for name, ids in vertex_sets.items():
            detected = batch.observed.detected[:, ids]
            count = detected.sum(axis=1)
            with np.errstate(invalid="ignore"):
                result[f"{name}_nme"].append(np.where(count > 0, (batch.error[:, ids] * detected).sum(1) / count,
                                                      np.nan))
            result[f"{name}_detection"].append(100.0 * count / len(ids))
    errors = {key: np.concatenate(value) if value else np.zeros(0) for key, value in result.items()}
    errors["vertex_nme_per_face"] = errors["all_nme"]
    errors["detection_rate_per_face"] = errors["all_detection"]
    errors["yaw"] = np.degrees(faces.params[:, 1]).astype(np.float64)
    return errors


def bucket_table(errors: dict[str, np.ndarray], vertex_sets: list[str]) -> list[dict]:
    """Rows of Table 1 from ``dafi_errors``: per set, NME / ADR per |yaw| bucket, balanced mean, std of the
    bucket means, plain mean over faces, and the failure rate (%). Also the landmark head's row."""
    bucket = yaw_bucket(errors["yaw"])
    rows = []
    for name in vertex_sets:
        error, detection = errors[f"{name}_nme"], errors[f"{name}_detection"]
        failed = ~(error <= FAILURE_NME) | (detection < FAILURE_DETECTION)
        rows.append(_row(f"DAFI ({name})", error, detection, failed, bucket))
    landmark = errors["landmark_nme_per_face"]
    rows.append(_row("landmark head (68)", landmark, np.full(len(landmark), 100.0), landmark > FAILURE_NME, bucket))
    return rows


def _row(name, error, detection, failed, bucket) -> dict:
    cells = [(float(np.nanmean(error[bucket == b])), float(detection[bucket == b].mean()), int((bucket == b).sum()))
             if (bucket == b).any() else (np.nan, np.nan, 0) for b in range(len(YAW_BUCKETS))]
    present = [cell for cell in cells if cell[2]]
    return {
        "name": name, "buckets": cells,
        "balanced": (float(np.mean([c[0] for c in present])), float(np.mean([c[1] for c in present]))),
        "std": (float(np.std([c[0] for c in present])), float(np.std([c[1] for c in present]))),
        "mean": (float(np.nanmean(error)), float(detection.mean())),
        "failure": float(100.0 * failed.mean()),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown: NME (%) / ADR (%) per bucket (faces in the header), balanced mean, std, plain mean, failure."""
    counts = [cell[2] for cell in rows[0]["buckets"]]
    header = [f"[{lo:.0f}°, {hi:.0f}°] (n={n})" for (lo, hi), n in zip(YAW_BUCKETS, counts, strict=True)]
    lines = ["| vertices | " + " | ".join(header) + " | balanced mean | std | mean | failure % |",
             "|---" * (len(header) + 5) + "|"]
    for row in rows:
        cells = [_cell(cell) for cell in row["buckets"]] + [_cell(row["balanced"]), _cell(row["std"]), _cell(row["mean"])]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['failure']:.2f} |")
    return "\n".join(lines)


def _cell(cell: tuple) -> str:
    return "–" if np.isnan(cell[0]) else f"{cell[0]:.2f} / {cell[1]:.1f}"
