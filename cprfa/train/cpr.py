"""Train the CPR aligner (``cprfa train cpr``): both rounds and the fusion with sparse landmarks (paper §2.3–2.5).

Data: synthetic point sets drawn afresh for every batch (cprfa.data.point_sets: random faces and poses up to
±90° of yaw, visibility from the renderer, occluders, drop-out, noise, outliers), deterministic from the seed,
the epoch and the batch index. With ``--real``, a share of each batch is real: the HS-U-Net's retrieved
vertices on the faces of a ``cprfa data build`` folder, with their pseudo ground-truth parameters (computed
once and cached in the output folder), further thinned by random occluders and drop-out. The sparse source
of fusion is, for synthetic faces, the true 2D-convention landmarks with noise and missing points drawn by
cprfa.cpr.sparse (some faces get none); for real faces, the landmark head's own points on them.

Loss — on the reprojected vertices, one term per regressor step (both rounds), each with the other groups at
their true values: after the step of group g, its parameters replace g's in the true parameter vector, and
the loss is the mean 2D distance between a fixed set of vertices (the 68 landmarks and every 10th face
vertex) posed by that vector and by the truth, in % of the face size. Why vertices and not parameters: one
unit means the same on every group (an angle counts by how far it moves the face, so yaw errors of a profile
and a frontal face weigh what they show), and identity or expression modes count by their visible effect
rather than by coefficient distance. Why the other groups at their truth: each regressor is judged on its own
group, the disentanglement of the paper's sequential updates; the order still matters through the inputs,
which are built from the parameters as the previous steps left them (gradients stop there, and flow through
the GRU states across stages). The translation step is the closed form and has nothing to learn. In round
two the step is β·Δ, so the same loss trains the β networks jointly with the regressors (paper §2.4).

``--init`` starts from another aligner's weights (round one's, say): round two goes on with round one's
regressors, so a trained round one is a head start (the shipped weights were made that way). Such a run
wants ``--warmup-steps``: ADAM's first steps move every weight by about the learning rate whatever its
gradient, and four steps at 10⁻³ took the shipped weights from 3.4 to 9.7 % on the validation set; a linear
rise of the learning rate over the first steps spares what the weights already know.

The β networks learn from the regressors' own steps, which in round two mostly fall short by a similar
share: a long joint run (the shipped weights' fifth) taught them to lengthen every step (β ≈ 1.06 for a step
70 % too long) rather than to read where along its path a step's error is least, the intuition of the
paper's Fig. 4a. ``--beta-only --step-jitter J`` then trains the β networks alone (the regressors and their
batch-norm statistics as ``--init`` has them), with each round-two step scaled by a random factor
exp(U(−J, J)) per face before its path is tried, so that short and long steps both occur.

Each epoch ends with a validation on fixed synthetic sets (the training distribution and the occluded test
distribution of the benchmark, with a sparse source, and the occluded one without) and, with ``--real``, on
the real faces held out of training (``--real-holdout``: a share of the build's photos, each with all its
faces and profiled views, picked by a hash of its name; their point sets as the HS-U-Net gives them, with
the landmark head as the sparse source, against their pseudo ground truth). Choices between runs can so be
made off helen_test, the reported set. The HS-U-Net itself was trained on these photos, and the figure
counts their profiled views against pseudo ground truth: it ranks aligners, it does not predict the test's.
Then a line in ``history.jsonl`` and ``checkpoint.pt``; the command resumes from it. The validation figure
goes up and down from epoch to epoch, so the epoch with the best one (``selection_score``) is kept as
``best.pt``; the end writes it as ``cpr.pt`` (float16, with its selection) with ``record.json`` to ship.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import time
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cprfa.cpr.consistency import pool_order
from cprfa.cpr.frame import NormalizedFrame
from cprfa.cpr.regressor import CPRAligner, CPRConfig, Step, aligner_input, load_aligner, save_aligner
from cprfa.cpr.selection import DEFAULT_SELECTION, VertexSelection
from cprfa.cpr.sparse import LandmarkSettings, synthetic_landmarks
from cprfa.data.point_sets import OCCLUDED_TEST, PointSetSettings, corrupt, synthetic_point_sets
from cprfa.errors import CprfaError
from cprfa.eval.metrics import nme
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import ParamLayout, landmarks_3d, project
from cprfa.train.common import decaying_adam, resume, save_checkpoint
from cprfa.train.settings import CPRTrainSettings, starting_record

LOSS_VERTEX_STRIDE = 10
REAL_THINNING = PointSetSettings(occlusion_probability=0.3, occlusion=(0.1, 0.4), dropout=(0.0, 0.3),
                                 noise=(0.0, 0.0), outliers=(0.0, 0.0))
REAL_LANDMARKS = LandmarkSettings(noise=(0.0, 0.01))  # the landmark head's own errors are there already
VALIDATION_LANDMARKS = LandmarkSettings(absent=0.0, noise=(0.03, 0.03), missing=(0.0, 0.0))
VALIDATION_SEED = 1_000_000


class PosedVertices:
    """The loss vertices (68 landmarks and every 10th face vertex) posed by parameters."""

    def __init__(self, model: FaceModel, device: str | torch.device = "cpu"):
        ids = torch.from_numpy(np.union1d(model.landmarks68, model.face_area[::LOSS_VERTEX_STRIDE])).to(device)
        tensors = model.torch_tensors(device)
        self.mean, self.basis = tensors["mean"][ids], tensors["basis"][ids]
        self.layout = ParamLayout.of(model)

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """Shape: (B, P) -> (B, M, 2)."""
        shape = self.mean + torch.einsum("vck,bk->bvc", self.basis, params[:, self.layout.alpha])
        return project(shape, params[:, :6])[..., :2]


def group_columns(layout: ParamLayout) -> dict[str, slice]:
    return {"alpha": layout.alpha, "rotation_xy": slice(0, 2), "rotation_z": slice(2, 3), "scale": slice(3, 4)}


def face_size(model: FaceModel, params: torch.Tensor) -> torch.Tensor:
    """sqrt(w·h) of the 68-landmark box (3D convention). Shape: (B, P) -> (B,)."""
    points = landmarks_3d(model, params)[..., :2]
    return (points.amax(dim=1) - points.amin(dim=1)).prod(dim=1).sqrt()


def step_losses(steps: list[Step], truth: torch.Tensor, posed: PosedVertices, size: torch.Tensor,
                columns: dict[str, slice]) -> dict[str, torch.Tensor]:
    """Per group, the mean over stages of the reprojected-vertex loss (module docstring), in %."""
    target = posed(truth)
    losses: dict[str, list[torch.Tensor]] = {}
    for step in steps:
        if step.group not in columns:
            continue
        cut = columns[step.group]
        mixed = torch.cat([truth[:, :cut.start], step.params[:, cut], truth[:, cut.stop:]], dim=1)
        error = torch.linalg.vector_norm(posed(mixed) - target, dim=-1).mean(dim=1) / size
        losses.setdefault(step.group, []).append(100 * error.mean())
    return {group: torch.stack(values).mean() for group, values in losses.items()}


class RealPointSets:
    """The HS-U-Net's point sets on built faces, normalized frame: points (F, N, 2) float16 over all model
    vertices, detected (F, N), the landmark head's points (F, 68, 2), params (F, P)."""

    def __init__(self, points: torch.Tensor, detected: torch.Tensor, landmarks: torch.Tensor, params: torch.Tensor):
        self.points, self.detected, self.landmarks, self.params = points, detected, landmarks, params

    @classmethod
    def build(cls, folder: str, splits: tuple[str, ...], weights: str, model: FaceModel, cache: Path) -> RealPointSets:
        if cache.is_file():
            content = torch.load(cache, weights_only=True)
            return cls(content["points"], content["detected"], content["landmarks"], content["params"])
        from cprfa.dafi.evaluate import observe
        from cprfa.dafi.predict import DafiEstimator
        from cprfa.train.dafi import load_faces

        estimator = DafiEstimator.from_file(weights or None)
        faces = load_faces(folder, splits, estimator.input_size, zoom=estimator.zoom,  # as cprfa align crops
                           detail=estimator.detail_size)
        frame = NormalizedFrame.for_crop(model, estimator.input_size)
        points, detected, landmarks = [], [], []
        for batch in tqdm(observe(estimator, faces, model), total=math.ceil(len(faces) / 32),
                          desc="HS-U-Net point sets", unit="batch"):
            points.append(frame.points_to_frame(torch.from_numpy(batch.observed.positions)).half())
            detected.append(torch.from_numpy(batch.observed.detected))
            landmarks.append(frame.points_to_frame(torch.from_numpy(batch.prediction.landmarks)))
        params = frame.params_to_frame(torch.from_numpy(faces.params).float())
        result = cls(torch.cat(points), torch.cat(detected), torch.cat(landmarks), params)
        torch.save({"points": result.points, "detected": result.detected, "landmarks": result.landmarks,
                    "params": result.params}, cache)
        return result

    def __len__(self) -> int:
        return len(self.params)

    def subset(self, keep: np.ndarray) -> RealPointSets:
        keep = torch.from_numpy(keep)
        return RealPointSets(self.points[keep], self.detected[keep], self.landmarks[keep], self.params[keep])


def face_photos(folder: str, splits: tuple[str, ...]) -> np.ndarray:
    """The photo of each face of a ``cprfa data build`` folder, in ``load_faces`` order: ``<split>/<photo>``,
    which a photo's faces (``<photo>_<face>``) and their profiled views (``…@yaw+51``) share."""
    photos = []
    for split in splits:
        for shard in sorted((Path(folder) / split).glob("shard_*.npz")):
            with np.load(shard) as data:
                photos += [f"{split}/{name.split('@')[0].rsplit('_', 1)[0]}" for name in data["names"]]
    return np.array(photos)


def held_out(photos: np.ndarray, share: float) -> np.ndarray:
    """Which faces (F,) belong to the ``share`` of the photos held out of training: those whose names hash
    lowest (CRC-32), the same on every machine and for every run."""
    unique = sorted(set(photos.tolist()), key=lambda photo: zlib.crc32(photo.encode()))
    return np.isin(photos, unique[:round(share * len(unique))])


class TrainingBatches(Dataset):
    """Batch ``i`` of an epoch: synthetic point sets plus, with real ones, a thinned real share, each with a
    sparse source (module docstring); returns the aligner's input and the true parameters."""

    def __init__(self, model: FaceModel, channels: torch.Tensor, settings: CPRTrainSettings,
                 real: RealPointSets | None):
        self.model, self.channels, self.settings, self.real = model, channels, settings, real
        self.landmark_settings = replace(LandmarkSettings(), absent=settings.landmarks_absent,
                                         noise=settings.landmark_noise)
        self.epoch = 0

    def __len__(self) -> int:
        return self.settings.samples_per_epoch // self.settings.batch_size

    def __getitem__(self, index: int):
        seed = (self.settings.seed * 1_000_003 + self.epoch) * 100_003 + index
        generator = torch.Generator().manual_seed(seed)
        n_real = round(self.settings.real_share * self.settings.batch_size) if self.real is not None else 0
        sets = synthetic_point_sets(self.model, self.settings.batch_size - n_real, seed)
        truth = landmarks_2d(self.model, sets.params)[..., :2]
        landmarks, given = synthetic_landmarks(truth, sets.face_size, generator, self.landmark_settings)
        points, detected, params = sets.points, sets.detected, sets.params
        if n_real:
            pick = torch.randint(len(self.real), (n_real,), generator=generator)
            box = landmarks_3d(self.model, self.real.params[pick])[..., :2]
            low, high = box.amin(dim=1), box.amax(dim=1)
            real_points, real_detected = corrupt(self.real.points[pick].float(), self.real.detected[pick], low, high,
                                                 generator, REAL_THINNING)
            real_landmarks, real_given = synthetic_landmarks(self.real.landmarks[pick], (high - low).prod(dim=1).sqrt(),
                                                             generator, REAL_LANDMARKS)
            points, detected = torch.cat([points, real_points]), torch.cat([detected, real_detected])
            landmarks, given = torch.cat([landmarks, real_landmarks]), torch.cat([given, real_given])
            params = torch.cat([params, self.real.params[pick]])
        order = pool_order(self.model.n_vertices, generator)
        return aligner_input(points, detected, self.channels, self.settings.kappa, landmarks, given, order), params


def validation_sets(model: FaceModel, channels: torch.Tensor, count: int, kappa: float,
                    real: RealPointSets | None = None) -> dict:
    """Fixed synthetic sets: the training distribution and the occluded test distribution, with a sparse
    source of 3 % noise, and the occluded one without a sparse source; and the held-out real faces, if any."""
    sets = {}
    if real is not None and len(real):
        sets["real"] = (aligner_input(real.points, real.detected, channels, kappa, real.landmarks), real.params)
    for offset, (name, settings) in enumerate((("synthetic", PointSetSettings()), ("occluded", OCCLUDED_TEST))):
        point_sets = synthetic_point_sets(model, count, VALIDATION_SEED + offset, settings)
        truth = landmarks_2d(model, point_sets.params)[..., :2]
        landmarks, given = synthetic_landmarks(truth, point_sets.face_size,
                                               torch.Generator().manual_seed(VALIDATION_SEED + offset),
                                               VALIDATION_LANDMARKS)
        sets[name] = (aligner_input(point_sets.points, point_sets.detected, channels, kappa, landmarks, given),
                      point_sets.params)
        if name == "occluded":
            sets["occluded_no_landmarks"] = (aligner_input(point_sets.points, point_sets.detected, channels, kappa),
                                             point_sets.params)
    return sets


@torch.no_grad()
def evaluate_aligner(aligner: CPRAligner, model: FaceModel, sets: dict, batch_size: int = 64) -> dict:
    """Per set: the 68-landmark NME (%, 3D convention) after all rounds and the mean absolute angle errors."""
    metrics, device = {}, next(aligner.parameters()).device
    for name, (inputs, truth) in sets.items():
        params = torch.cat([aligner(inputs[i:i + batch_size].to(device))[-1].params.cpu()
                            for i in range(0, len(truth), batch_size)])
        errors = nme(landmarks_3d(model, params)[..., :2].numpy(), landmarks_3d(model, truth)[..., :2].numpy())
        angles = torch.rad2deg((params[:, :3] - truth[:, :3]).abs()).mean(dim=0)
        metrics[f"{name}_nme"] = float(errors.mean())
        metrics[f"{name}_angle_error"] = [round(float(value), 3) for value in angles]
    return metrics


def initialize_from(aligner: CPRAligner, path: str) -> None:
    """Start from another aligner's weights (e.g. round one's): every tensor of the same name and shape; the
    batch norms of stages the source does not have take its last stage's."""
    source = load_aligner(path, aligner.model)
    source_state, state = source.state_dict(), aligner.state_dict()
    last = source.config.rounds * source.config.stages - 1
    for key, value in state.items():
        match = re.fullmatch(r"(.*\.norms\.)(\d+)(\..*)", key)
        origin = key if key in source_state or match is None else f"{match[1]}{last}{match[3]}"
        if origin in source_state and source_state[origin].shape == value.shape:
            state[key] = source_state[origin]
    aligner.load_state_dict(state)


def train_cpr(settings: CPRTrainSettings, progress: bool = True, device: str = "cpu") -> dict:
    """Train (or resume) the aligner and return the record of the run."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    model = default_face_model()
    selection = VertexSelection.load(settings.selection or DEFAULT_SELECTION)
    channels = torch.from_numpy(selection.channels)
    config = CPRConfig(tuple(settings.widths), settings.hidden, settings.stages, settings.rounds, settings.fusion,
                       path_samples=settings.path_samples, kappa=settings.kappa)
    aligner = CPRAligner(model, channels, config)
    if settings.init:
        initialize_from(aligner, settings.init)
    aligner.to(device)
    for name, parameter in aligner.named_parameters():
        parameter.requires_grad_(not settings.beta_only or _is_beta_network(name))
    optimizer, scheduler = decaying_adam([parameter for parameter in aligner.parameters() if parameter.requires_grad],
                                         settings.lr, settings.final_lr_ratio, settings.epochs)
    checkpoint_path = out / "checkpoint.pt"
    start_epoch, seconds, history = resume(checkpoint_path, settings, aligner, "aligner", optimizer, scheduler, device)
    history = history[:start_epoch]
    real = real_validation = None
    if settings.real:
        every = RealPointSets.build(settings.real, tuple(settings.splits), settings.dafi_weights, model,
                                    out / "real_point_sets_full.pt")
        photos = face_photos(settings.real, tuple(settings.splits))
        if len(photos) != len(every):
            raise CprfaError(f"{out / 'real_point_sets_full.pt'} holds {len(every)} faces, {settings.real} "
                             f"{len(photos)}: it was made from another build; delete it")
        held = held_out(photos, settings.real_holdout)
        real, real_validation = every.subset(~held), every.subset(held)
    validation = validation_sets(model, channels, settings.validation_faces, settings.kappa, real_validation)
    posed, columns = PosedVertices(model, device), group_columns(ParamLayout.of(model))
    dataset = TrainingBatches(model, channels, settings, real)
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        dataset.epoch = epoch
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=settings.workers,
                            worker_init_fn=_one_thread, persistent_workers=False, pin_memory=device != "cpu")
        aligner.train()
        if settings.beta_only:  # the regressors' batch norms keep their statistics
            for name, module in aligner.named_children():
                module.train(_is_beta_network(name))
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=not progress)
        scheduled = optimizer.param_groups[0]["lr"]
        for index, (inputs, truth) in enumerate(bar):
            if (step := epoch * len(loader) + index) < settings.warmup_steps:
                _set_lr(optimizer, scheduled * (step + 1) / settings.warmup_steps)
            inputs, truth = inputs.to(device), truth.to(device)
            steps = aligner(inputs, step_jitter=settings.step_jitter)
            losses = step_losses(steps, truth, posed, face_size(model, truth), columns)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(aligner.parameters(), 10.0)
            optimizer.step()
            for key, value in {"loss": loss, **losses}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix({key: f"{float(value.detach()):.2f}" for key, value in losses.items()})
        _set_lr(optimizer, scheduled)
        scheduler.step()
        metrics = evaluate_aligner(aligner.eval(), model, validation)
        seconds += time.perf_counter() - started
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 1),
                 **{f"train_{key}": round(value / max(len(loader), 1), 4) for key, value in sums.items()},
                 **{f"val_{key}": value for key, value in metrics.items()}}
        history.append(entry)
        if min(history, key=selection_score) is entry:
            save_aligner(aligner, out / "best.pt")
        held_out_real = f", held-out real {metrics['real_nme']:.2f} %" if "real_nme" in metrics else ""
        print(f"epoch {epoch + 1}: loss {entry.get('train_loss', math.nan):.3f}, validation 68-point NME "
              f"{metrics['synthetic_nme']:.2f} % (occluded {metrics['occluded_nme']:.2f} %{held_out_real})",
              flush=True)
        save_checkpoint(checkpoint_path, settings, aligner, "aligner", optimizer, scheduler, epoch, seconds, history)
    best = out / "best.pt"
    if best.is_file() and history:
        save_aligner(load_aligner(best, model), out / "cpr.pt")  # in the current file format
        shipped = min(history, key=selection_score)
    else:
        save_aligner(aligner.cpu(), out / "cpr.pt")
        shipped = history[-1] if history else {}
    record = {
        "weights": "cpr.pt", "network": aligner.config.to_dict(), "settings": asdict(settings),
        "parameters": sum(parameter.numel() for parameter in aligner.parameters()),
        "selection": selection.reference, "selection_seed": selection.seed, "vertices": selection.count,
        "real_faces": len(real) if real is not None else 0,
        "real_validation_faces": len(real_validation) if real_validation is not None else 0, "train_seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {settings.threads} torch threads, "
                   f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else str(device),
        "shipped_epoch": shipped.get("epoch"), "shipped": shipped, "history": history,
    }
    if (start := starting_record(settings.init)) is not None:  # how the starting weights were made
        record["init_record"] = start
    record = {"sha256": hashlib.sha256((out / "cpr.pt").read_bytes()).hexdigest(), **record}
    (out / "record.json").write_text(json.dumps(record, indent=1))
    return record


def selection_score(entry: dict) -> float:
    """The validation figure that picks the epoch to ship: the mean 68-point NME of the two synthetic sets
    with a sparse source and of the held-out real faces, where there are some (lower is better)."""
    names = ("val_synthetic_nme", "val_occluded_nme", "val_real_nme")
    return float(np.mean([entry[name] for name in names if name in entry]))


def _is_beta_network(name: str) -> bool:
    """Whether a parameter or module name of CPRAligner belongs to CAPU's β networks (``consistency``,
    ``sparse_consistency``)."""
    return name.split(".")[0].endswith("consistency")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)
