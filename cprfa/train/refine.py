"""Train the landmark refiner (``cprfa train refiner``, cprfa.dafi.refine) on the HS-U-Net head's own points.

Recipe: the training faces are loaded at the detail side R = scale · S, cut with the crop zoom as
``cprfa align`` cuts a photo, and augmented afresh every epoch as the HS-U-Net's were (cprfa.data.augment:
geometry, flip, occluders, photometry). For each batch the frozen HS-U-Net (with the test-time flip and its
calibration, as ``cprfa align`` runs it) reads the crops area-averaged down to S, exactly as
``DafiEstimator.crop`` makes them; its landmarks, moved by Gaussian noise of ``jitter`` detail pixels (so
that the refiner also sees starts a little worse than the head's), are the refiner's start, and the loss is
the L1 distance of the refined points to the annotated ones inside the crop, in detail pixels. ADAM, learning
rate decayed exponentially from ``lr`` to ``lr × final_lr_ratio``.

Each epoch ends with the landmark NME of the head and of the refined head on the validation faces (with the
flip), a line in ``history.jsonl`` and ``checkpoint.pt`` to resume from. The last epoch writes ``refiner.pt``
(float16) and ``record.json`` (settings, data, the HS-U-Net's sha256, time, history).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from cprfa.dafi.network import to_input
from cprfa.dafi.predict import DEFAULT_WEIGHTS, DafiEstimator, load_network
from cprfa.dafi.refine import LandmarkRefiner, RefinerConfig, load_refiner, save_refiner
from cprfa.data.crop import DEFAULT_ZOOM
from cprfa.errors import CprfaError
from cprfa.eval.metrics import nme
from cprfa.train.common import decaying_adam, epoch_batches, resume, save_checkpoint
from cprfa.train.dafi import AugmentedFaces, load_faces, manifest_summary
from cprfa.train.settings import RefinerTrainSettings, starting_record


def head_points(estimator: DafiEstimator, detail: torch.Tensor) -> torch.Tensor:
    """The landmark head's points (with the estimator's flip and calibration) on detail crops area-averaged
    down to the network's input, as ``DafiEstimator.crop`` makes its crops.
    Shape: detail (B, R, R, 3) uint8 -> (B, 68, 2) detail pixels."""
    scale = detail.shape[1] // estimator.input_size
    crops = F.avg_pool2d(detail.permute(0, 3, 1, 2).float(), scale).round().to(torch.uint8).permute(0, 2, 3, 1)
    return torch.from_numpy(estimator.predict(crops.cpu().numpy()).landmarks).to(detail.device) * scale


def train_refiner(settings: RefinerTrainSettings, progress: bool = True, device: str = "cpu") -> dict:
    """Train (or resume) and return the record of the run."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    config = RefinerConfig(settings.patch_size, tuple(settings.pitches), 2, tuple(settings.widths), settings.hidden)
    network, network_config = load_network(settings.dafi_weights or None)
    estimator = DafiEstimator(network, network_config, device, flip=True)
    side = config.scale * network_config.input_size
    faces = load_faces(settings.data, settings.splits, side, settings.limit, DEFAULT_ZOOM)
    validation = load_faces(settings.validation, (settings.validation_split,), network_config.input_size,
                            settings.validation_faces, DEFAULT_ZOOM, detail=side)
    refiner = LandmarkRefiner(config)
    if settings.init:
        start = load_refiner(settings.init)
        if start.config != config:
            raise CprfaError(f"{settings.init} is a refiner of {start.config}, not of {config}")
        refiner = start
    refiner = refiner.to(device)
    optimizer, scheduler = decaying_adam(refiner.parameters(), settings.lr, settings.final_lr_ratio, settings.epochs)
    checkpoint_path = out / "checkpoint.pt"
    start_epoch, seconds, history = resume(checkpoint_path, settings, refiner, "refiner", optimizer, scheduler,
                                           device)
    head = estimator.predict(validation.images).landmarks
    dataset = AugmentedFaces(faces, settings.seed)
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        refiner.train()
        total = 0.0
        bar = epoch_batches(dataset, settings, epoch, progress)
        for images, _, _, landmarks in bar:
            images, landmarks = images.to(device), landmarks.to(device)
            start = head_points(estimator, images)
            start = start + settings.jitter * torch.randn_like(start)
            inside = ((landmarks >= 0) & (landmarks <= side)).all(dim=-1)
            error = (refiner(to_input(images), start) - landmarks).abs().sum(dim=-1)
            loss = (error * inside).sum() / inside.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        refined = DafiEstimator(network, network_config, device, flip=True, refiner=refiner.eval()).predict(
            validation.images, detail=validation.detail).landmarks
        seconds += time.perf_counter() - started
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 1),
                 "train_loss_px": round(total / max(len(bar), 1), 4),
                 "val_head_nme": round(float(nme(head, validation.landmarks).mean()), 4),
                 "val_refined_nme": round(float(nme(refined, validation.landmarks).mean()), 4)}
        history.append(entry)
        print(f"epoch {epoch + 1}: loss {entry['train_loss_px']:.3f} px, validation landmark NME "
              f"{entry['val_head_nme']:.3f} % (head) -> {entry['val_refined_nme']:.3f} % (refined)")
        save_checkpoint(checkpoint_path, settings, refiner, "refiner", optimizer, scheduler, epoch, seconds, history)
    save_refiner(refiner.cpu(), out / "refiner.pt")
    dafi_path = Path(settings.dafi_weights or DEFAULT_WEIGHTS)
    record = {
        "sha256": hashlib.sha256((out / "refiner.pt").read_bytes()).hexdigest(), "weights": "refiner.pt",
        "network": config.to_dict(), "settings": asdict(settings),
        "parameters": sum(parameter.numel() for parameter in refiner.parameters()),
        "hsunet_sha256": hashlib.sha256(dafi_path.read_bytes()).hexdigest(),
        "training_faces": len(faces), "validation_faces": len(validation), "epochs": settings.epochs,
        "train_seconds": round(seconds, 1), "machine": f"{platform.processor() or platform.machine()}, "
        f"{settings.threads} torch threads, torch {torch.__version__}",
        "data": manifest_summary(settings.data), "validation_data": manifest_summary(settings.validation),
        "final": history[-1] if history else {}, "history": history,
    }
    if (start_record := starting_record(settings.init)) is not None:
        record["init_record"] = start_record
    (out / "record.json").write_text(json.dumps(record, indent=1))
    return record
