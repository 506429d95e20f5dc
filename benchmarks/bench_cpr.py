"""The ablation of the paper (§3.4, Fig. 5a): every method on the same observed points and the same landmarks.

Inputs per face: the observed positions of the C selected vertices (cprfa.cpr.selection) that are detected,
all retrieved vertices (for round two's error pool), and 68 sparse landmarks in the 2D convention. Rows:

- PnP-68: the mean shape's pose from the 68 sparse landmarks, jaw points on the silhouette (the paper's
  PnP-FAN3D-68, with the HS-U-Net's landmark head as the landmark detector);
- PnP + DAFI(C): the mean shape's pose from the detected selected vertices;
- on-line optimization: pose, identity and expression fitted to the detected selected vertices
  (Levenberg–Marquardt, Gaussian priors, Geman–McClure robust loss);
- CPR(C): round one on the DAFI's vertices alone, by a network of its own (cprfa/cpr/assets/cpr512.pt:
  trained without the sparse branch, as the paper trains its rows separately);
- CPR-H: round one fused with the landmarks (§2.5);
- CPR-H + CAPU (CPRFA): both rounds, round two with consistency-aware updating (§2.4);
- and what ``cprfa align`` can run: the on-line optimization over the vertices and the landmarks (``online``),
  a few of its iterations on the pose alone after CPRFA (``cpr+pose``), those and more on every parameter
  after the first two of CPR-H's three stages (``cpr+refine``), and that optimization in full started from
  CPRFA's result (``cpr+online``).

The other CPR rows come from the one shipped network (cprfa/cpr/assets/cpr.pt), switched between round one
and both rounds.

Sets:
- synthetic, with known parameters (cprfa.data.point_sets; fixed seeds, never seen in training): the
  training distribution, and the occluded test distribution (30 % of the landmark box occluded, 5 % outliers,
  30 % drop-out, 1 % noise); the landmarks are the true 2D-convention ones with 3 % noise. 68-point NME (3D
  convention), dense NME over all face vertices, mean absolute pitch / yaw / roll error in degrees.
- helen_test and its occluded and large-pose sets (built as in bench_dafi.py) through the shipped HS-U-Net,
  vertex retrieval and landmark head: 68-point NME in each set's own convention (2D silhouette jaw for plain
  and occluded, 3D for large-pose), by |yaw| bucket as DESIGN.md, and CED curves (``--figures``).

Speed: the aligner on one face and per face in batches of 2 and 32, C = 512, on ``--threads`` threads, run by
torch and by onnxruntime (the whole alignment as one graph of one face, cprfa.cpr.onnx, as ``cprfa align``
runs up to ONNX_FACES faces; not a batch of 32, which it runs in torch), the two alternating.

Run: python benchmarks/bench_cpr.py [--faces 500] [--limit 0] [--figures docs] [--speed-only] [--flip]
     [--rows PREFIX...] [--cpr-weights FILE] [--dafi-only-weights FILE]
     [--sets plain=/tmp/pgt occluded=/tmp/occ large-pose=/tmp/lp]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from evaluation_sets import LARGE_POSE, add_set_arguments, estimator_of, evaluation_sets

from cprfa.align import (
    CPR_ROUNDS,
    CPR_STAGES,
    LANDMARK_ROBUST_SCALE,
    LANDMARK_SHARE,
    polish_fit,
    polish_options,
)
from cprfa.cpr.frame import NormalizedFrame
from cprfa.cpr.onnx import ONNX_FACES, OnnxAligner
from cprfa.cpr.regressor import DAFI_ONLY_WEIGHTS, align_point_sets, load_aligner
from cprfa.cpr.sparse import LandmarkSettings, synthetic_landmarks
from cprfa.dafi.evaluate import observe
from cprfa.data.point_sets import OCCLUDED_TEST, PointSetSettings, synthetic_point_sets
from cprfa.eval.metrics import FAILURE_NME, YAW_BUCKETS, nme, yaw_bucket
from cprfa.fitting.baselines import online_optimization, online_optimization_with_landmarks, pnp
from cprfa.fitting.optimize import FitOptions, fit_points
from cprfa.model.contour import landmarks_2d, silhouette_landmark_ids
from cprfa.model.face_model import default_face_model
from cprfa.model.projection import ParamLayout, image_vertices, landmarks_3d

SYNTHETIC_SEED = 2_000_000  # training draws seeds below 10^6 per epoch batch; validation uses 10^6
SYNTHETIC_LANDMARKS = LandmarkSettings(absent=0.0, noise=(0.03, 0.03), missing=(0.0, 0.0))
ROBUST = FitOptions(robust="geman-mcclure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--cpr-weights", help="CPR aligner weights (default: the shipped ones)")
    parser.add_argument("--dafi-only-weights", default=DAFI_ONLY_WEIGHTS,
                        help="the CPR(C) row's aligner, without a sparse branch (default: the shipped one)")
    parser.add_argument("--faces", type=int, default=500, help="faces per synthetic set (0: skip them)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each real set")
    parser.add_argument("--figures", type=Path, help="folder for the CED curves (ablation_ced_<set>.png)")
    parser.add_argument("--speed-only", action="store_true", help="only the speed section")
    parser.add_argument("--rows", nargs="+", metavar="PREFIX",
                        help="only the rows whose names start so, and no speed section (quick runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()
    aligner = load_aligner(args.cpr_weights, model).fused()
    dafi_only = load_aligner(args.dafi_only_weights, model).fused()
    methods = {name: fit for name, fit in _methods(model, aligner, dafi_only).items()
               if not args.rows or name.startswith(tuple(args.rows))}
    count = 2 * aligner.channels.shape[1]
    if not args.rows:
        print(f"## Speed (C = {count}, {args.threads} threads; ms per face, the alignment run by torch or by "
              "onnxruntime as one graph, as `cprfa align` runs it)\n")
        _speed(aligner, model)
    if args.speed_only:
        return
    synthetic = (("synthetic", PointSetSettings()), ("synthetic, 30 % occluded + 5 % outliers", OCCLUDED_TEST))
    for offset, (name, settings) in enumerate(synthetic if args.faces else ()):
        sets = synthetic_point_sets(model, args.faces, SYNTHETIC_SEED + offset, settings)
        truth = sets.params
        landmarks, _ = synthetic_landmarks(landmarks_2d(model, truth)[..., :2].float(), sets.face_size,
                                           torch.Generator().manual_seed(SYNTHETIC_SEED + offset), SYNTHETIC_LANDMARKS)
        rows = {}
        for method, fit in methods.items():
            start = time.perf_counter()
            params = fit(sets.points, sets.detected, landmarks)
            seconds = time.perf_counter() - start
            dense = (image_vertices(model, params, model.face_area) - image_vertices(model, truth, model.face_area))
            rows[method] = {
                "nme": nme(landmarks_3d(model, params)[..., :2].numpy(), landmarks_3d(model, truth)[..., :2].numpy()),
                "dense": 100 * dense[..., :2].norm(dim=-1).mean(dim=1).numpy() / sets.face_size.numpy(),
                "angles": np.degrees((params[:, :3] - truth[:, :3]).abs().numpy()).mean(axis=0),
                "ms": 1000 * seconds / len(truth)}
        print(f"### {name}: {len(truth)} faces (seed {SYNTHETIC_SEED + offset}), "
              f"{sets.detected[:, aligner.channels[:2].reshape(-1)].float().mean() * 100:.0f} % of the selected "
              "vertices detected, landmarks with 3 % noise\n")
        _table(rows, yaw_bucket(np.degrees(truth[:, 1].numpy())), count, extra=True)
    estimator = estimator_of(args, args.flip, args.zoom)
    frame = NormalizedFrame.for_crop(model, estimator.input_size)
    for name, faces in evaluation_sets(args, estimator.input_size, args.limit, estimator.detail_size):
        convention = landmarks_3d if name == LARGE_POSE else landmarks_2d
        rows = {method: {"nme": [], "ms": 0.0} for method in methods}
        for batch in observe(estimator, faces, model):
            points = frame.points_to_frame(torch.from_numpy(batch.observed.positions))
            detected = torch.from_numpy(batch.observed.detected)
            head = frame.points_to_frame(torch.from_numpy(batch.prediction.landmarks))
            confidence = torch.from_numpy(batch.prediction.landmark_foreground)
            targets = faces.landmarks[batch.start:batch.stop]
            for method, fit in methods.items():
                start = time.perf_counter()
                params = frame.params_from_frame(fit(points, detected, head, confidence))
                rows[method]["ms"] += 1000 * (time.perf_counter() - start) / len(faces)
                rows[method]["nme"].append(nme(convention(model, params)[..., :2].numpy(), targets))
        for row in rows.values():
            row["nme"] = np.concatenate(row["nme"])
        print(f"### {name}: {len(faces)} faces of {args.split} through the HS-U-Net, landmarks in the "
              f"{'3D' if name == LARGE_POSE else '2D'} convention\n")
        _table(rows, yaw_bucket(np.degrees(faces.params[:, 1])), count, extra=False)
        if args.figures:
            _ced(rows, name, args.figures / f"ablation_ced_{name}.png", len(faces))


def _methods(model, aligner, dafi_only):
    """row -> fit(points (B, N, 2) normalized frame, detected (B, N), landmarks (B, 68, 2), optional landmark
    confidence (B, 68), which the on-line fits from CPRFA's result use as cprfa.align does) -> params (B, P)."""
    selected = torch.unique(aligner.channels[:2].reshape(-1))

    def on_vertices(fit):
        def run(points, detected, landmarks, confidence=None):
            return where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                                  fit(model, observed[keep], ids[keep], weights[keep]))
        return run

    def pnp_68(points, detected, landmarks, confidence=None):
        options = FitOptions(pose_iterations=20, iterations=0, fit_identity=False, fit_expression=False)
        return fit_points(model, landmarks.double(), lambda params: silhouette_landmark_ids(model, params), None,
                          options).float()

    def cpr(rounds, fused, stages=None, network=aligner):
        def run(points, detected, landmarks, confidence=None):
            return align_point_sets(network, points, detected, landmarks if fused else None, rounds=rounds,
                                    stages=stages)
        return run

    def online_with_landmarks(initial_from=None):
        def run(points, detected, landmarks, confidence=None):
            initial = initial_from(points, detected, landmarks).double() if initial_from else None
            return where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                                  online_optimization_with_landmarks(
                                      model, observed[keep], ids[keep], weights[keep], landmarks[keep].double(),
                                      LANDMARK_SHARE, ROBUST, None if initial is None else initial[keep],
                                      LANDMARK_ROBUST_SCALE,
                                      None if confidence is None or initial is None else confidence[keep]),
                                  None if initial is None else initial.float())
        return run

    def polished(initial_from, method):
        def run(points, detected, landmarks, confidence=None):
            initial = initial_from(points, detected, landmarks).double()
            confidence = torch.ones(len(points), 68) if confidence is None else confidence
            return where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                                  polish_fit(model, observed[keep], ids[keep], weights[keep],
                                             landmarks[keep].double(), confidence[keep], initial[keep],
                                             polish_options(ROBUST, method)), initial.float())
        return run

    full = cpr(aligner.config.rounds, fused=True)
    rows = {"PnP-68": pnp_68, "PnP + DAFI": on_vertices(pnp),
            "on-line optimization": on_vertices(lambda *a: online_optimization(*a, options=ROBUST)),
            "CPR": cpr(1, fused=False, network=dafi_only)}
    if aligner.config.fusion:
        rows["CPR-H"] = cpr(1, fused=True)
    if aligner.config.rounds > 1:
        rows["CPR-H + CAPU (CPRFA)" if aligner.config.fusion else "CPR + CAPU"] = full
    rows["on-line optimization + landmarks (align --method online)"] = online_with_landmarks()
    rows["CPRFA, then on-line on the pose (align --method cpr+pose)"] = polished(full, "cpr+pose")
    rows["CPR-H, then a short on-line refinement (align --method cpr+refine)"] = polished(
        cpr(CPR_ROUNDS["cpr+refine"], True, CPR_STAGES["cpr+refine"]), "cpr+refine")
    rows["CPRFA, then on-line + landmarks (align --method cpr+online)"] = online_with_landmarks(full)
    return rows


def where_fittable(model, points, detected, selected, fit, fallback=None):
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


def _speed(aligner, model) -> None:
    """ms per face of each configuration run by torch and by onnxruntime, the two alternating
    (this machine's speed drifts within minutes): the median over rounds of each runtime's median of its runs."""
    sets = synthetic_point_sets(model, 32, SYNTHETIC_SEED + 7)
    landmarks = landmarks_2d(model, sets.params)[..., :2].float()
    configurations = {"round one": (1, None, None)}
    if aligner.config.fusion:
        configurations["round one, with landmarks"] = (1, None, landmarks)
        configurations["its first two stages, with landmarks (`cpr+refine`)"] = (1, CPR_STAGES["cpr+refine"],
                                                                                  landmarks)
    if aligner.config.rounds > 1:
        configurations["both rounds, with landmarks"] = (aligner.config.rounds, None, landmarks)
    runtimes = {"torch": None, "onnxruntime": OnnxAligner(aligner)}
    columns = [("torch", 1), ("torch", 2), ("torch", 32), ("onnxruntime", 1), ("onnxruntime", 2)]
    print("| | " + " | ".join(f"{name}, {'one face' if count == 1 else f'batch of {count}'}"
                              for name, count in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    one_face = {}
    for label, (rounds, stages, sparse) in configurations.items():
        cells = {}
        for count in sorted({count for _, count in columns}):
            rounds_of_runs, runs = (10, 3) if count < 32 else (3, 1)
            points, detected = sets.points[:count], sets.detected[:count]
            source = None if sparse is None else sparse[:count]
            names = [name for name, size in columns if size == count]
            samples = {name: [] for name in names}
            for _ in range(rounds_of_runs):
                for name in names:
                    aligner.runtime = runtimes[name]
                    align_point_sets(aligner, points, detected, source, rounds=rounds, stages=stages)
                    timings = []
                    for _ in range(runs):
                        start = time.perf_counter()
                        align_point_sets(aligner, points, detected, source, rounds=rounds, stages=stages)
                        timings.append(time.perf_counter() - start)
                    samples[name].append(1000 * float(np.median(timings)) / count)
            for name, values in samples.items():
                cells[name, count] = float(np.median(values))
        one_face[label] = {name: cells[name, 1] for name in runtimes}
        print(f"| {label} | " + " | ".join(f"{cells[column]:.1f}" for column in columns) + " |")
    aligner.runtime = None
    print("\n(one face and a batch of 2: medians of 10 rounds of 3 runs; a batch of 32: of 3 rounds of 1 run; the "
          f"default runtime runs a batch of more than {ONNX_FACES} faces in torch)")
    if "both rounds, with landmarks" in one_face:
        added = {name: one_face["both rounds, with landmarks"][name] - one_face["round one, with landmarks"][name]
                 for name in runtimes}
        print("round two adds, one face: " + ", ".join(f"{value:.1f} ms ({name})" for name, value in added.items()))
    print()


def _table(rows: dict, bucket: np.ndarray, count: int, extra: bool) -> None:
    counts = [int((bucket == b).sum()) for b in range(len(YAW_BUCKETS))]
    header = "| method | " + " | ".join(f"[{lo:.0f}°, {hi:.0f}°] (n={n})" for (lo, hi), n in
                                     zip(YAW_BUCKETS, counts, strict=True)) + " | balanced | std | mean | failure %"
    header += " | dense NME | pitch / yaw / roll error (°)" if extra else ""
    header += " | ms / face |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for method, row in rows.items():
        values = row["nme"]
        cells = [values[bucket == b].mean() if counts[b] else np.nan for b in range(len(YAW_BUCKETS))]
        label = method.replace("PnP + DAFI", f"PnP + DAFI({count})").replace("CPR", f"CPR({count})", 1) \
            if method in ("PnP + DAFI", "CPR") else method
        line = (f"| {label} | " + " | ".join("–" if np.isnan(c) else f"{c:.2f}" for c in cells)
                + f" | {np.nanmean(cells):.2f} | {np.nanstd(cells):.2f} | {values.mean():.2f}"
                + f" | {100 * (values > FAILURE_NME).mean():.1f}")
        if extra:
            line += f" | {row['dense'].mean():.2f} | " + " / ".join(f"{a:.1f}" for a in row["angles"])
        print(line + f" | {row['ms']:.1f} |")
    print()


def _ced(rows: dict, name: str, path: Path, n_faces: int) -> None:
    """Cumulative error distribution of the 68-point NME, one curve per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = np.linspace(0, 15, 301)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for method, row in rows.items():
        axes.plot(thresholds, [100 * (row["nme"] <= t).mean() for t in thresholds],
                  label=f"{method} ({row['nme'].mean():.2f})")
    axes.set(xlabel="68-point NME (%)", ylabel="faces (%)", xlim=(0, 15), ylim=(0, 100),
             title=f"helen_test {name}: {n_faces} faces")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(f"(CED curves: {path})\n")


if __name__ == "__main__":
    main()
