"""Speed of ``FaceAligner.align`` in two checkouts of cprfa, call by call in alternation: an A/B for a change.

A developer script. This machine's speed drifts by up to 1.5× within minutes, more than most changes gain, so
two benchmark runs one after the other say little; here each checkout runs in its own process (its folder
first on ``PYTHONPATH``), both load the bundled example once, and the driver asks them for one call at a time,
in turn, ``--rounds`` times two calls each. Printed: per checkout, the medians of the whole call and of each
stage (``FaceResult.timings``, ms per box), the face detected and then in its given box. ``--turn`` turns the
example about its centre first (a tilted face; the given box is then the face's upright box, with the roll).

    git worktree add /tmp/base main
    python tools/compare_speed.py /tmp/base [--new .] [--method cpr --no-flip --no-refine] [--no-tiles]
                                  [--turn DEGREES] [--rounds 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
KINDS = ("detected", "box given")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the checkout to compare with (its root folder)")
    parser.add_argument("--new", type=Path, default=HERE, help="the other checkout (default: this one)")
    parser.add_argument("--method", default="cpr+refine")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--no-tiles", action="store_true", help="the detector on the whole photo only")
    parser.add_argument("--turn", type=float, default=0.0,
                        help="the example turned by this many degrees, counter-clockwise (a tilted face)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _work(args)
    settings = [f"--method={args.method}", "--flip" if args.flip else "--no-flip",
                "--refine" if args.refine else "--no-refine", f"--threads={args.threads}", f"--turn={args.turn}",
                *(["--no-tiles"] if args.no_tiles else [])]
    workers = {}
    for name, root in (("base", args.base.resolve()), ("new", args.new.resolve())):
        if not (root / "cprfa" / "__init__.py").is_file():
            sys.exit(f"{root} is not a checkout of cprfa")
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, str(root), "--worker", *settings], cwd=root, text=True,
            env={**os.environ, "PYTHONPATH": str(root)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if workers[name].stdout.readline().strip() != "ready":
            sys.exit(f"the {name} checkout's worker did not start")
    print(f"{args.rounds} rounds of 2 calls each, in turn; ms, medians; {' '.join(settings)}\n")
    print("| faces | checkout | call | detect | crop | dafi | retrieval | fit | outputs |")
    print("|---" * 9 + "|")
    for kind in KINDS:
        results = {name: [] for name in workers}
        for _ in range(args.rounds):
            for name, worker in workers.items():
                for _ in range(2):
                    worker.stdin.write(kind + "\n")
                    worker.stdin.flush()
                    results[name].append(json.loads(worker.stdout.readline()))
        for name, runs in results.items():
            print(f"| {kind} | {name} | " + " | ".join(f"{np.median([run[key] for run in runs]):.1f}"
                                                      for key in runs[0]) + " |")
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()


def _work(args) -> None:
    """One checkout's side: align the bundled example as asked on stdin, one JSON line of timings per call."""
    import cv2
    import torch

    from cprfa.align import FaceAligner
    from cprfa.data.boxes import read_boxes
    from cprfa.data.images import load_image
    from cprfa.detect.detector import FaceDetector

    torch.set_num_threads(args.threads)
    examples = args.base / "examples"
    aligner = FaceAligner(method=args.method, flip=args.flip, refine=args.refine,
                          detector=FaceDetector(tiles=False) if args.no_tiles else None)
    image = load_image(examples / "astronaut.jpg")
    x0, y0, x1, y1 = read_boxes(examples / "astronaut.boxes.csv")["astronaut.jpg"][0]
    height, width = image.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), args.turn, 1.0)
    image = cv2.warpAffine(image, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    centre_x, centre_y = turn @ [(x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, 1.0] + 0.5  # OpenCV: centres at integers
    half_width, half_height = (x1 - x0) / 2, (y1 - y0) / 2
    given = {"detected": {}, "box given": {"boxes": [(centre_x - half_width, centre_y - half_height,
                                                      centre_x + half_width, centre_y + half_height)],
                                           "rolls": [args.turn]}}
    for _ in range(3):  # warm-up: graphs, caches
        for kind in KINDS:
            aligner.align(image, **given[kind])
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        faces = aligner.align(image, **given[line.strip()])
        print(json.dumps({"call": 1000 * (time.perf_counter() - start), **faces[0].timings}), flush=True)


if __name__ == "__main__":
    main()
