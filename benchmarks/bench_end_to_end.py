"""End to end on the 300-W helen_test photos: what `cprfa align` gives a user, face detection included.

Each photo (a crop of twice the landmark box around one annotated face, as ../shared/data/300w has them)
goes through ``FaceAligner.align_batch`` with its default settings. The face is the result whose box (the
detector's estimate of the tight 68-landmark box) overlaps the annotated landmarks' box most, with IoU ≥ 0.5;
otherwise the face is missed, which counts as a failure. The same photos with the annotated landmark box
given instead of the detector (``boxes``) are the comparison: the protocol of the other benchmarks, through
the whole tool.

Reported: 68-point NME (%) of ``landmarks_2d`` (the fitted model, 2D convention) and of ``head_landmarks``
(the HS-U-Net's own points) against the annotation, mean and median over the faces found, the failure rate
(NME > 10 % or missed, over all faces), and the time per photo.

With ``--large-pose FOLDER`` (a ``cprfa data build --large-pose`` of helen_test: 256² crops of faces turned
to every |yaw| bucket, landmarks of the fitted model in the 3D convention) the photos are those crops and the
NME is that of ``landmarks_3d``, by |yaw| bucket. A profile's 3D-convention box holds its hidden jaw, which no
detector box covers, so there a face is found when the result's box centre lies inside the landmark box.

With ``--mosaic G`` the photos are helen_test's tiled G × G into mosaics of 300 px cells (``--mosaic-cell``;
bench_detect.py's: at G = 8 each face is about 1/16 of the 2400 px image side), aligned with ``--small-faces`` or
``--min-face`` when asked; NME, failures and found count per face, time per mosaic.

With ``--landmark-source mediapipe`` (the mediapipe extra) the fit's sparse landmarks are MediaPipe's face
mesh mapped to 68 (cprfa.detect.landmarks), and the mapped points' own NME in the annotated boxes is printed.

    python benchmarks/bench_end_to_end.py [--data ../shared/data/300w] [--limit N] [--zoom Z] [--no-flip] [--no-refine]
                                          [--weights FILE] [--detector-weights FILE] [--large-pose /tmp/lp]
                                          [--mosaic G [--mosaic-cell PX] [--small-faces | --min-face PX]] [--reframe] [--landmark-source mediapipe]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_detect import BUCKETS, mosaics

from cprfa.align import FaceAligner
from cprfa.data.crop import DEFAULT_ZOOM
from cprfa.data.images import load_image
from cprfa.data.readers import iter_300w, landmark_box
from cprfa.detect.blazeface import box_iou
from cprfa.detect.detector import FaceDetector
from cprfa.detect.landmarks import MediaPipeLandmarks
from cprfa.eval.metrics import nme

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "300w"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the 300-W folder (default: ../shared)")
    parser.add_argument("--split", default="helen_test")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces")
    parser.add_argument("--zoom", type=float, default=DEFAULT_ZOOM, help="crop zoom (DafiEstimator.zoom)")
    parser.add_argument("--weights", type=Path, help="HS-U-Net weights (default: the shipped ones)")
    parser.add_argument("--detector-weights", type=Path, help="face detector weights (default: the shipped ones)")
    parser.add_argument("--large-pose", type=Path, help="a --large-pose build of helen_test instead of the photos")
    parser.add_argument("--mosaic", type=int, default=0, help="G: the photos tiled G × G instead (small faces)")
    parser.add_argument("--mosaic-cell", type=int, default=300, help="each photo's side in the mosaics, pixels")
    parser.add_argument("--small-faces", action="store_true", help="the detector's finer tiles (--small-faces)")
    parser.add_argument("--min-face", type=float, help="faces down to this many pixels (--min-face)")
    parser.add_argument("--reframe", action="store_true", help="detected faces aligned again (--reframe)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="the landmark refiner (FaceAligner's default: on)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="test-time flip (FaceAligner's default: on)")
    parser.add_argument("--landmark-source", choices=("head", "mediapipe"), default="head",
                        help="the fit's 68 sparse landmarks (cprfa align --landmark-source)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    buckets, yaw = (), None
    if args.large_pose:
        images, truth, boxes, yaw = load_large_pose(args.large_pose, args.limit)
        what, buckets = f"{len(images)} profiled views of helen_test ({args.large_pose})", BUCKETS
    elif args.mosaic:
        sets = mosaics(list(iter_300w(args.data, (args.split,)))[:args.limit or None], args.mosaic, args.mosaic_cell)
        images, truth = [canvas for canvas, _ in sets], np.concatenate([np.stack(points) for _, points in sets])
        boxes = [landmark_box(points) for points in truth]
        what = (f"{len(truth)} faces of {args.split} in {len(sets)} {args.mosaic} × {args.mosaic} mosaics of "
                f"{args.mosaic * args.mosaic_cell} px")
    else:
        images, truth, boxes = load_photos(args.data, args.split, args.limit)
        what = f"{len(images)} faces of {args.split}"
    faces_per_image = args.mosaic ** 2 if args.mosaic and not args.large_pose else 1
    owner = np.repeat(np.arange(len(images)), faces_per_image)  # the image of each face
    detector = (FaceDetector(args.detector_weights, small_faces=args.small_faces, min_face=args.min_face)
                if args.detector_weights or args.small_faces or args.min_face else None)
    source = None
    if args.landmark_source == "mediapipe":
        source = MediaPipeLandmarks()
        own = np.concatenate([source(images[owner[f]], [box]) for f, box in enumerate(boxes)])
        meshed = np.isfinite(own[:, 0, 0])
        print(f"MediaPipe's face mesh mapped to 68, in the annotated boxes: found on {meshed.sum()} / {len(boxes)} "
              f"faces, NME {nme(own[meshed], truth[meshed]).mean():.2f} % on those\n")
    aligner = FaceAligner(weights=args.weights, flip=args.flip, refine=args.refine, detector=detector,
                          reframe=args.reframe, landmark_source=source)
    aligner.estimator.zoom = args.zoom
    print(f"{what}, {args.threads} threads, flip {'on' if args.flip else 'off'}, "
          f"refiner {'on' if args.refine else 'off'}, "
          f"zoom {args.zoom}, batches of {args.batch_size} photos, small faces {'on' if args.small_faces else 'off'}, "
          f"min face {args.min_face or 'off'}, "
          f"reframe {'on' if args.reframe else 'off'}\n")
    landmarks = "landmarks_3d" if args.large_pose else "landmarks_2d"
    print(f"| faces from | found | {landmarks} NME mean | median | "
          + "".join(f"[{low}°, {high}°] found / NME | " for low, high in buckets)
          + "head_landmarks NME mean | failure % | ms / photo |")
    print("|---" * (7 + len(buckets)) + "|")
    for label, given in (("the detector", None), ("the annotated landmark box", boxes)):
        start, results = time.perf_counter(), []
        for first in range(0, len(images), args.batch_size):
            chunk = range(first, min(first + args.batch_size, len(images)))
            chunk_boxes = None if given is None else [[given[f] for f in np.flatnonzero(owner == i)] for i in chunk]
            results += aligner.align_batch([images[i] for i in chunk], chunk_boxes)
        milliseconds = 1000 * (time.perf_counter() - start) / len(images)
        match = _centred if args.large_pose else _matching
        found = [match(results[owner[f]], box) for f, box in enumerate(boxes)]
        kept = np.array([i for i, face in enumerate(found) if face is not None], dtype=int)
        fitted = nme(np.stack([getattr(found[i], landmarks)[:, :2] for i in kept]), truth[kept])
        head = nme(np.stack([found[i].head_landmarks for i in kept]), truth[kept])
        failures = (len(boxes) - len(kept) + int((fitted > 10).sum())) / len(boxes)
        cells = ""
        for low, high in buckets:
            inside = ((np.abs(yaw) > low) | (low == 0)) & (np.abs(yaw) <= high)
            hit = inside[kept]
            cells += f"{hit.sum()} / {inside.sum()}, {fitted[hit].mean():.2f} | "
        print(f"| {label} | {len(kept)} / {len(boxes)} | {fitted.mean():.2f} | {np.median(fitted):.2f} | {cells}"
              f"{head.mean():.2f} | {100 * failures:.1f} | {milliseconds:.0f} |")


def load_photos(data: Path, split: str, limit: int = 0):
    """The photos of a 300-W split (the first ``limit``), their annotated 68 landmarks (F, 68, 2) and the tight
    boxes of those."""
    faces = list(iter_300w(data, (split,)))[:limit or None]
    return ([load_image(face.image) for face in faces], np.stack([face.landmarks for face in faces]),
            [landmark_box(face.landmarks) for face in faces])


def load_large_pose(folder: Path, limit: int = 0):
    """The crops of a --large-pose build (the first ``limit``), their landmarks (3D convention), the tight boxes of
    those and the faces' yaw in degrees."""
    shards = sorted((folder / "helen_test").glob("shard_*.npz"))
    if not shards:
        raise SystemExit(f"no shards in {folder / 'helen_test'}: build them with `cprfa data build --large-pose`")
    images, truth, yaw = [], [], []
    for shard in shards:
        with np.load(shard) as content:
            images += list(content["images"])
            truth.append(content["landmarks"])
            yaw.append(content["yaw"])
    truth, yaw = np.concatenate(truth)[:limit or None], np.concatenate(yaw)[:limit or None]
    return images[:limit or None], truth, [landmark_box(points) for points in truth], yaw


def _centred(candidates, box):
    """The aligned face whose box centre lies inside the landmark box and overlaps it most, or None."""
    inside = [face for face in candidates if face is not None
              and box[0] <= (face.box[0] + face.box[2]) / 2 <= box[2]
              and box[1] <= (face.box[1] + face.box[3]) / 2 <= box[3]]
    target = torch.tensor([box], dtype=torch.float64)
    return max(inside, key=lambda face: float(box_iou(torch.tensor([face.box], dtype=torch.float64), target)[0, 0]),
               default=None)


def _matching(candidates, box):
    """The aligned face whose box overlaps the annotated landmark box most (IoU ≥ 0.5), or None."""
    target = torch.tensor([box], dtype=torch.float64)
    scored = [(float(box_iou(torch.tensor([face.box], dtype=torch.float64), target)[0, 0]), face)
              for face in candidates if face is not None]
    best = max(scored, key=lambda item: item[0], default=(0.0, None))
    return best[1] if best[0] >= 0.5 else None


if __name__ == "__main__":
    main()
