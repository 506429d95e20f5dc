"""Speed of ``FaceAligner.align`` per stage, on the bundled example (its face found by the detector, its face in
the given box, and that box 16 times as a batch), median of ``--repeats`` runs after one warm-up, 2 torch threads;
then the process's peak resident memory once it has also aligned a batch of 32 faces.

Run: python benchmarks/bench_align.py [--method cpr+refine|cpr+pose|cpr|online|cpr+online] [--runtime auto|torch|onnx]
     [--no-flip] [--no-refine] [--no-tiles]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from cprfa.align import FaceAligner
from cprfa.data.boxes import read_boxes
from cprfa.data.images import load_image
from cprfa.detect.detector import FaceDetector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="cpr+refine", help="FaceAligner method (default cpr+refine)")
    parser.add_argument("--runtime", default="auto",
                        help="what runs the networks: auto (default, as cprfa align), torch or onnx")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="the landmark refiner (FaceAligner's default: on)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="test-time flip augmentation of the HS-U-Net (FaceAligner's default: on)")
    parser.add_argument("--no-tiles", action="store_true", help="the detector on the whole photo only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    aligner = FaceAligner(method=args.method, runtime=args.runtime, flip=args.flip, refine=args.refine,
                          detector=FaceDetector(tiles=False) if args.no_tiles else None)
    image = load_image(EXAMPLES / "astronaut.jpg")
    box = read_boxes(EXAMPLES / "astronaut.boxes.csv")["astronaut.jpg"][0]
    print("| faces | boxes | detect | crop | dafi | retrieval | fit | outputs | total per box | the call |")
    print("|---" * 10 + "|")
    for label, boxes in (("detected", None), ("box given", [box]), ("boxes given", [box] * 16)):
        taken = len(boxes) if boxes is not None else len(aligner.detect(image))
        aligner.align(image, boxes)
        runs, calls = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            runs.append(aligner.align(image, boxes)[0].timings)
            calls.append(1000 * (time.perf_counter() - start))
        stages = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
        total = float(np.median([sum(run.values()) for run in runs]))
        print(f"| {label} | {taken} | " + " | ".join(f"{value:.1f}" for value in stages.values())
              + f" | {total:.1f} | {np.median(calls):.1f} |")
    print("\nms per box (the call's time per stage divided by the boxes it took, detected or given: a detection "
          "the HS-U-Net does not confirm goes through it, not through the fit), and ms for the whole call")
    aligner.align(image, [box] * 32)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\npeak resident memory of the process after a batch of 32 faces: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
