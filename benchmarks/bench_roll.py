"""Tilted faces: helen_test photos turned in the image plane, aligned by `cprfa align` as a user would.

Each photo (a 300-W crop around one face) is turned by each angle about its centre (OpenCV, the canvas grown to
hold it, edges mirrored), with its annotated landmarks. The face is the result whose box centre lies inside
the turned landmarks' box; NME is that of ``landmarks_2d`` against the turned annotation (68 points, % of the
landmark box's sqrt(w·h)); failure: NME > 10 % or no face. Four ways in:

- the detector: ``FaceAligner().align(photo)``, the shipped detector (its keypoints give each face's roll);
- ``--any-roll``: the detector also on the photo turned by quarter turns (``FaceDetector(any_roll=True)``);
- the box: the turned landmarks' axis-aligned box, no roll (what a box alone says);
- the box and roll: the landmarks' box turned upright with the true roll (``align(boxes, rolls=...)``).

    python benchmarks/bench_roll.py [--data ../shared/data/300w] [--limit 60] [--angles 0 20 40 60 90 135 180]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from bench_end_to_end import DEFAULT_DATA, _centred, load_photos

from cprfa.align import FaceAligner
from cprfa.data.crop import upright_box
from cprfa.data.readers import landmark_box
from cprfa.detect.detector import FaceDetector
from cprfa.eval.metrics import nme

WAYS = ("the detector", "--any-roll", "the box", "the box and roll")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="the 300-W folder (default: ../shared)")
    parser.add_argument("--limit", type=int, default=60, help="the first N faces of helen_test")
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 20, 40, 60, 90, 135, 180])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, truth, _ = load_photos(args.data, "helen_test", args.limit)
    aligner = FaceAligner()
    any_roll = FaceAligner(detector=FaceDetector(any_roll=True))
    print(f"{len(images)} faces of helen_test, turned; cells: faces found / mean NME % of those / failures %; "
          f"{args.threads} threads, defaults otherwise\n")
    print("| turned by | " + " | ".join(WAYS) + " | ms / photo (detector, --any-roll) |")
    print("|---" * (len(WAYS) + 2) + "|")
    for angle in args.angles:
        cells, times = [], []
        for way in WAYS:
            start, errors = time.perf_counter(), []
            for image, points in zip(images, truth, strict=True):
                turned, turned_points = turn(image, points, angle)
                box = landmark_box(turned_points)
                if way == "the detector":
                    results = aligner.align(turned)
                elif way == "--any-roll":
                    results = any_roll.align(turned)
                elif way == "the box":
                    results = aligner.align(turned, [box])
                else:
                    results = aligner.align(turned, [upright_box(turned_points, angle)], rolls=[angle])
                face = _centred(results, box)
                errors.append(np.inf if face is None else
                              float(nme(face.landmarks_2d[None, :, :2], turned_points[None])[0]))
            times.append(1000 * (time.perf_counter() - start) / len(images))
            errors = np.array(errors)
            found = np.isfinite(errors)
            failures = 100 * ((~found) | (errors > 10)).mean()
            cells.append(f"{found.sum()} / {errors[found].mean():.2f} / {failures:.1f}")
        print(f"| {angle:g}° | " + " | ".join(cells) + f" | {times[0]:.0f}, {times[1]:.0f} |", flush=True)


def turn(image: np.ndarray, points: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo turned counter-clockwise on screen by ``degrees`` about its centre, on a canvas grown to hold
    it (edges mirrored), and its points (68, 2) with it (pixel-corner coordinates)."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    size = (round(height * sin + width * cos), round(height * cos + width * sin))
    matrix[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2
    turned = cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REFLECT)
    # OpenCV's matrix maps pixel centres (at integers); cprfa's points put pixel centres at .5
    return turned, (points - 0.5) @ matrix[:, :2].T + matrix[:, 2] + 0.5


if __name__ == "__main__":
    main()
