"""Settings of the training commands (kept free of heavy imports: the CLI reads their defaults)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainSettings:
    data: str  # folder of cprfa data build output (training splits)
    out: str
    validation: str  # folder of a cprfa data build of the evaluation split
    splits: tuple[str, ...] = ("afw", "helen_train")
    validation_split: str = "helen_test"
    validation_faces: int = 64
    input_size: int = 128
    widths: tuple[int, ...] = (8, 16, 32, 96, 192)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    final_lr_ratio: float = 0.02
    landmark_weight: float = 5.0
    workers: int = 1
    seed: int = 0
    threads: int = 2
    limit: int = 0  # use only the first N training faces (0: all), for quick runs and tests
    init: str = ""  # HS-U-Net weights to start from ("": random)
    calibration_zoom: float = 0.0  # crop zoom of the faces the calibration measures (0: cprfa align's)
    train_zoom: float = 1.0  # crop zoom of the faces trained and validated on (1: the built crops)


@dataclass(frozen=True)
class CPRTrainSettings:
    out: str
    real: str = ""  # folder of cprfa data build output to add real HS-U-Net point sets ("": synthetic only)
    splits: tuple[str, ...] = ("afw", "helen_train")
    real_share: float = 0.25  # of each batch, when ``real`` is given
    real_holdout: float = 0.1  # share of the real build's photos kept out of training, to validate on
    landmarks_absent: float = 0.2  # share of synthetic faces trained without a sparse source
    landmark_noise: tuple[float, float] = (0.01, 0.05)  # synthetic landmarks' σ × face size, uniform per face
    dafi_weights: str = ""  # HS-U-Net weights for the real point sets ("": the shipped ones)
    selection: str = ""  # vertex selection ("": the shipped one)
    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    hidden: int = 256
    stages: int = 3
    rounds: int = 2  # 1: round one alone; 2: with consistency-aware updating
    fusion: bool = True  # a CPR-C2 branch on the sparse landmarks
    kappa: float = 0.1  # share of detected DAFI vertices in CAPU's error pool
    path_samples: int = 5  # M: CAPU tries 2M points along each step
    init: str = ""  # aligner weights to start from ("": random)
    epochs: int = 12
    samples_per_epoch: int = 4096
    validation_faces: int = 256
    batch_size: int = 32
    lr: float = 1e-3
    final_lr_ratio: float = 0.05
    warmup_steps: int = 0  # batches over which the learning rate rises linearly to its schedule
    beta_only: bool = False  # train only CAPU's β networks; the regressors stay as --init has them
    step_jitter: float = 0.0  # J: round two's steps scaled by exp(U(-J, J)) per face while training
    workers: int = 1
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class RefinerTrainSettings:
    data: str  # folder of cprfa data build output (training splits)
    out: str
    validation: str  # folder of a cprfa data build of the evaluation split
    splits: tuple[str, ...] = ("afw", "helen_train")
    validation_split: str = "helen_test"
    validation_faces: int = 0  # 0: all
    dafi_weights: str = ""  # the HS-U-Net whose points are refined ("": the shipped one)
    patch_size: int = 24
    pitches: tuple[float, ...] = (1.0, 3.0)
    widths: tuple[int, ...] = (24, 32, 64, 96)
    hidden: int = 128
    jitter: float = 1.0  # detail pixels
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    final_lr_ratio: float = 0.02
    workers: int = 1
    seed: int = 0
    threads: int = 2
    limit: int = 0  # only the first N training faces (0: all)
    init: str = ""  # refiner weights to start from ("": random)


@dataclass(frozen=True)
class DetectorTrainSettings:
    data: str  # folder of cprfa data build output with profiled views (--profile K)
    out: str
    validation: str = ""  # a --large-pose build of helen_test ("": none)
    photos: str = ""  # the 300-W folder, for the helen_test photos ("": none)
    splits: tuple[str, ...] = ("afw", "helen_train")
    init: str = ""  # detector weights to start from ("": MediaPipe's, as converted)
    epochs: int = 6
    samples_per_epoch: int = 6000
    batch_size: int = 32
    lr: float = 1e-4
    final_lr_ratio: float = 0.05
    workers: int = 1
    seed: int = 0
    threads: int = 2
    limit: int = 0  # only the first N training crops (0: all)


def starting_record(init: str) -> dict | None:
    """The record beside the weights a run starts from, if there is one: ``<weights>.record.json`` as shipped,
    or the ``record.json`` of the run folder that wrote them; not a record whose sha256 is another file's (a
    run folder's record is its best weights', not its ``checkpoint.pt``'s)."""
    weights = Path(init)
    if not init or not weights.is_file():
        return None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    for path in (weights.with_suffix(".record.json"), weights.parent / "record.json"):
        if path.is_file() and (record := json.loads(path.read_text())).get("sha256", digest) == digest:
            return record
    return None
