"""Build pseudo-dense ground truth from real faces: fit the face model to each face's 68 annotated landmarks,
crop the face (cprfa.data.crop) and render the fitted model's PNCC and mask there — the DAFI the HS-U-Net
learns to predict, made the way 300W-LP was made from 300-W.

Output: ``OUT/<split>/shard_<k>.npz`` with ``SHARD_SIZE`` faces each, and ``OUT/manifest.json`` (settings,
counts, skipped faces with reasons, time). Each shard holds:

| key | shape, dtype | meaning |
|---|---|---|
| images | (n, S, S, 3) uint8 | RGB crops |
| pncc | (n, S, S, 3) uint16 | PNCC code × 65535 (0 on the background) |
| mask | (n, S, S) bool | face pixels of the fitted model |
| params | (n, P) float32 | fitted parameters in crop pixels (ParamLayout) |
| landmarks | (n, 68, 2) float32 | the annotated landmarks in crop pixels |
| fit_nme | (n,) float32 | NME (%) of the fitted landmarks against the annotation |
| names | (n,) str | face names |
| boxes | (n, 4) float32 | the crop box in the original image |
| skipped_images, skipped_reasons | (m,) str | faces of this shard left out, and why |
| occluded, occlusion | (n, S, S) bool, (n,) float32 | only with ``occlusion``: occluded pixels, face fraction |

With ``occlusion = (low, high)`` the build makes an occluded evaluation set (COFW-like): synthetic occluders
(cprfa.data.augment.occlude: shapes, noise textures and patches of another face of the shard) cover a
fraction in [low, high] of each face's rendered area, drawn from a generator seeded by ``seed`` and the face
name. The ground truth is left unchanged: the landmarks, PNCC and mask describe the whole face.

The build is deterministic, and resumable: an existing shard is kept, so a stopped build picks up where it
was. Nothing of it goes into git.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cprfa.data.augment import PNCC_SCALE, occlude
from cprfa.data.crop import crop_box, crop_image, params_to_crop, points_to_crop
from cprfa.data.images import load_image
from cprfa.data.readers import Face300W, iter_300w, landmark_box
from cprfa.errors import CprfaError
from cprfa.eval.metrics import nme
from cprfa.fitting.landmarks import fit_landmarks
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import image_vertices
from cprfa.model.render import render_pncc

SHARD_SIZE = 64
MAX_FIT_NME = 5.0  # a fit worse than this (% NME) is skipped as unreliable ground truth


@dataclass(frozen=True)
class BuildSettings:
    data: str
    out: str
    splits: tuple[str, ...]
    size: int = 256
    occlusion: tuple[float, float] | None = None
    seed: int = 0


def build_pseudo_gt(settings: BuildSettings, model: FaceModel | None = None, progress: bool = True) -> dict:
    """Build (or finish building) the shards of every split; return the manifest it writes."""
    model = model or default_face_model()
    out = Path(settings.out)
    start = time.perf_counter()
    manifest = {"settings": asdict(settings), "model": model.name, "shard_size": SHARD_SIZE, "splits": {}}
    for split in settings.splits:
        skipped: list[tuple[Path, str]] = []
        faces = list(iter_300w(settings.data, (split,), skipped=skipped))
        kept = 0
        bar = tqdm(total=len(faces), desc=f"pseudo-GT {split}", unit="face", disable=not progress)
        for index in range(0, len(faces), SHARD_SIZE):
            shard = faces[index:index + SHARD_SIZE]
            path = out / split / f"shard_{index // SHARD_SIZE:04d}.npz"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_name(path.stem + ".tmp.npz")
                np.savez_compressed(temporary, **_build_shard(model, shard, settings))
                temporary.replace(path)  # a shard appears whole or not at all
            with np.load(path) as done:
                kept += len(done["names"])
                skipped += list(zip(done["skipped_images"].tolist(), done["skipped_reasons"].tolist(), strict=True))
            bar.update(len(shard))
        bar.close()
        manifest["splits"][split] = {
            "annotated_faces": len(faces),
            "kept": kept,
            "skipped": [{"image": str(image), "reason": reason} for image, reason in skipped],
        }
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _build_shard(model: FaceModel, faces: list[Face300W], settings: BuildSettings) -> dict:
    size = settings.size
    images, readable, skipped = [], [], []
    for face in faces:
        try:
            images.append(load_image(face.image))
            readable.append(face)
        except CprfaError as error:
            skipped.append((face.image, str(error)))
    landmarks = [face.landmarks for face in readable]
    keep, fit_error, params, render, boxes = [], np.zeros(0), None, None, []
    if readable:
        targets = torch.from_numpy(np.stack(landmarks))
        fit = fit_landmarks(model, targets)
        fit_error = nme(fit.landmarks.numpy(), targets.numpy())
        boxes = [crop_box(landmark_box(points)) for points in landmarks]
        params = torch.stack([params_to_crop(fit.params[i], boxes[i], size) for i in range(len(readable))])
        render = render_pncc(model, image_vertices(model, params).float(), size, size)
        for i, error in enumerate(fit_error):
            if error <= MAX_FIT_NME:
                keep.append(i)
            else:
                skipped.append((readable[i].image, f"landmark fit NME {error:.1f} % > {MAX_FIT_NME} %"))
    skipped_arrays = {
        "skipped_images": np.array([str(image) for image, _ in skipped], dtype=str),
        "skipped_reasons": np.array([reason for _, reason in skipped], dtype=str),
    }
    if not keep:
        n_params = 6 + model.n_identity + model.n_expression
        return {
            "images": np.zeros((0, size, size, 3), np.uint8), "pncc": np.zeros((0, size, size, 3), np.uint16),
            "mask": np.zeros((0, size, size), bool), "params": np.zeros((0, n_params), np.float32),
            "landmarks": np.zeros((0, 68, 2), np.float32), "fit_nme": np.zeros(0, np.float32),
            "names": np.array([], dtype=str), "boxes": np.zeros((0, 4), np.float32), **skipped_arrays,
            **({"occluded": np.zeros((0, size, size), bool), "occlusion": np.zeros(0, np.float32)}
               if settings.occlusion is not None else {}),
        }
    crops = np.stack([crop_image(images[i], boxes[i], size) for i in keep])
    occlusion = {}
    if settings.occlusion is not None:
        occluded = np.zeros(crops.shape[:3], bool)
        coverage = np.zeros(len(keep), np.float32)
        for j, i in enumerate(keep):
            rng = np.random.default_rng([settings.seed, zlib.crc32(readable[i].name.encode())])
            source = crops[j - 1] if len(keep) > 1 else None  # patches cut from another face of the shard
            result = occlude(crops[j], render.mask[i].numpy(), rng, settings.occlusion, source=source)
            crops[j], occluded[j], coverage[j] = result.image, result.occluded, result.coverage
        occlusion = {"occluded": occluded, "occlusion": coverage}
    return {
        "images": crops,
        "pncc": (render.pncc[keep].numpy() * PNCC_SCALE).round().astype(np.uint16),
        "mask": render.mask[keep].numpy(),
        "params": params[keep].numpy().astype(np.float32),
        "landmarks": np.stack([points_to_crop(landmarks[i], boxes[i], size) for i in keep]).astype(np.float32),
        "fit_nme": fit_error[keep].astype(np.float32),
        "names": np.array([readable[i].name for i in keep], dtype=str),
        "boxes": np.array([boxes[i] for i in keep], np.float32),
        **skipped_arrays,
        **occlusion,
    }
