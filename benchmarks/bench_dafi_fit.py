"""68-point alignment from the HS-U-Net without CPR: the paper's DAFI baselines and the landmark head.

For every face of helen_test and its occluded and large-pose sets (built as in bench_dafi.py), given the
ground-truth landmark box (cprfa.data.crop policy):

- "landmark head": the HS-U-Net's 68 heatmap landmarks directly;
- "PnP + DAFI": weak-perspective pose of the mean shape fitted to the retrieved vertices (α = 0);
- "on-line optimization + DAFI" (paper Fig. 1a): pose, identity and expression fitted to the retrieved
  vertices (Levenberg–Marquardt, Gaussian priors, Geman–McClure robust loss);
- "+ landmark head": the same with the head's 68 landmarks (silhouette jaw) added, each source weighing half.

The fits use up to ``--points`` retrieved vertices per face, drawn at random with a fixed seed (all of them
would cost ~20× more time for the same answer). Their 68 landmarks are read off the fitted model in the set's
own convention: 2D (silhouette jaw, the 300-W annotation) for plain and occluded, 3D (fixed vertices) for the
large-pose set, whose ground truth is 3D. NME (%) by |yaw| bucket as in DESIGN.md.

Run: python benchmarks/bench_dafi_fit.py [--sets plain=/tmp/pgt occluded=/tmp/occ large-pose=/tmp/lp]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from evaluation_sets import LARGE_POSE, add_set_arguments, estimator_of, evaluation_sets

from cprfa.dafi.evaluate import observe
from cprfa.eval.metrics import FAILURE_NME, YAW_BUCKETS, nme, yaw_bucket
from cprfa.fitting.baselines import online_optimization, online_optimization_with_landmarks, pnp
from cprfa.fitting.optimize import FitOptions
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import default_face_model
from cprfa.model.projection import landmarks_3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--points", type=int, default=512, help="retrieved vertices per face used by the fits")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set (quick runs)")
    parser.add_argument("--prior-weight", type=float, default=FitOptions().identity_weight,
                        help="λ of the identity and expression priors of the on-line optimization")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()
    estimator = estimator_of(args, args.flip, args.zoom)
    options = FitOptions(robust="geman-mcclure", identity_weight=args.prior_weight, expression_weight=args.prior_weight)
    for name, faces in evaluation_sets(args, estimator.input_size, args.limit, estimator.detail_size):
        convention = landmarks_3d if name == LARGE_POSE else landmarks_2d
        rng = np.random.default_rng(0)
        errors = {"landmark head": [], "PnP + DAFI": [], "on-line optimization + DAFI": [],
                  "on-line optimization + DAFI + landmark head": []}
        seconds = {key: 0.0 for key in errors}
        for batch in observe(estimator, faces, model):
            targets = faces.landmarks[batch.start:batch.stop]
            errors["landmark head"].append(nme(batch.prediction.landmarks, targets))
            points, ids, weights = _correspondences(batch.observed, args.points, rng)
            head = torch.from_numpy(batch.prediction.landmarks.astype(np.float64))
            for method, fit, extra in (("PnP + DAFI", pnp, ()),
                                       ("on-line optimization + DAFI", online_optimization, (options,)),
                                       ("on-line optimization + DAFI + landmark head",
                                        online_optimization_with_landmarks, (head, 0.5, options))):
                start = time.perf_counter()
                params = fit(model, points, ids, weights, *extra)
                seconds[method] += time.perf_counter() - start
                errors[method].append(nme(convention(model, params)[..., :2].numpy(), targets))
        bucket = yaw_bucket(np.degrees(faces.params[:, 1]))
        counts = [int((bucket == b).sum()) for b in range(len(YAW_BUCKETS))]
        print(f"### {name}: {len(faces)} faces of {args.split}, landmarks in the "
              f"{'3D' if name == LARGE_POSE else '2D'} convention\n")
        print("| method | " + " | ".join(f"[{lo:.0f}°, {hi:.0f}°] (n={n})" for (lo, hi), n in
                                       zip(YAW_BUCKETS, counts, strict=True))
              + " | balanced | mean | failure % | fit ms / face |")
        print("|---" * 8 + "|")
        for method, values in errors.items():
            values = np.concatenate(values)
            cells = [values[bucket == b].mean() if counts[b] else np.nan for b in range(len(YAW_BUCKETS))]
            balanced = np.nanmean(cells)
            timing = f"{1000 * seconds[method] / len(faces):.0f}" if seconds[method] else "–"
            print(f"| {method} | " + " | ".join("–" if np.isnan(c) else f"{c:.2f}" for c in cells)
                  + f" | {balanced:.2f} | {values.mean():.2f} | {100 * (values > FAILURE_NME).mean():.1f} | {timing} |")
        print()


def _correspondences(observed, count: int, rng: np.random.Generator):
    """Up to ``count`` detected vertices per face, as padded (B, count) arrays with weight 0 on the padding."""
    batch = len(observed.detected)
    points = np.zeros((batch, count, 2), np.float64)
    ids = np.zeros((batch, count), np.int64)
    weights = np.zeros((batch, count), np.float64)
    for i in range(batch):
        found = np.flatnonzero(observed.detected[i])
        chosen = rng.choice(found, size=min(count, len(found)), replace=False) if len(found) else found
        points[i, :len(chosen)] = observed.positions[i, chosen]
        ids[i, :len(chosen)] = chosen
        weights[i, :len(chosen)] = 1.0
    return torch.from_numpy(points), torch.from_numpy(ids), torch.from_numpy(weights)


if __name__ == "__main__":
    main()
