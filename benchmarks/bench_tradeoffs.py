"""Speed against accuracy: what each of ``cprfa align``'s options costs and gives, on the same photos.

For each configuration of ``FaceAligner`` (method, test-time flip, landmark refiner): the 68-point NME (%) of
``landmarks_2d`` and of ``head_landmarks`` against the annotation on the 300-W helen_test photos, given the
annotated landmark box (the face detector costs every configuration the same), and the failure rate (NME >
10 % or no face recognised); then the time of ``FaceAligner.align`` on the bundled example's face alone and
per face in the batches of the accuracy run. The one-face times are the median of ``--repeats`` runs after a
warm-up, in two passes over the configurations, so that this machine's drifting load touches them alike.

    python benchmarks/bench_tradeoffs.py [--data ../shared/data/300w] [--limit N] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_end_to_end import DEFAULT_DATA, load_photos

from cprfa.align import FaceAligner
from cprfa.data.boxes import read_boxes
from cprfa.data.images import load_image
from cprfa.eval.metrics import nme

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# (command-line options of `cprfa align`, FaceAligner keywords)
CONFIGURATIONS = (
    ("(defaults: --method cpr+refine)", {}),
    ("--no-refine", {"refine": False}),
    ("--no-flip", {"flip": False}),
    ("--no-flip --no-refine", {"flip": False, "refine": False}),
    ("--method cpr+pose", {"method": "cpr+pose"}),
    ("--method cpr", {"method": "cpr"}),
    ("--method cpr --no-flip --no-refine", {"method": "cpr", "flip": False, "refine": False}),
    ("--method online", {"method": "online"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the 300-W folder (default: ../shared)")
    parser.add_argument("--split", default="helen_test")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces")
    parser.add_argument("--repeats", type=int, default=10, help="one-face timings per configuration and pass")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, truth, boxes = load_photos(args.data, args.split, args.limit)
    boxes = [[box] for box in boxes]
    aligners = [FaceAligner(**options) for _, options in CONFIGURATIONS]

    rows = []
    for aligner in aligners:
        start, results = time.perf_counter(), []
        for first in range(0, len(images), args.batch_size):
            chunk = slice(first, first + args.batch_size)
            results += [faces_of[0] for faces_of in aligner.align_batch(images[chunk], boxes[chunk])]
        batched = 1000 * (time.perf_counter() - start) / len(images)
        kept = [i for i, face in enumerate(results) if face is not None]
        fitted = nme(np.stack([results[i].landmarks_2d for i in kept]), truth[kept])
        head = nme(np.stack([results[i].head_landmarks for i in kept]), truth[kept])
        failures = (len(images) - len(kept) + int((fitted > 10).sum())) / len(images)
        rows.append({"fitted": fitted.mean(), "head": head.mean(), "failures": 100 * failures, "batched": batched})

    image = load_image(EXAMPLES / "astronaut.jpg")
    box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    one_face = [[] for _ in aligners]
    for _ in range(2):  # two passes over the configurations, so that a slow minute touches them alike
        for times, aligner in zip(one_face, aligners, strict=True):
            aligner.align(image, [box])  # warm: as the second of a user's photos finds it
            for _ in range(args.repeats):
                start = time.perf_counter()
                aligner.align(image, [box])
                times.append(1000 * (time.perf_counter() - start))

    print(f"{len(images)} faces of {args.split} with the annotated landmark box, {args.threads} threads; one face: "
          f"the bundled example, median of 2 × {args.repeats} warm runs; batched: the accuracy run, "
          f"{args.batch_size} photos a batch\n")
    print("| `cprfa align` options | `landmarks_2d` NME % | `head_landmarks` NME % | failure % "
          "| ms, one face | ms / face, batched |")
    print("|---|---|---|---|---|---|")
    for (label, _), row, times in zip(CONFIGURATIONS, rows, one_face, strict=True):
        print(f"| {label} | {row['fitted']:.2f} | {row['head']:.2f} | {row['failures']:.1f} "
              f"| {np.median(times):.1f} | {row['batched']:.1f} |")


if __name__ == "__main__":
    main()
