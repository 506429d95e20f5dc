"""Build pseudo-dense ground truth from real faces: fit the face model to each face's 68 annotated landmarks,
crop the face (cprfa.data.crop) and render the fitted model's PNCC and mask there — the DAFI the HS-U-Net
learns to predict, made the way 300W-LP was made from 300-W.

Output: ``OUT/<split>/shard_<k>.npz`` with ``SHARD_SIZE`` faces each, ``OUT/<split>/samples.csv`` (one line
per sample: name, yaw, pitch, profiled, fit NME, occlusion) and ``OUT/manifest.json`` (settings, counts,
skipped faces with reasons, time). Each shard holds:

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
| yaw, pitch | (n,) float32 | the fitted (or profiled) head pose in degrees |
| profiled | (n,) bool | a synthesized view (face profiling), not the photo as it was |
| occluded, occlusion | (n, S, S) bool, (n,) float32 | only with ``occlusion``: occluded pixels, face fraction |

With ``occlusion = (low, high)`` the build makes an occluded evaluation set (COFW-like): synthetic occluders
(cprfa.data.augment.occlude: shapes, noise textures and patches of another face of the shard) cover a
fraction in [low, high] of each face's rendered area, drawn from a generator seeded by ``seed`` and the face
name. The ground truth is left unchanged: the landmarks, PNCC and mask describe the whole face.

Face profiling (cprfa.data.profiling) adds larger poses, drawn per face from a generator seeded by ``seed``
and the face name; a view turns the face further towards the side it already shows, so that the surface that
comes into view was seen in the photo:

- ``profile = k`` (training): k extra views per face, |yaw| uniform in [20°, 90°], pitch moved by up to ±15°
  within ±30°. Their ``landmarks`` are the annotation carried along with the face: the annotated points plus
  the displacement of the fitted model's 2D-convention landmarks (jaw on the silhouette), so the annotators'
  offsets from the model survive and the landmark head still learns from the real annotation.
- ``large_pose = True`` (evaluation): the set holds only profiled views, one per face in each |yaw| bucket
  of ``cprfa.eval.metrics.YAW_BUCKETS`` (uniform inside it, pitch unchanged). Its ``landmarks`` are the
  fitted model's landmarks in the **3D convention** of DESIGN.md (fixed vertices, hidden jaw points included), as for
  AFLW2000-3D; ``manifest.json`` says so under ``landmark_convention``.

Each view is then shifted so that its landmark box has the centre the photo's had (the crop policy applied to
the turned face); turning about the head's centre would otherwise push a profile towards the crop's edge.

The build is deterministic, and resumable: an existing shard is kept, so a stopped build picks up where it
was. Nothing of it goes into git.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from cprfa.data.augment import PNCC_SCALE, occlude
from cprfa.data.crop import crop_box, crop_image, params_to_crop, points_to_crop
from cprfa.data.images import load_image
from cprfa.data.profiling import profile_face
from cprfa.data.readers import Face300W, iter_300w, landmark_box
from cprfa.errors import CprfaError
from cprfa.eval.metrics import YAW_BUCKETS, nme
from cprfa.fitting.landmarks import fit_landmarks
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import ParamLayout, image_vertices, landmarks_3d
from cprfa.model.render import render_pncc

SHARD_SIZE = 64
MAX_FIT_NME = 5.0  # a fit worse than this (% NME) is skipped as unreliable ground truth
PROFILE_YAW = (20.0, 90.0)  # |yaw| range of training views
PROFILE_PITCH_STEP, MAX_PITCH = 15.0, 30.0


@dataclass(frozen=True)
class BuildSettings:
    data: str
    out: str
    splits: tuple[str, ...]
    size: int = 256
    occlusion: tuple[float, float] | None = None
    seed: int = 0
    profile: int = 0
    large_pose: bool = False

    @property
    def landmark_convention(self) -> str:
        return "3d" if self.large_pose else "2d"


def build_pseudo_gt(settings: BuildSettings, model: FaceModel | None = None, progress: bool = True) -> dict:
    """Build (or finish building) the shards of every split; return the manifest it writes."""
    model = model or default_face_model()
    out = Path(settings.out)
    start = time.perf_counter()
    manifest = {"settings": asdict(settings), "model": model.name, "shard_size": SHARD_SIZE,
                "landmark_convention": settings.landmark_convention, "splits": {}}
    for split in settings.splits:
        skipped: list[tuple[Path, str]] = []
        faces = list(iter_300w(settings.data, (split,), skipped=skipped))
        kept = kept_faces = 0
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
                kept_faces += len({name.split("@")[0] for name in done["names"].tolist()})
                skipped += list(zip(done["skipped_images"].tolist(), done["skipped_reasons"].tolist(), strict=True))
            bar.update(len(shard))
        bar.close()
        _write_index(out / split)
        manifest["splits"][split] = {
            "annotated_faces": len(faces),
            "kept_faces": kept_faces,
            "samples": kept,
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
    keep, fit_error, params, boxes = [], np.zeros(0), None, []
    if readable:
        targets = torch.from_numpy(np.stack(landmarks))
        fit = fit_landmarks(model, targets)
        fit_error = nme(fit.landmarks.numpy(), targets.numpy())
        boxes = [crop_box(landmark_box(points)) for points in landmarks]
        params = torch.stack([params_to_crop(fit.params[i], boxes[i], size) for i in range(len(readable))])
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
        return {**_empty_shard(model, settings), **skipped_arrays}
    views = {
        "images": np.stack([crop_image(images[i], boxes[i], size) for i in keep]),
        "params": params[keep],
        "landmarks": np.stack([points_to_crop(landmarks[i], boxes[i], size) for i in keep]).astype(np.float32),
        "fit_nme": fit_error[keep].astype(np.float32),
        "names": [readable[i].name for i in keep],
        "boxes": np.array([boxes[i] for i in keep], np.float32),
        "profiled": np.zeros(len(keep), bool),
    }
    if settings.profile or settings.large_pose:
        views = _profiled_views(model, views, settings)
    render = render_pncc(model, image_vertices(model, views["params"]).float(), size, size)
    crops = views["images"]
    occlusion = {}
    if settings.occlusion is not None:
        occluded = np.zeros(crops.shape[:3], bool)
        coverage = np.zeros(len(crops), np.float32)
        for j, name in enumerate(views["names"]):
            rng = np.random.default_rng([settings.seed, zlib.crc32(name.encode())])
            source = crops[j - 1] if len(crops) > 1 else None  # patches cut from another face of the shard
            result = occlude(crops[j], render.mask[j].numpy(), rng, settings.occlusion, source=source)
            crops[j], occluded[j], coverage[j] = result.image, result.occluded, result.coverage
        occlusion = {"occluded": occluded, "occlusion": coverage}
    angles = np.degrees(views["params"][:, :2].numpy()).astype(np.float32).reshape(-1, 2)
    return {
        **views,
        "images": crops,
        "pncc": (render.pncc.numpy() * PNCC_SCALE).round().astype(np.uint16),
        "mask": render.mask.numpy(),
        "params": views["params"].numpy().astype(np.float32),
        "names": np.array(views["names"], dtype=str),
        "pitch": angles[:, 0],
        "yaw": angles[:, 1],
        **skipped_arrays,
        **occlusion,
    }


def _profiled_views(model: FaceModel, faces: dict, settings: BuildSettings) -> dict:
    """Profiled views of each face (see the module docstring): appended to the faces for training, in place of
    them for the large-pose evaluation set."""
    views = {key: [] for key in faces}
    for i, name in enumerate(faces["names"]):
        rng = np.random.default_rng([settings.seed, zlib.crc32(name.encode()), 1])
        params = faces["params"][i].to(torch.float64)
        pitch, yaw = np.degrees(params[:2].numpy())
        side = 1.0 if yaw >= 0 else -1.0
        if settings.large_pose:
            targets = [(pitch, side * rng.uniform(*bucket)) for bucket in YAW_BUCKETS]
        else:
            targets = [(np.clip(pitch + rng.uniform(-PROFILE_PITCH_STEP, PROFILE_PITCH_STEP), -MAX_PITCH, MAX_PITCH),
                        side * rng.uniform(*PROFILE_YAW)) for _ in range(settings.profile)]
        for target_pitch, target_yaw in targets:
            image, turned = profile_face(model, faces["images"][i], params, np.radians(target_yaw - yaw),
                                         np.radians(target_pitch - pitch))
            if settings.large_pose:
                points = landmarks_3d(model, turned[None])[0, :, :2]
            else:
                moved = landmarks_2d(model, torch.stack([turned, params]))[..., :2]
                points = torch.from_numpy(faces["landmarks"][i]).double() + moved[0] - moved[1]
            image, turned, points = _recentre(image, turned, points, faces["landmarks"][i])
            for key, value in (("images", image), ("params", turned.float()), ("landmarks", points.float().numpy()),
                               ("fit_nme", faces["fit_nme"][i]), ("names", f"{name}@yaw{target_yaw:+.0f}"),
                               ("boxes", faces["boxes"][i]), ("profiled", True)):
                views[key].append(value)
    if not settings.large_pose:
        views = {key: list(faces[key]) + value for key, value in views.items()}
    return {
        "images": np.stack(views["images"]),
        "params": torch.stack(views["params"]),
        "landmarks": np.stack(views["landmarks"]).astype(np.float32),
        "fit_nme": np.array(views["fit_nme"], np.float32),
        "names": views["names"],
        "boxes": np.array(views["boxes"], np.float32),
        "profiled": np.array(views["profiled"], bool),
    }


def _write_index(folder: Path) -> None:
    """``samples.csv`` beside the shards: one line per sample (name, yaw, pitch, profiled, fit NME, occlusion),
    the record that fixes an evaluation set."""
    lines = ["name,yaw_deg,pitch_deg,profiled,fit_nme,occlusion"]
    for shard in sorted(folder.glob("shard_*.npz")):
        with np.load(shard) as data:
            occlusion = data["occlusion"] if "occlusion" in data else np.full(len(data["names"]), np.nan)
            for row in zip(data["names"], data["yaw"], data["pitch"], data["profiled"], data["fit_nme"], occlusion,
                           strict=True):
                name, yaw, pitch, profiled, fit, covered = row
                lines.append(f"{name},{yaw:.2f},{pitch:.2f},{int(profiled)},{fit:.3f},"
                             + ("" if np.isnan(covered) else f"{covered:.3f}"))
    (folder / "samples.csv").write_text("\n".join(lines) + "\n")


def _recentre(image: np.ndarray, params: torch.Tensor, points: torch.Tensor, original: np.ndarray):
    """Shift a profiled view so that its landmark box is centred where the photo's was: the crop policy
    (cprfa.data.crop) applied to the turned face, as a detector's box would be. Pixels shifted in from
    outside repeat the edge."""
    shift = (original.min(0) + original.max(0)) / 2 - (points.min(0).values + points.max(0).values).numpy() / 2
    matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    image = cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    params = params.clone()
    params[4:6] += torch.from_numpy(shift)
    return image, params, points + torch.from_numpy(shift)


def _empty_shard(model: FaceModel, settings: BuildSettings) -> dict:
    """A shard none of whose faces was kept, with every array of a full one."""
    size = settings.size
    empty = {
        "images": np.zeros((0, size, size, 3), np.uint8), "pncc": np.zeros((0, size, size, 3), np.uint16),
        "mask": np.zeros((0, size, size), bool), "params": np.zeros((0, ParamLayout.of(model).size), np.float32),
        "landmarks": np.zeros((0, 68, 2), np.float32), "fit_nme": np.zeros(0, np.float32),
        "names": np.array([], dtype=str), "boxes": np.zeros((0, 4), np.float32), "pitch": np.zeros(0, np.float32),
        "yaw": np.zeros(0, np.float32), "profiled": np.zeros(0, bool),
    }
    if settings.occlusion is not None:
        empty |= {"occluded": np.zeros((0, size, size), bool), "occlusion": np.zeros(0, np.float32)}
    return empty
