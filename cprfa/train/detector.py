"""Fine-tune the face detector (``cprfa train detector``): MediaPipe's short-range BlazeFace, taught the profiles
it misses.

Why: the converted network finds every near-frontal face of 300-W but gives many faces beyond 60° of yaw
scores under 0.5 (they score 0.1–0.5 on most of them: it sees them, it doubts). Fine-tuning on the training
splits' profiled views (``cprfa data build --profile K``: each face also turned to |yaw| 20–90°) lifts them.

Data: every image is a mosaic of g × g built crops (g = 1, 2 or 3, so faces span about 0.2 to 0.7 of the
128² input, as in a letterboxed photo and its tiles: cprfa.detect.detector), each crop flipped at random,
the mosaic then scaled (0.8–1.25), turned (±15°), shifted and photometrically jittered, with black where
it leaves the canvas (the letterbox's colour). A share of the single crops is zoomed in instead (1.3–2.5):
part of a face fills the input, as the detector's tiles show a big face, and the parts must stay negatives
(trained without them, the first run found face parts in the tiles: 183 extra detections on the helen_test
photos instead of 15). A face whose landmark box keeps less than 90 % of its area inside the image is
neither a positive nor a negative: taught that faces cut by the image's edge are faces (at 60 %), the second
run found more of the half-faces at the edges of the 300-W photos, which the benchmark counts as extra.

Targets, in the network's own conventions (cprfa.detect.blazeface): a face's box is the tight box of its 68
landmarks mapped back through the detector's ``FaceBoxMap`` (so ``face_box`` still gives the landmark box);
its keypoints are the eyes' centres, the nose tip (point 30) and the inner lips' centre from the landmarks,
and for the two ear tragions, which no landmark marks, the frozen starting network's own predictions. An
anchor (``anchor_centres`` with the nominal sizes ``anchor_scales``) is positive for a face when their IoU is
at least ``POSITIVE_IOU`` (and each face's best anchor always), negative when it has less than
``NEGATIVE_IOU`` with every face and is not positive (the shipped weights were trained before that last
condition, when a small face's best anchor could be both).

Loss: binary cross-entropy on the positives and the hardest negatives (``NEGATIVES_PER_POSITIVE`` per positive
in the batch, at least ``MIN_NEGATIVES`` per image), plus the L1 distance of the box (centre and size) and
keypoints decoded at the positives to their targets, in units of the input side, weighted ``BOX_WEIGHT`` and
``KEYPOINT_WEIGHT``; all divided by the positives' count. ADAM with a learning rate decaying from ``lr`` to
``lr × final_lr_ratio``.

Each epoch ends with the detector as ``FaceDetector`` runs it (letterbox and tiles, score ≥ 0.5) on the
validation sets: the profiled views of a ``--large-pose`` build (found: a detection centred inside the face's
landmark box, by |yaw| bucket) and, with ``--photos``, the helen_test photos (found: ``face_box`` IoU ≥ 0.5
with the annotated landmark box; extra detections counted). A line in ``history.jsonl`` and
``checkpoint.pt`` follow; the command resumes from it. With ``--photos``, the run then picks the detection
threshold it ships with (``choose_min_score``: the lowest with no more extra detections on the training splits'
photos than the starting network at its own threshold). It writes ``blazeface.pt`` (float16) and ``blazeface.json``: the record ``FaceDetector`` needs
(format, sha256, face box map, threshold, licence) with the run's settings, data, time and history.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cprfa.data.augment import flip_landmarks
from cprfa.data.images import load_image
from cprfa.data.readers import iter_300w, landmark_box
from cprfa.detect.blazeface import (
    INPUT_SIZE,
    SCALE,
    BlazeFace,
    anchor_centres,
    anchor_scales,
    box_iou,
    decode,
    to_input,
)
from cprfa.detect.detector import (
    DEFAULT_MIN_SCORE,
    MEDIAPIPE_WEIGHTS,
    WEIGHTS_FORMAT,
    WEIGHTS_VERSION,
    FaceBoxMap,
    FaceDetector,
    load_detector_network,
)
from cprfa.errors import CprfaError
from cprfa.train.common import decaying_adam, epoch_batches, resume, save_checkpoint
from cprfa.train.dafi import manifest_summary
from cprfa.train.settings import DetectorTrainSettings

MAX_FACES = 9  # faces in one mosaic (3 × 3)
GRID_WEIGHTS = {1: 0.4, 2: 0.4, 3: 0.2}
SCALE_RANGE, MAX_TURN, MAX_SHIFT = (0.8, 1.25), 15.0, 0.1  # mosaic scale, degrees, fraction of the side
# part of a face, as the detector's tiles show a big face: parts of faces are negatives
ZOOM_IN_SHARE, ZOOM_IN_RANGE, ZOOM_IN_SHIFT = 0.4, (1.3, 2.5), 0.3
MIN_INSIDE = 0.9  # share of a face's box inside the image for it to count
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.3  # the shipped network scores many anchors of IoU 0.3–0.5 high
NEGATIVES_PER_POSITIVE, MIN_NEGATIVES = 3, 8
BOX_WEIGHT, KEYPOINT_WEIGHT = 10.0, 5.0
LANDMARK_KEYPOINTS = 4  # right eye, left eye, nose tip, mouth centre; the ears come from the starting network
YAW_BUCKETS = ((0, 30), (30, 60), (60, 90))
MIN_SCORE_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9)
FINE_TUNED_LICENCE = ("Apache-2.0 (MediaPipe), modified: fine-tuned on 300-W images, whose research-use-only terms "
                      "apply too (LICENSE-MediaPipe.txt)")


def landmark_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """BlazeFace's first four keypoints from 68 landmarks (300-W order): the subject's right eye (points 36–41),
    left eye (42–47), nose tip (30), mouth centre (inner lips, 60–67). Shape: (..., 68, 2) -> (..., 4, 2)."""
    return np.stack([landmarks[..., 36:42, :].mean(axis=-2), landmarks[..., 42:48, :].mean(axis=-2),
                     landmarks[..., 30, :], landmarks[..., 60:68, :].mean(axis=-2)], axis=-2)


def load_crops(root: str | Path, splits: tuple[str, ...], limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The built crops at the network's input side and their landmarks in its pixels.
    Shape: -> images (n, 128, 128, 3) uint8, landmarks (n, 68, 2) float32."""
    images, landmarks = [], []
    for split in splits:
        shards = sorted((Path(root) / split).glob("shard_*.npz"))
        if not shards:
            raise CprfaError(f"no shards in {Path(root) / split}: build them with `cprfa data build`")
        for shard in shards:
            with np.load(shard) as data:
                side = data["images"].shape[1]
                images += [cv2.resize(x, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
                           for x in data["images"]]
                landmarks.append(data["landmarks"].astype(np.float32) * (INPUT_SIZE / side))
            if limit and len(images) >= limit:
                break
    return np.stack(images)[:limit or None], np.concatenate(landmarks)[:limit or None]


class Mosaics(Dataset):
    """Training images (module docstring), each drawn from a generator seeded by (seed, epoch, index).

    An item: image (128, 128, 3) uint8, landmarks (MAX_FACES, 68, 2) in its pixels, face (MAX_FACES,) 1 for a
    face that counts, −1 for one mostly outside the image (ignored), 0 for padding."""

    def __init__(self, images: np.ndarray, landmarks: np.ndarray, seed: int, samples: int):
        self.images, self.landmarks, self.seed, self.samples, self.epoch = images, landmarks, seed, samples, 0

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        grid = int(rng.choice(list(GRID_WEIGHTS), p=list(GRID_WEIGHTS.values())))
        canvas = np.zeros((grid * INPUT_SIZE, grid * INPUT_SIZE, 3), np.uint8)
        points = np.zeros((MAX_FACES, 68, 2), np.float32)
        for cell in range(grid * grid):
            pick = index % len(self.images) if cell == 0 else int(rng.integers(len(self.images)))
            image, landmarks = self.images[pick], self.landmarks[pick]
            if rng.random() < 0.5:
                image, landmarks = image[:, ::-1], flip_landmarks(landmarks, INPUT_SIZE)
            row, column = divmod(cell, grid)
            canvas[row * INPUT_SIZE:(row + 1) * INPUT_SIZE, column * INPUT_SIZE:(column + 1) * INPUT_SIZE] = image
            points[cell] = landmarks + INPUT_SIZE * np.array([column, row], np.float32)
        count = grid * grid
        if grid > 1:  # area averaging first, then a near-unit warp
            canvas = cv2.resize(canvas, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            points[:count] /= grid
        zoom_in = grid == 1 and rng.random() < ZOOM_IN_SHARE
        scale = math.exp(rng.uniform(*(math.log(v) for v in (ZOOM_IN_RANGE if zoom_in else SCALE_RANGE))))
        turn = rng.uniform(-MAX_TURN, MAX_TURN)
        shift = rng.uniform(-1, 1, 2) * (ZOOM_IN_SHIFT * scale if zoom_in else MAX_SHIFT) * INPUT_SIZE
        matrix = cv2.getRotationMatrix2D((INPUT_SIZE / 2, INPUT_SIZE / 2), turn, scale)
        matrix[:, 2] += shift
        # pixel centres: the warp maps centre coordinates, the landmarks are in corner coordinates
        image = cv2.warpAffine(canvas, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
        centred = points[:count] - 0.5
        points[:count] = centred @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32) + 0.5
        image = _photometric(image, rng)
        face = np.zeros(MAX_FACES, np.int64)
        for k in range(count):
            low, high = points[k].min(axis=0), points[k].max(axis=0)
            inside = np.clip(high, 0, INPUT_SIZE) - np.clip(low, 0, INPUT_SIZE)
            share = max(inside[0], 0) * max(inside[1], 0) / max(float(np.prod(high - low)), 1e-6)
            face[k] = 1 if share >= MIN_INSIDE else -1
        return torch.from_numpy(image), torch.from_numpy(points), torch.from_numpy(face)


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and (sometimes) grey."""
    out = image.astype(np.float32)
    out = (out - out.mean()) * rng.uniform(0.7, 1.3) + out.mean() * rng.uniform(0.7, 1.3)
    if rng.random() < 0.1:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(out, 0, 255).astype(np.uint8)


def targets(landmarks: torch.Tensor, face: torch.Tensor, box_map: FaceBoxMap):
    """The faces' boxes in BlazeFace's convention (relative to the input) and their first four keypoints.
    Shape: landmarks (B, F, 68, 2) pixels, face (B, F) -> boxes (B, F, 4), keypoints (B, F, 4, 2)."""
    low, high = landmarks.amin(dim=2), landmarks.amax(dim=2)
    size = (high - low) / box_map_ratio(box_map)
    centre = (low + high) / 2 - size * torch.tensor([box_map.offset_x, box_map.offset_y])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1) / INPUT_SIZE
    keypoints = torch.from_numpy(landmark_keypoints(landmarks.numpy())) / INPUT_SIZE
    return boxes * (face != 0)[..., None], keypoints


def box_map_ratio(box_map: FaceBoxMap) -> torch.Tensor:
    return torch.tensor([box_map.width_ratio, box_map.height_ratio])


def assign(boxes: torch.Tensor, face: torch.Tensor, anchor_boxes: torch.Tensor):
    """Per anchor, the face it is positive for (−1: none) and whether it is a negative.
    Shape: boxes (B, F, 4), face (B, F), anchor_boxes (N, 4) -> matched (B, N) int64, negative (B, N) bool."""
    matched = torch.full((len(boxes), len(anchor_boxes)), -1, dtype=torch.long)
    negative = torch.ones(len(boxes), len(anchor_boxes), dtype=torch.bool)
    for b in range(len(boxes)):
        present = torch.nonzero(face[b] != 0).squeeze(1)
        if len(present) == 0:
            continue
        iou = box_iou(anchor_boxes, boxes[b, present])  # (N, F')
        counted = face[b, present] > 0
        best_value, best_face = (iou * counted).max(dim=1)
        positive = best_value >= POSITIVE_IOU
        best_anchor = iou.argmax(dim=0)  # each counted face's best anchor, positive even under POSITIVE_IOU
        positive[best_anchor[counted]] = True
        best_face[best_anchor[counted]] = torch.nonzero(counted).squeeze(1)
        matched[b] = torch.where(positive, present[best_face], -1)
        negative[b] = (iou.amax(dim=1) < NEGATIVE_IOU) & ~positive
    return matched, negative


def detection_loss(regressors, logits, teacher_regressors, matched, negative, boxes, keypoints, anchors):
    """The loss of the module docstring and its parts."""
    positive = matched >= 0
    count = positive.sum().clamp(min=1)
    target = torch.zeros_like(logits)
    target[positive] = 1.0
    elementwise = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    negatives = torch.where(negative, elementwise.detach(), torch.tensor(-1.0))
    wanted = max(int(NEGATIVES_PER_POSITIVE * int(positive.sum())), MIN_NEGATIVES * len(logits))
    hardest = negatives.flatten().topk(min(wanted, int(negative.sum()))).indices
    classification = (elementwise[positive].sum() + elementwise.flatten()[hardest].sum()) / count

    batch_index, anchor_index = torch.nonzero(positive, as_tuple=True)
    face_index = matched[positive]
    predicted_boxes, predicted_keypoints, _ = decode(regressors[positive][None], logits[positive][None],
                                                      anchors[anchor_index])
    box_error = (predicted_boxes[0] - boxes[batch_index, face_index]).abs().sum()
    keypoint_error = (predicted_keypoints[0, :, :LANDMARK_KEYPOINTS]
                      - keypoints[batch_index, face_index]).abs().sum()
    ear_error = ((regressors[positive][:, 4 + 2 * LANDMARK_KEYPOINTS:]
                  - teacher_regressors[positive][:, 4 + 2 * LANDMARK_KEYPOINTS:]) / SCALE).abs().sum()
    regression = (BOX_WEIGHT * box_error + KEYPOINT_WEIGHT * (keypoint_error + ear_error)) / count
    parts = {"classification": classification.item(), "regression": regression.item(),
             "positives": int(positive.sum())}
    return classification + regression, parts


def nominal_anchor_boxes() -> torch.Tensor:
    """The anchors as square boxes of their nominal sizes (``anchor_scales``). Shape: -> (N, 4)."""
    centres, half = anchor_centres(), anchor_scales()[:, None] / 2
    return torch.cat([centres - half, centres + half], dim=1)


def large_pose_recall(detector: FaceDetector, folder: str) -> dict:
    """Per |yaw| bucket of a ``--large-pose`` build, the share of faces with a detection centred inside their
    landmark box (the build's landmarks are in the 3D convention, whose box a profile's ``face_box`` cannot
    match by IoU)."""
    found = {bucket: [] for bucket in YAW_BUCKETS}
    for shard in sorted(Path(folder).glob("*/shard_*.npz")):
        with np.load(shard) as data:
            for image, landmarks, yaw in zip(data["images"], data["landmarks"], data["yaw"], strict=True):
                low, high = landmarks.min(axis=0), landmarks.max(axis=0)
                hit = any(low[0] <= (d.box[0] + d.box[2]) / 2 <= high[0] and low[1] <= (d.box[1] + d.box[3]) / 2
                          <= high[1] for d in detector.detect(image))
                bucket = next(b for b in YAW_BUCKETS if abs(float(yaw)) <= b[1])
                found[bucket].append(hit)
    return {f"{low}-{high}": round(100 * float(np.mean(hits)), 2) for (low, high), hits in found.items() if hits}


def photo_recall(detector: FaceDetector, root: str, splits: tuple[str, ...] = ("helen_test",)) -> dict:
    """On the photos of 300-W splits: the share of annotated faces whose ``face_box`` has IoU ≥ 0.5 with their
    landmark box, and the detections matching none (some of them real faces that 300-W does not annotate)."""
    found, extra, faces = 0, 0, 0
    for face in iter_300w(root, splits):
        detections = detector.detect(load_image(face.image))
        target = torch.tensor([landmark_box(face.landmarks)], dtype=torch.float64)
        iou = box_iou(torch.tensor([d.face_box for d in detections], dtype=torch.float64).reshape(-1, 4), target)
        hit = bool((iou >= 0.5).any())
        found += hit
        extra += len(detections) - hit
        faces += 1
    return {"recall": round(100 * found / max(faces, 1), 2), "extra": extra, "faces": faces}


def choose_min_score(network: BlazeFace, settings: DetectorTrainSettings) -> dict:
    """The detection threshold to ship with the weights: the lowest of MIN_SCORE_CANDIDATES at which the
    fine-tuned network finds no more extra detections on the training splits' photos than the starting network
    at its own threshold (a network taught profiles scores more of everything, face-like or not)."""
    start = FaceDetector(start_weights(settings))
    reference = photo_recall(start, settings.photos, settings.splits)
    tried = {}
    for min_score in MIN_SCORE_CANDIDATES:
        tried[min_score] = photo_recall(running(network, settings, min_score), settings.photos, settings.splits)
        print(f"min_score {min_score}: {tried[min_score]} (the starting network: {reference})")
        if tried[min_score]["extra"] <= reference["extra"]:
            break
    chosen = min((score for score, result in tried.items() if result["extra"] <= reference["extra"]),
                 default=max(tried))
    return {"min_score": chosen, "photos": f"{settings.photos} {', '.join(settings.splits)}",
            "start": {"min_score": start.min_score, **reference}, "tried": {str(k): v for k, v in tried.items()}}


def start_weights(settings: DetectorTrainSettings) -> Path:
    """The weights a run starts from: ``--init``, else MediaPipe's (as converted)."""
    return Path(settings.init) if settings.init else MEDIAPIPE_WEIGHTS


def running(network: BlazeFace, settings: DetectorTrainSettings, min_score: float) -> FaceDetector:
    """A ``FaceDetector`` with the starting weights' box map, running ``network`` at ``min_score``."""
    detector = FaceDetector(start_weights(settings), min_score=min_score)
    detector.network = network.eval()
    return detector


def validate(network: BlazeFace, settings: DetectorTrainSettings) -> dict:
    detector = running(network, settings, DEFAULT_MIN_SCORE)
    result = {}
    if settings.validation:
        result["large_pose_recall"] = large_pose_recall(detector, settings.validation)
    if settings.photos:
        result["photos"] = photo_recall(detector, settings.photos)
    return result


def train_detector(settings: DetectorTrainSettings, progress: bool = True) -> dict:
    """Fine-tune (or resume) and return the record of the run."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    network, start_record = load_detector_network(start_weights(settings))
    teacher, _ = load_detector_network(start_weights(settings))
    teacher.requires_grad_(False)
    box_map = FaceBoxMap.from_dict(start_record["face_box"])
    images, landmarks = load_crops(settings.data, settings.splits, settings.limit)
    dataset = Mosaics(images, landmarks, settings.seed, settings.samples_per_epoch)
    anchors, anchor_boxes = anchor_centres(), nominal_anchor_boxes()
    optimizer, scheduler = decaying_adam(network.parameters(), settings.lr, settings.final_lr_ratio, settings.epochs)
    checkpoint_path = out / "checkpoint.pt"
    start_epoch, seconds, history = resume(checkpoint_path, settings, network, "network", optimizer, scheduler)
    if start_epoch == 0 and (before := validate(network, settings)):
        history.append({"epoch": 0, **before})
        print(f"before training: {before}")
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        network.train()
        totals = {"loss": 0.0, "classification": 0.0, "regression": 0.0}
        bar = epoch_batches(dataset, settings, epoch, progress)
        for batch_images, batch_landmarks, face in bar:
            boxes, keypoints = targets(batch_landmarks, face, box_map)
            matched, negative = assign(boxes, face, anchor_boxes)
            x = to_input(batch_images)
            with torch.no_grad():
                teacher_regressors, _ = teacher(x)
            regressors, logits = network(x)
            loss, parts = detection_loss(regressors, logits, teacher_regressors, matched, negative, boxes,
                                         keypoints, anchors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals["loss"] += loss.item()
            totals["classification"] += parts["classification"]
            totals["regression"] += parts["regression"]
            bar.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        seconds += time.perf_counter() - started
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 1),
                 **{f"train_{key}": round(value / max(len(bar), 1), 4) for key, value in totals.items()},
                 **validate(network, settings)}
        history.append(entry)
        print(f"epoch {epoch + 1}: {entry}")
        save_checkpoint(checkpoint_path, settings, network, "network", optimizer, scheduler, epoch, seconds, history)
    threshold = choose_min_score(network, settings) if settings.photos else None
    weights = out / "blazeface.pt"
    state = {key: value.half() for key, value in network.state_dict().items()}
    torch.save({"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "state_dict": state}, weights)
    record = {
        "weights": weights.name, "format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "source": start_record.get("source"), "licence": FINE_TUNED_LICENCE,
        "face_box": start_record["face_box"],
        **({"min_score": threshold["min_score"], "min_score_choice": threshold} if threshold else {}),
        "fine_tuning": {
            "command": "cprfa train detector", "settings": asdict(settings), "training_images": len(images),
            "data": manifest_summary(settings.data), "start": start_weights(settings).name,
            "start_sha256": start_record["sha256"], "train_seconds": round(seconds, 1),
            "machine": f"{platform.processor() or platform.machine()}, {settings.threads} torch threads, "
                       f"torch {torch.__version__}",
            "final": history[-1] if history else {}, "history": history,
        },
    }
    weights.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record
