"""Recall and precision of cprfa's face detector (``cprfa.detect.detector.FaceDetector``: short-range BlazeFace
fine-tuned by ``cprfa train detector``, at two scales) on 300-W, on profiled faces, and on small faces, against
MediaPipe's own weights; and its speed.

A face counts as found when a detection's ``face_box`` (the detector's estimate of the tight 68-landmark box)
has IoU ≥ 0.5 with the tight box of the face's annotated landmarks (detections and faces paired greedily by
IoU, one to one). Detections paired with no face are counted as extra: 300-W annotates one face per image
here, so some extras are real, unannotated faces. Each set is run with the default detector, with the same
followed by the HS-U-Net's confirmation (what ``cprfa align`` keeps of the detections; its time is the whole
alignment's), with the letterbox alone (tiles off: MediaPipe's own single pass), and with MediaPipe's
weights.

- helen_test, afw: the 300-W images of /work/shared/data (each a crop of twice the landmark box around one
  face, at most 450 px). helen_test is the evaluation split; afw was used to fit the box map (with
  helen_train), so its IoU is not an independent figure.
- large-pose: ``cprfa data build --splits helen_test --large-pose --out /tmp/lp`` (256 × 256 crops, faces turned
  to larger yaw by face profiling; landmarks in the 3D convention, so for profiles the box includes the hidden
  jaw side), recall by |yaw| bucket. Skipped when not built.
- mosaics: helen_test images, each scaled to 300 px, tiled 4 × 4 into 1200 × 1200 images (faces about 1/8 of
  the image side, below what the letterbox alone finds reliably) and 8 × 8 into 2400 × 2400 images (faces about
  1/16 of the side, below what the default tiles find: the rows with ``small_faces``); and scaled to 150 px,
  tiled 16 × 16 into one 2400 × 2400 image (faces of about 75 px, 1/32 of the side, a group photo's: the rows
  with ``min_face``).

    python benchmarks/bench_detect.py [--data ../shared/data/300w] [--large-pose /tmp/lp] [--threads 1]
        [--weights blazeface.pt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.align import FaceAligner, is_confirmed
from cprfa.data.readers import iter_300w, landmark_box
from cprfa.detect.blazeface import box_iou
from cprfa.detect.detector import MEDIAPIPE_WEIGHTS, FaceDetector

BUCKETS = ((0, 30), (30, 60), (60, 90))
MOSAICS = ((4, 300), (8, 300), (16, 150))  # grid, cell side in pixels
MIN_FACE = 60  # pixels: the --min-face rows


def match(detections, targets: list) -> list[float]:
    """IoU of each found target (greedy one-to-one pairing of face boxes and targets at IoU ≥ 0.5); -1 if
    missed. Returns one value per target."""
    result = [-1.0] * len(targets)
    if not detections or not targets:
        return result
    iou = box_iou(torch.tensor([d.face_box for d in detections], dtype=torch.float64),
                  torch.tensor(targets, dtype=torch.float64))
    while True:
        value = float(iou.max())
        if value < 0.5:
            return result
        d, t = divmod(int(iou.argmax()), iou.shape[1])
        result[t] = value
        iou[d, :], iou[:, t] = -1, -1


class Confirmed:
    """A detector followed by what ``cprfa align`` does with its detections: each box through the HS-U-Net and
    the fit, kept where the network confirms a face (``cprfa.align.is_confirmed``). Its time is the whole
    alignment's (a little more than ``cprfa align`` spends, which does not fit a detection it does not confirm)."""

    def __init__(self, detector: FaceDetector):
        self.detector, self.aligner = detector, FaceAligner(detector=detector)

    def detect(self, image: np.ndarray) -> list:
        detections = self.detector.detect(image)
        results = self.aligner.align(image, [d.face_box for d in detections]) if detections else []
        return [d for d, result in zip(detections, results, strict=True) if is_confirmed(result)]


class Tally:
    def __init__(self):
        self.faces, self.ious, self.extra, self.images, self.seconds, self.last = 0, [], 0, 0, [], []

    def add(self, detector: FaceDetector | Confirmed, image: np.ndarray, targets: list) -> list[float]:
        start = time.perf_counter()
        detections = self.last = detector.detect(image)
        self.seconds.append(time.perf_counter() - start)
        ious = match(detections, targets)
        found = [v for v in ious if v >= 0]
        self.images += 1
        self.faces += len(targets)
        self.ious += found
        self.extra += len(detections) - len(found)
        return ious

    def row(self, name: str) -> str:
        recall = len(self.ious) / max(self.faces, 1)
        mean_iou = f"{np.mean(self.ious):.3f}" if self.ious else "–"
        return (f"| {name} | {self.images} | {self.faces} | {len(self.ious)} | {100 * recall:.1f} % | {mean_iou} | "
                f"{self.extra} | {1000 * statistics.median(self.seconds):.1f} |")


def mosaics(faces, grid: int, cell_side: int) -> list[tuple[np.ndarray, list]]:
    """grid × grid mosaics of the faces' images, each scaled to ``cell_side`` pixels, in a fixed shuffled order,
    with the faces' landmarks (68, 2) in the mosaic's pixels."""
    order = np.random.default_rng(0).permutation(len(faces))
    count = grid * grid
    result = []
    for start in range(0, len(order) - count + 1, count):
        side = grid * cell_side
        canvas, targets = np.zeros((side, side, 3), np.uint8), []
        for cell, index in enumerate(order[start:start + count]):
            image = read_rgb(faces[index].image)
            k = cell_side / max(image.shape[:2])
            size = (round(image.shape[1] * k), round(image.shape[0] * k))
            y0, x0 = (cell // grid) * cell_side, (cell % grid) * cell_side
            canvas[y0:y0 + size[1], x0:x0 + size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            targets.append(faces[index].landmarks * k + [x0, y0])
        result.append((canvas, targets))
    return result


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/300w")
    parser.add_argument("--large-pose", type=Path, default=Path("/tmp/lp"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set (quick runs)")
    parser.add_argument("--weights", type=Path, help="detector weights (default: the shipped, fine-tuned ones)")
    args = parser.parse_args()
    limit = args.limit or None
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    detectors = {"default": FaceDetector(args.weights),
                 "default, confirmed by the HS-U-Net": Confirmed(FaceDetector(args.weights)),
                 "small faces (finer tiles too)": FaceDetector(args.weights, small_faces=True),
                 "small faces, confirmed": Confirmed(FaceDetector(args.weights, small_faces=True)),
                 f"min face {MIN_FACE} px": FaceDetector(args.weights, min_face=MIN_FACE),
                 f"min face {MIN_FACE} px, confirmed": Confirmed(FaceDetector(args.weights, min_face=MIN_FACE)),
                 "letterbox only": FaceDetector(args.weights, tiles=False),
                 "MediaPipe's weights": FaceDetector(MEDIAPIPE_WEIGHTS),
                 "MediaPipe's, letterbox only": FaceDetector(MEDIAPIPE_WEIGHTS, tiles=False)}
    print(f"FaceDetector: min_score {detectors['default'].min_score}; face box map "
          f"{detectors['default'].face_box_map}; {args.threads} thread(s) for torch and OpenCV\n")

    header = ("| set | detector | images | faces | found | recall | mean IoU of found | extra detections | "
              "ms / image (median) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("### 300-W photos (found: face_box IoU ≥ 0.5 with the tight landmark box)\n")
    print(header)
    for split in ("helen_test", "afw"):
        faces = list(iter_300w(args.data, (split,)))[:limit]
        images = [read_rgb(face.image) for face in faces]
        for name, detector in detectors.items():
            tally = Tally()
            for face, image in zip(faces, images, strict=True):
                tally.add(detector, image, [landmark_box(face.landmarks)])
            print(tally.row(f"{split} | {name}"))
        if split == "helen_test":
            helen_test = faces
    for grid, cell_side in MOSAICS:
        sets = mosaics(helen_test, grid, cell_side)
        for name, detector in detectors.items() if sets else ():  # none with --limit under grid²
            tally = Tally()
            for canvas, targets in sets:
                tally.add(detector, canvas, [landmark_box(points) for points in targets])
            print(tally.row(f"helen_test {grid}×{grid} mosaics ({grid * cell_side} px) | {name}"), flush=True)

    shards = sorted((args.large_pose / "helen_test").glob("shard_*.npz"))
    if not shards:
        print(f"\n(large-pose set {args.large_pose}/helen_test not built, skipped)")
        return
    print("\n### Large-pose helen_test (256 × 256 crops, profiled faces): recall by |yaw| bucket\n")
    print("found: face_box IoU ≥ 0.5 as above; detected: some detection's own box has its centre inside the "
          "landmark box (a face seen, however well its box fits)\n")
    print("| detector | criterion | " + " | ".join(f"yaw {low}–{high}°" for low, high in BUCKETS)
          + " | all | extra detections | ms / image (median) |")
    print("| --- | --- |" + " ---: |" * (len(BUCKETS) + 3))
    for name, detector in detectors.items():
        tally, found, detected, yaws = Tally(), [], [], []
        for shard in shards:
            with np.load(shard) as content:
                images, landmarks, yaw = (content[key][:limit] for key in ("images", "landmarks", "yaw"))
            for image, points in zip(images, landmarks, strict=True):
                box = landmark_box(points)
                found.append(tally.add(detector, np.ascontiguousarray(image), [box])[0] >= 0)
                detected.append(any(box[0] <= (d.box[0] + d.box[2]) / 2 <= box[2]
                                    and box[1] <= (d.box[1] + d.box[3]) / 2 <= box[3] for d in tally.last))
            yaws += np.abs(yaw).tolist()
            if limit and len(yaws) >= limit:
                break
        yaws = np.array(yaws)
        for criterion, hits in (("found", np.array(found)), ("detected", np.array(detected))):
            cells = []
            for low, high in BUCKETS:
                inside = ((yaws > low) | (low == 0)) & (yaws <= high)
                cells.append(f"{100 * hits[inside].mean():.1f} % of {inside.sum()}")
            print(f"| {name} | {criterion} | " + " | ".join(cells) + f" | {100 * hits.mean():.1f} % of {len(hits)} | "
                  f"{tally.extra} | {1000 * statistics.median(tally.seconds):.1f} |")


if __name__ == "__main__":
    main()
