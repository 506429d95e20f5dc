"""How well the face model represents real faces: fit it to 300-W's annotated 68 landmarks and report the NME.

Run: python benchmarks/bench_landmark_fit.py [--data ../shared/data/300w] [--splits helen_test afw]
       [--contour/--no-contour] [--identity-weight W] [--expression-weight W]
NME = mean landmark distance / sqrt(w·h) of the annotated landmarks' box, in %. Reference: the Surrey Face
Model fitted to the same landmarks by eos gets 1.98 % on helen_test and 2.30 % on afw.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cprfa.data.readers import iter_300w
from cprfa.eval.metrics import nme, summarize
from cprfa.fitting.landmarks import fit_landmarks
from cprfa.fitting.optimize import FitOptions
from cprfa.model.face_model import default_face_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "300w"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--splits", nargs="+", default=["helen_test", "afw"])
    parser.add_argument("--no-contour", dest="contour", action="store_false")
    parser.add_argument("--identity-weight", type=float, default=FitOptions.identity_weight)
    parser.add_argument("--expression-weight", type=float, default=FitOptions.expression_weight)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=0,
                        help="hide this many random inner landmarks per face from the fit and report the NME on "
                        "them alone: how well the fit predicts points it did not see (to choose the prior weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()
    options = FitOptions(identity_weight=args.identity_weight, expression_weight=args.expression_weight)

    print(f"fit of {model.name} to 300-W landmarks; contour={args.contour}, λ_id={options.identity_weight}, "
          f"λ_exp={options.expression_weight}, {options.pose_iterations}+{options.iterations} LM iterations\n")
    print("| split | images | mean NME % | median | p90 | failures % | s / face |\n|---|---|---|---|---|---|---|")
    for split in args.splits:
        targets = np.stack([face.landmarks for face in iter_300w(args.data, (split,))])
        weights = np.ones(targets.shape[:2])
        rng = np.random.default_rng(0)
        for row in weights[:, :] if args.holdout else []:
            row[rng.choice(np.arange(17, 68), args.holdout, replace=False)] = 0
        start = time.perf_counter()
        fitted = np.concatenate([
            fit_landmarks(model, torch.from_numpy(targets[i:i + args.batch_size]),
                          torch.from_numpy(weights[i:i + args.batch_size]), options=options,
                          contour=args.contour).landmarks.numpy()
            for i in range(0, len(targets), args.batch_size)
        ])
        seconds = (time.perf_counter() - start) / len(targets)
        if args.holdout:  # NME over the hidden points only, normalized by the whole annotation's box
            hidden = weights == 0
            size = np.sqrt(np.prod(targets.max(axis=1) - targets.min(axis=1), axis=1))
            distance = np.linalg.norm(fitted - targets, axis=-1)
            errors = 100 * (distance * hidden).sum(axis=1) / hidden.sum(axis=1) / size
        else:
            errors = nme(fitted, targets)
        s = summarize(errors)
        print(f"| {split} | {s['images']} | {s['mean']:.2f} | {s['median']:.2f} | {s['p90']:.2f} | "
              f"{s['failure_rate']:.1f} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
