"""The CPR aligner (round one) against the training-free baselines, on the same observed points.

Every method gets exactly the same input: the observed positions of the C selected vertices (cprfa.cpr.
selection) that are detected. "PnP" fits the mean shape's pose to them; "on-line optimization" fits pose,
identity and expression (Levenberg–Marquardt, Gaussian priors, Geman–McClure robust loss, as cprfa align
uses it); "CPR(C)" is round one of the CPR aligner (cprfa.cpr.regressor, shipped weights); "CPR, then
on-line optimization" starts the on-line optimization from CPR's result instead of the frontal mean face.

Sets:
- synthetic, with known parameters (cprfa.data.point_sets; fixed seeds, never seen in training): the
  training distribution, and the occluded test distribution (30 % of the landmark box occluded, 5 % outliers,
  30 % drop-out, 1 % noise). 68-point NME (3D convention), dense NME over all face vertices, mean absolute
  pitch / yaw / roll error in degrees.
- helen_test and its occluded and large-pose sets (built as in bench_dafi.py) through the shipped HS-U-Net
  and vertex retrieval: 68-point NME in each set's own convention (2D silhouette jaw for plain and occluded,
  3D for large-pose), by |yaw| bucket as DESIGN.md.

On the real sets two more rows add the HS-U-Net's 68 landmarks (2D convention, half the weight) to the
on-line optimization, as ``cprfa align`` runs it: started from the mean face, and started from CPR's result.

Speed: round one on one face and per face in a batch of 32, C = 512, on ``--threads`` torch threads.

Run: python benchmarks/bench_cpr.py [--faces 500] [--sets plain=/tmp/pgt occluded=/tmp/occ large-pose=/tmp/lp]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from evaluation_sets import LARGE_POSE, add_set_arguments, evaluation_sets

from cprfa.cpr.frame import NormalizedFrame
from cprfa.cpr.regressor import align_point_sets, load_aligner
from cprfa.dafi.evaluate import observe
from cprfa.dafi.predict import DafiEstimator
from cprfa.data.point_sets import OCCLUDED_TEST, PointSetSettings, synthetic_point_sets
from cprfa.eval.metrics import FAILURE_NME, YAW_BUCKETS, nme, yaw_bucket
from cprfa.fitting.baselines import online_optimization, online_optimization_with_landmarks, pnp
from cprfa.fitting.optimize import FitOptions
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import default_face_model
from cprfa.model.projection import ParamLayout, image_vertices, landmarks_3d

SYNTHETIC_SEED = 2_000_000  # training draws seeds below 10^6 per epoch batch; validation uses 10^6
FUSED = ("on-line optimization + landmark head", "CPR, then on-line optimization + landmark head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--cpr-weights", help="CPR aligner weights (default: the shipped ones)")
    parser.add_argument("--faces", type=int, default=500, help="faces per synthetic set")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each real set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()
    aligner = load_aligner(args.cpr_weights, model)
    fitters = _fitters(model, aligner)
    label = f"CPR({2 * aligner.channels.shape[1]})"
    print(f"## Speed of round one (C = {2 * aligner.channels.shape[1]}, {args.threads} torch threads)\n")
    _speed(aligner, model)
    for offset, (name, settings) in enumerate((("synthetic", PointSetSettings()),
                                               ("synthetic, 30 % occluded + 5 % outliers", OCCLUDED_TEST))):
        sets = synthetic_point_sets(model, args.faces, SYNTHETIC_SEED + offset, settings)
        truth = sets.params
        rows = {}
        for method, fit in fitters.items():
            start = time.perf_counter()
            params = fit(sets.points, sets.detected)
            seconds = time.perf_counter() - start
            dense = (image_vertices(model, params, model.face_area) - image_vertices(model, truth, model.face_area))
            rows[method] = {
                "nme": nme(landmarks_3d(model, params)[..., :2].numpy(), landmarks_3d(model, truth)[..., :2].numpy()),
                "dense": 100 * dense[..., :2].norm(dim=-1).mean(dim=1).numpy() / sets.face_size.numpy(),
                "angles": np.degrees((params[:, :3] - truth[:, :3]).abs().numpy()).mean(axis=0),
                "ms": 1000 * seconds / len(truth)}
        print(f"### {name}: {len(truth)} faces (seed {SYNTHETIC_SEED + offset}), "
              f"{sets.detected[:, aligner.channels[:2].reshape(-1)].float().mean() * 100:.0f} % of the selected "
              "vertices detected\n")
        bucket = yaw_bucket(np.degrees(truth[:, 1].numpy()))
        _table(rows, bucket, label, extra=True)
    for name, faces in evaluation_sets(args, DafiEstimator.from_file(args.weights).input_size, args.limit):
        estimator = DafiEstimator.from_file(args.weights)
        frame = NormalizedFrame.for_crop(model, estimator.input_size)
        convention = landmarks_3d if name == LARGE_POSE else landmarks_2d
        rows = {method: {"nme": [], "ms": 0.0} for method in (*fitters, *FUSED)}
        for batch in observe(estimator, faces, model):
            points = frame.points_to_frame(torch.from_numpy(batch.observed.positions))
            detected = torch.from_numpy(batch.observed.detected)
            head = frame.points_to_frame(torch.from_numpy(batch.prediction.landmarks))
            targets = faces.landmarks[batch.start:batch.stop]
            for method in rows:
                start = time.perf_counter()
                if method in fitters:
                    params = fitters[method](points, detected)
                else:
                    initial = fitters["CPR"](points, detected) if method == FUSED[1] else None
                    params = _fused(model, aligner, points, detected, head, initial)
                rows[method]["ms"] += 1000 * (time.perf_counter() - start) / len(faces)
                params = frame.params_from_frame(params)
                rows[method]["nme"].append(nme(convention(model, params)[..., :2].numpy(), targets))
        for row in rows.values():
            row["nme"] = np.concatenate(row["nme"])
        print(f"### {name}: {len(faces)} faces of {args.split} through the HS-U-Net, landmarks in the "
              f"{'3D' if name == LARGE_POSE else '2D'} convention\n")
        _table(rows, yaw_bucket(np.degrees(faces.params[:, 1])), label, extra=False)


def _fitters(model, aligner):
    """method -> fit(points (B, N, 2) normalized frame, detected (B, N)) -> params (B, P), same inputs."""
    selected = torch.unique(aligner.channels[:2].reshape(-1))
    options = FitOptions(robust="geman-mcclure")

    def with_enough(fit):
        def run(points, detected):
            return _where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                                   fit(model, observed[keep], ids[keep], weights[keep]))
        return run

    def cpr(points, detected):
        return align_point_sets(aligner, points, detected)

    def cpr_then_online(points, detected):
        initial = cpr(points, detected).double()
        return _where_fittable(model, points, detected, selected, lambda keep, *a: online_optimization(
            model, *(value[keep] for value in a), options=options, initial=initial[keep]), initial.float())

    return {"PnP": with_enough(pnp),
            "on-line optimization": with_enough(lambda *a: online_optimization(*a, options=options)),
            "CPR": cpr, "CPR, then on-line optimization": cpr_then_online}


def _where_fittable(model, points, detected, selected, fit, fallback=None):
    """``fit(keep, points, ids, weights)`` on the faces with at least 3 detected selected vertices spanning a
    box; the others keep ``fallback`` (default p0: nothing to fit). Returns params (B, P) float32."""
    observed, weights = points[:, selected].double(), detected[:, selected].double()
    ids = selected.expand(len(points), -1)
    seen = detected[:, selected, None]
    extent = (torch.where(seen, observed, -math.inf).amax(dim=1) - torch.where(seen, observed, math.inf).amin(dim=1))
    keep = (weights.sum(dim=1) >= 3) & (extent.amin(dim=1) > 0)
    params = fallback.clone() if fallback is not None else ParamLayout.of(model).initial(len(points))
    if keep.any():
        params[keep] = fit(keep, observed, ids, weights).float()
    return params


def _fused(model, aligner, points, detected, head, initial):
    """The on-line optimization over the selected vertices plus the landmark head (as cprfa align runs it),
    from the mean face or from ``initial``."""
    selected = torch.unique(aligner.channels[:2].reshape(-1))
    fallback = initial.float() if initial is not None else None
    return _where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                           online_optimization_with_landmarks(
                               model, observed[keep], ids[keep], weights[keep], head[keep].double(), 0.5,
                               FitOptions(robust="geman-mcclure"),
                               None if initial is None else initial[keep].double()), fallback)


def _speed(aligner, model) -> None:
    sets = synthetic_point_sets(model, 32, SYNTHETIC_SEED + 7)
    for count in (1, 32):
        points, detected = sets.points[:count], sets.detected[:count]
        align_point_sets(aligner, points, detected)
        timings = []
        for _ in range(5 if count > 1 else 20):
            start = time.perf_counter()
            align_point_sets(aligner, points, detected)
            timings.append(time.perf_counter() - start)
        print(f"- batch of {count}: {1000 * np.median(timings) / count:.1f} ms per face (median of {len(timings)})")
    print()


def _table(rows: dict, bucket: np.ndarray, label: str, extra: bool) -> None:
    counts = [int((bucket == b).sum()) for b in range(len(YAW_BUCKETS))]
    header = "| method | " + " | ".join(f"[{lo:.0f}°, {hi:.0f}°] (n={n})" for (lo, hi), n in
                                     zip(YAW_BUCKETS, counts, strict=True)) + " | balanced | mean | failure %"
    header += " | dense NME | pitch / yaw / roll error (°)" if extra else ""
    print(header + " | ms / face |")
    print("|---" * (header.count("|")) + "|")
    for method, row in rows.items():
        values = row["nme"]
        cells = [values[bucket == b].mean() if counts[b] else np.nan for b in range(len(YAW_BUCKETS))]
        line = (f"| {label if method == 'CPR' else method} | "
                + " | ".join("–" if np.isnan(c) else f"{c:.2f}" for c in cells)
                + f" | {np.nanmean(cells):.2f} | {values.mean():.2f} | {100 * (values > FAILURE_NME).mean():.1f}")
        if extra:
            line += f" | {row['dense'].mean():.2f} | " + " / ".join(f"{a:.1f}" for a in row["angles"])
        print(line + f" | {row['ms']:.1f} |")
    print()


if __name__ == "__main__":
    main()
