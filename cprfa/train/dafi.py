"""Train the HS-U-Net (``cprfa train dafi``) on the pseudo-dense ground truth of ``cprfa data build``.

Recipe: the training shards (photos and their profiled views) are loaded once, resized to the network's input
(image by area, PNCC and mask by nearest neighbour), and every epoch each face is augmented afresh with
cprfa.data.augment (geometry, flip, occluders taken from another face, photometry), deterministically from
the seed, the epoch and the face's index (``train_zoom`` ≠ 1 first cuts each built crop that many times
smaller about its centre, as ``DafiEstimator.crop`` cuts a photo, so that the augmentation's scales centre
on the inference crop). ADAM, learning rate decayed exponentially from ``lr`` to
``lr × final_lr_ratio`` over the epochs. Loss, on each of the three output groups (paper Fig. 2a): L1 of the
codes inside the ground-truth mask plus binary cross-entropy of the foreground; plus the landmark head's
soft-argmax L1 to the annotated landmarks (in units of the crop side, × ``landmark_weight``), for the points
inside the crop.

Each epoch ends with a validation on a fixed subset of the evaluation shards (landmark NME, DAFI vertex NME
and detection rate), a figure ``val_XXX.png``, a line in ``history.jsonl``, and ``checkpoint.pt`` holding
everything needed to resume. The last epoch also writes the weights (``hsunet.pt``, float16) and
``record.json`` (config, data, time, metrics) to ship. ``init`` starts from
another weights file (to train on with a fresh learning-rate schedule): of the same network, or of a narrower
one of the same input size, widened without changing what it computes (cprfa.dafi.network.widened); its
record is kept in the new one.

When the epochs are done, the network is calibrated on the training faces (without augmentation), cut
as ``cprfa align`` cuts a photo (the crop zoom, ``DafiEstimator.zoom``; ``calibration_zoom`` of the
settings), once without the test-time flip and once with it: the landmark head's mean error per landmark
(where the annotated landmark lies inside the crop) becomes its ``landmark_offset``, and the mean error per model vertex of the
positions retrieved from its DAFI (against where the fitted ground truth puts the vertex; vertices seen on
fewer than MIN_CALIBRATION_FACES faces keep none) its ``vertex_offset``; both are subtracted from what it
gives (cprfa.dafi.network). Both errors are consistent, not noise. For the fifth run, with the flip, the
retrieved vertices were off by 1.9 px on average at S = 128 on the training faces and by 1.8 px on
helen_test, mostly outwards on the sides of the face, the training offsets correlating with helen_test's by
0.86 (x) and 0.73 (y); the landmarks by about 0.7 px (0.77 and 0.64 for afw's and helen_train's offsets
against helen_test's). The record holds the validation figures before and after.

``--epochs 0`` with ``--init`` calibrates the starting network and trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cprfa.dafi.network import N_LANDMARKS, HSUNet, HSUNetConfig, soft_argmax, to_input, widened
from cprfa.dafi.predict import DafiEstimator, load_network, save_weights
from cprfa.data.augment import PNCC_SCALE, AugmentConfig, Sample, augment
from cprfa.data.crop import DEFAULT_ZOOM, crop_image, params_to_crop, points_to_crop, zoom_box
from cprfa.errors import CprfaError
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.train.common import decaying_adam, epoch_batches, save_checkpoint
from cprfa.train.settings import TrainSettings, starting_record

MIN_CALIBRATION_FACES = 50


@dataclass(frozen=True, eq=False)
class FaceArrays:
    """Faces of built shards at the network's input size: images (n, S, S, 3) uint8, pncc (n, S, S, 3)
    uint16, mask (n, S, S) bool, landmarks (n, 68, 2) float32, params (n, P) float32 (crop pixels at S); and,
    when asked for, the same crops at the landmark refiner's side R: detail (n, R, R, 3) uint8."""

    images: np.ndarray
    pncc: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    params: np.ndarray
    names: np.ndarray
    detail: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def load_faces(root: str | Path, splits: tuple[str, ...], size: int, limit: int = 0,
               zoom: float = 1.0, detail: int = 0) -> FaceArrays:
    """Every face of ``root/<split>/shard_*.npz``, resized to ``size``. With ``zoom`` ≠ 1 each crop is first cut
    ``zoom`` times smaller about its centre, as ``DafiEstimator.crop`` cuts a photo (the landmarks and
    parameters follow): the evaluation of what ``cprfa align`` runs. ``detail`` > 0 also keeps each crop at
    that side (``DafiEstimator.detail_size``, for the landmark refiner)."""
    keys = ("images", "pncc", "mask", "landmarks", "params", "names") + (("detail",) if detail else ())
    arrays = {key: [] for key in keys}
    for split in splits:
        shards = sorted((Path(root) / split).glob("shard_*.npz"))
        if not shards:
            raise CprfaError(f"no shards in {Path(root) / split}: build them with `cprfa data build`")
        for shard in shards:
            with np.load(shard) as data:
                built = data["images"].shape[1]
                box = zoom_box((0.0, 0.0, float(built), float(built)), zoom)
                arrays["images"].append(_resampled(data["images"], box, size).reshape(-1, size, size, 3))
                arrays["pncc"].append(_resampled(data["pncc"], box, size, nearest=True).reshape(-1, size, size, 3))
                arrays["mask"].append(_resampled(data["mask"].view(np.uint8), box, size, nearest=True)
                                      .reshape(-1, size, size).astype(bool))
                arrays["landmarks"].append(points_to_crop(data["landmarks"], box, size).astype(np.float32))
                arrays["params"].append(params_to_crop(torch.from_numpy(data["params"]), box, size).numpy())
                arrays["names"].append(data["names"])
                if detail:
                    arrays["detail"].append(_resampled(data["images"], box, detail).reshape(-1, detail, detail, 3))
    return FaceArrays(**{key: np.concatenate(value)[:limit or None] for key, value in arrays.items()})


def _resampled(images: np.ndarray, box: tuple[float, float, float, float], size: int,
               nearest: bool = False) -> np.ndarray:
    """Built crops (n, B, B, ...) cut to ``box`` (when it is not the whole crop) and resized to ``size``: area
    averaging for pixels, nearest for labels."""
    built = images.shape[1]
    if box != (0.0, 0.0, float(built), float(built)):
        images = [crop_image(x, box, built, nearest) for x in images]
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.stack([cv2.resize(x, (size, size), interpolation=interpolation) for x in images])


class AugmentedFaces(Dataset):
    """Training faces, each augmented from a generator seeded by (seed, epoch, index)."""

    def __init__(self, faces: FaceArrays, seed: int, config: AugmentConfig | None = None):
        self.faces, self.seed, self.config, self.epoch = faces, seed, config or AugmentConfig(), 0

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        faces = self.faces
        sample = Sample(faces.images[index], (faces.pncc[index] / PNCC_SCALE).astype(np.float32),
                        faces.mask[index], faces.landmarks[index])
        other = faces.images[int(rng.integers(len(faces)))]
        sample = augment(sample, rng, self.config, occluder_source=other)
        return (torch.from_numpy(np.ascontiguousarray(sample.image)), torch.from_numpy(sample.pncc),
                torch.from_numpy(sample.mask), torch.from_numpy(sample.landmarks))


def hs_unet_loss(groups: list[torch.Tensor], heatmaps: torch.Tensor, pncc: torch.Tensor, mask: torch.Tensor,
                 landmarks: torch.Tensor, landmark_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss (module docstring) and its parts.

    Shape: groups as HSUNet.forward, pncc (B, S, S, 3) float, mask (B, S, S) bool, landmarks (B, 68, 2)."""
    size = pncc.shape[1]
    target_codes, target_mask = pncc.permute(0, 3, 1, 2), mask[:, None].float()
    parts, total = {}, 0.0
    for group in groups:
        side = group.shape[-1]
        codes = F.interpolate(target_codes, size=side, mode="nearest")
        inside = F.interpolate(target_mask, size=side, mode="nearest")
        l1 = ((group[:, :3] - codes).abs() * inside).sum() / (3 * inside.sum()).clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(group[:, 3:], inside)
        parts[f"l1_{side}"], parts[f"bce_{side}"] = l1.item(), bce.item()
        total = total + l1 + bce
    in_crop = ((landmarks >= 0) & (landmarks <= size)).all(dim=-1)
    error = (soft_argmax(heatmaps, size) - landmarks).abs().sum(dim=-1) / size
    landmark = (error * in_crop).sum() / in_crop.sum().clamp(min=1)
    parts["landmarks"] = landmark.item()
    return total + landmark_weight * landmark, parts


def train_dafi(settings: TrainSettings, progress: bool = True, device: str = "cpu") -> dict:
    """Train (or resume) and return the record of the run. ``device`` ("cpu", "cuda") only changes the speed;
    a run may resume on another device."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    config = HSUNetConfig(settings.input_size, tuple(settings.widths))
    faces = load_faces(settings.data, settings.splits, config.input_size, settings.limit, settings.train_zoom)
    validation = load_faces(settings.validation, (settings.validation_split,), config.input_size,
                            settings.validation_faces, settings.train_zoom)
    network = HSUNet(config)
    if settings.init:
        initial, initial_config = load_network(settings.init)
        try:
            network = widened(initial, config)
        except ValueError:
            raise CprfaError(f"{settings.init} is an HS-U-Net of {initial_config}, which cannot start the {config} "
                             "asked for (same input size, no narrower level)") from None
    network = network.to(device)
    optimizer, scheduler = decaying_adam(network.parameters(), settings.lr, settings.final_lr_ratio, settings.epochs)
    checkpoint_path, history_path = out / "checkpoint.pt", out / "history.jsonl"
    start_epoch, seconds, history = 0, 0.0, []
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if {**asdict(TrainSettings("", "", "")), **state["settings"]} != asdict(settings):
            raise CprfaError(f"{checkpoint_path} was made with other settings; use a new --out to start afresh")
        for key in ("landmark_offset", "vertex_offset"):  # checkpoints from before the calibration existed
            state["network"].setdefault(key, getattr(network, key))
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, seconds = state["epoch"] + 1, state["seconds"]
        history = state.get("history") or [json.loads(line) for line in history_path.read_text().splitlines()]
        history = history[:start_epoch]  # epochs past the checkpoint are rerun
        print(f"resuming {out} after epoch {start_epoch}")
    dataset = AugmentedFaces(faces, settings.seed)
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        network.train()
        sums: dict[str, float] = {}
        bar = epoch_batches(dataset, settings, epoch, progress)
        for batch in bar:
            images, pncc, mask, landmarks = (tensor.to(device) for tensor in batch)
            groups, heatmaps = network(to_input(images))
            loss, parts = hs_unet_loss(groups, heatmaps, pncc, mask, landmarks, settings.landmark_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.3f}", lmk=f"{parts['landmarks']:.4f}")
        scheduler.step()
        batches = max(len(bar), 1)
        metrics = evaluate_estimator(DafiEstimator(network.eval(), config, device), validation)
        seconds += time.perf_counter() - started
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 1),
                 **{f"train_{k}": round(v / batches, 5) for k, v in sums.items()},
                 **{f"val_{k}": round(v, 4) for k, v in metrics.items() if not isinstance(v, np.ndarray)}}
        history.append(entry)
        print(f"epoch {epoch + 1}: loss {entry.get('train_loss', math.nan):.4f}, validation landmark NME "
              f"{metrics['landmark_nme']:.2f} %, vertex NME {metrics['vertex_nme']:.2f} %, "
              f"detection {metrics['detection_rate']:.1f} %")
        validation_figure(DafiEstimator(network, config, device), validation, out / f"val_{epoch + 1:03d}.png")
        save_checkpoint(checkpoint_path, settings, network, "network", optimizer, scheduler, epoch, seconds, history)
    record = {
        "weights": "hsunet.pt", "network": config.to_dict(), "settings": asdict(settings),
        "parameters": sum(parameter.numel() for parameter in network.parameters()),
        "training_faces": len(faces), "validation_faces": len(validation), "epochs": settings.epochs,
        "train_seconds": round(seconds, 1), "machine": f"{platform.processor() or platform.machine()}, "
        f"{settings.threads} torch threads, torch {torch.__version__}",
        "data": manifest_summary(settings.data), "validation_data": manifest_summary(settings.validation),
        "final": history[-1] if history else {}, "history": history,
    }
    if (start := starting_record(settings.init)) is not None:  # how the starting weights were made
        record["init_record"] = start
    # calibrated on the training faces cut as cprfa align cuts a photo (DafiEstimator.zoom)
    zoom = settings.calibration_zoom or DEFAULT_ZOOM
    if zoom != settings.train_zoom:
        faces = load_faces(settings.data, settings.splits, config.input_size, settings.limit, zoom)
        validation = load_faces(settings.validation, (settings.validation_split,), config.input_size,
                                settings.validation_faces, zoom)
    before = evaluate_estimator(DafiEstimator(network.eval(), config, device), validation)
    landmark_offset, vertex_offset = calibration_offsets(network, config, faces, device)
    network.landmark_offset.copy_(landmark_offset)
    network.vertex_offset = vertex_offset.to(device)
    after = evaluate_estimator(DafiEstimator(network, config, device), validation)
    record["calibration"] = {  # mean offsets in crop pixels, without the flip, then with it; validation without
        "zoom": zoom,
        "landmark_offset_px": [round(float(value), 3) for value in landmark_offset.norm(dim=-1).mean(dim=1)],
        "vertex_offset_px": [round(float(value), 3) for value in vertex_offset.norm(dim=-1).mean(dim=1)],
        "vertices_calibrated": int(vertex_offset[0].any(dim=-1).sum()),
        **{f"val_{key}_{when}": round(values[key], 4) for when, values in (("before", before), ("after", after))
           for key in ("landmark_nme", "vertex_nme")}}
    print(f"calibrated: validation landmark NME {before['landmark_nme']:.2f} -> {after['landmark_nme']:.2f} %, "
          f"vertex NME {before['vertex_nme']:.2f} -> {after['vertex_nme']:.2f} %")
    save_weights(network.cpu(), config, out / "hsunet.pt")
    record = {"sha256": hashlib.sha256((out / "hsunet.pt").read_bytes()).hexdigest(), **record}
    (out / "record.json").write_text(json.dumps(record, indent=1))
    return record


@torch.inference_mode()
def calibration_offsets(network: HSUNet, config: HSUNetConfig, faces: FaceArrays, device: str = "cpu",
                        model: FaceModel | None = None, min_faces: int = MIN_CALIBRATION_FACES,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's calibration measured on ``faces`` (module docstring), with none applied, without and with
    the test-time flip; a vertex seen on fewer than ``min_faces`` faces gets none.
    Shape: -> landmark offsets (2, 68, 2), vertex offsets (2, N, 2), crop pixels at S."""
    from cprfa.dafi.evaluate import observe  # keeps the training import light

    model = model or default_face_model()
    network.landmark_offset.zero_()
    network.vertex_offset = network.landmark_offset.new_zeros(2, 0, 2)
    landmark_offsets, vertex_offsets = [], []
    for flip in (False, True):
        landmark_sum, landmark_count = np.zeros((N_LANDMARKS, 2)), np.zeros((N_LANDMARKS, 1))
        vertex_sum, vertex_count = np.zeros((model.n_vertices, 2)), np.zeros((model.n_vertices, 1))
        for batch in observe(DafiEstimator(network.eval(), config, device, flip=flip), faces, model, 64):
            annotated = faces.landmarks[batch.start:batch.stop]
            inside = ((annotated >= 0) & (annotated <= config.input_size)).all(axis=-1)[..., None]
            landmark_sum += ((batch.prediction.landmarks - annotated) * inside).sum(axis=0)
            landmark_count += inside.sum(axis=0)
            detected = batch.observed.detected[..., None]
            vertex_sum += ((batch.observed.positions - batch.truth) * detected).sum(axis=0)
            vertex_count += detected.sum(axis=0)
        landmark_offsets.append(landmark_sum / np.maximum(landmark_count, 1))
        vertex_offsets.append(np.where(vertex_count >= min_faces,
                                       vertex_sum / np.maximum(vertex_count, 1), 0.0))
    return torch.from_numpy(np.stack(landmark_offsets)).float(), torch.from_numpy(np.stack(vertex_offsets)).float()


def manifest_summary(folder: str) -> dict:
    """What `cprfa data build` recorded about a data folder: its settings and sample counts."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return {"folder": folder}
    manifest = json.loads(path.read_text())
    return {"folder": folder, "settings": manifest.get("settings"), "model": manifest.get("model"),
            "samples": {split: entry.get("samples", entry.get("kept")) for split, entry in manifest["splits"].items()}}


def evaluate_estimator(estimator: DafiEstimator, faces: FaceArrays, batch_size: int = 32) -> dict:
    """Landmark NME (%) of the landmark head against ``faces.landmarks``, and the NME (%) and detection rate (%)
    of all retrieved vertices against the vertices of the ground-truth parameters; per face and mean."""
    from cprfa.dafi.evaluate import dafi_errors  # keeps the training import light

    errors = dafi_errors(estimator, faces, batch_size)
    means = {}
    for key in ("landmark_nme", "vertex_nme", "detection_rate"):
        values = errors[f"{key}_per_face"]
        means[key] = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")
    return {**errors, **means}


def validation_figure(estimator: DafiEstimator, faces: FaceArrays, path: Path, count: int = 6):
    """Input with predicted (green) and annotated (red) landmarks, predicted DAFI, ground-truth PNCC."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    prediction = estimator.predict(faces.images[:count])
    figure = Figure(figsize=(2 * count, 6))
    axes = figure.subplots(3, count, squeeze=False)
    for i in range(min(count, len(faces))):
        axes[0, i].imshow(faces.images[i])
        axes[0, i].scatter(*faces.landmarks[i].T, s=2, c="r")
        axes[0, i].scatter(*prediction.landmarks[i].T, s=2, c="lime")
        axes[1, i].imshow(prediction.dafi[i] * prediction.mask[i][..., None])
        axes[2, i].imshow(faces.pncc[i] / PNCC_SCALE)
    for axis in axes.ravel():
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=60)
