"""Choose cprfa.align.LANDMARK_SHARE, POLISH_DAMPING, POLISH["cpr+refine"], OCCLUDED_CONFIDENCE and
LANDMARK_ROBUST_SCALE on training photos: the 68-point NME (2D convention) of what ``cprfa align`` runs by
default (CPR-H, then the short on-line refinement over the DAFI's vertices and the landmark head) for several
weights of the landmarks against the vertices, starting dampings of the refinement's Levenberg–Marquardt,
counts of its iterations (pose alone + every parameter) and scales of the robust loss on the landmarks; each
varied alone, the others at their defaults. ``--occluded-confidence 0`` lets every face take all the
iterations (cprfa.align.polish_fit); run it on a set built with occluders too (``--data /tmp/afw_occ``, built
with ``--occlude 0.2 0.4``), since plain photos cannot say what the iterations cost under occluders.

Runs on the real photos of a built training set (the profiled views, named ``<face>@yaw..``, are left out:
their landmarks are the annotation moved by the fitted model, on a synthesized image), cut with the crop zoom
and read with the test-time flip, as ``cprfa align`` does; helen_test is not involved, so the chosen value is
not tuned on the test faces.

    cprfa data build --data ../shared/data/300w --splits afw helen_train --profile 2 --out /tmp/train_p2
    python benchmarks/bench_landmark_share.py [--data /tmp/train_p2] [--shares 0.5 0.65 0.8 0.9]
                                              [--dampings 0.001 0.1 0.3] [--iterations 3+2 0+3 0+4]
                                              [--landmark-scales 0.02 0.05 1000]
                                              [--occluded-confidence 0.8]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from bench_cpr import ROBUST, where_fittable
from evaluation_sets import add_estimator_arguments, estimator_of

from cprfa.align import (
    CPR_ROUNDS,
    CPR_STAGES,
    LANDMARK_ROBUST_SCALE,
    LANDMARK_SHARE,
    OCCLUDED_CONFIDENCE,
    polish_fit,
    polish_options,
)
from cprfa.cpr.frame import NormalizedFrame
from cprfa.cpr.regressor import align_point_sets, load_aligner
from cprfa.dafi.evaluate import observe
from cprfa.data.crop import DEFAULT_ZOOM
from cprfa.eval.metrics import nme
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import default_face_model
from cprfa.train.dafi import FaceArrays, load_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/train_p2"), help="a built training set")
    parser.add_argument("--splits", nargs="+", default=["afw", "helen_train"])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.5, 0.65, 0.8, 0.9])
    parser.add_argument("--dampings", nargs="+", type=float, default=[0.001, 0.1, 0.3])
    parser.add_argument("--iterations", nargs="+", default=["3+1", "3+2", "3+6", "3+8"],
                        help="POSE+ALL: LM iterations on the pose alone, then on every parameter")
    parser.add_argument("--landmark-scales", nargs="+", type=float, default=[0.02, 0.05, 1000],
                        help="scales of the robust loss on the landmarks (fractions of the box size)")
    parser.add_argument("--occluded-confidence", type=float, default=OCCLUDED_CONFIDENCE,
                        help="faces whose mean landmark confidence is below it take at most "
                             "OCCLUDED_ITERATIONS on every parameter (0: none)")
    add_estimator_arguments(parser)
    parser.add_argument("--limit", type=int, default=0, help="only the first N real photos of each split")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()
    aligner = load_aligner(None, model).fused()
    selected = torch.unique(aligner.channels[:2].reshape(-1))
    estimator = estimator_of(args, True, DEFAULT_ZOOM)
    frame = NormalizedFrame.for_crop(model, estimator.input_size)
    options = polish_options(ROBUST, "cpr+refine")
    default = (LANDMARK_SHARE, options.damping, options.pose_iterations, options.iterations, LANDMARK_ROBUST_SCALE)
    variants = [(share, *default[1:]) for share in args.shares]
    variants += [(default[0], damping, *default[2:]) for damping in args.dampings]
    variants += [(*default[:2], *map(int, counts.split("+")), default[4]) for counts in args.iterations]
    variants += [(*default[:4], scale) for scale in args.landmark_scales]
    variants = list(dict.fromkeys(variants))
    print("| split | real photos | landmark head | CPR-H | "
          + " | ".join(f"share {share}, damping {damping:g}, {pose}+{full} iterations, landmark scale {scale:g}"
                       for share, damping, pose, full, scale in variants) + " | seconds |")
    print("|---" * (5 + len(variants)) + "|")
    for split in args.splits:
        faces = _real_photos(load_faces(args.data, (split,), estimator.input_size, 0, DEFAULT_ZOOM,
                                                    estimator.detail_size), args.limit)
        errors = {key: [] for key in ["head", "cpr_h", *variants]}
        start = time.perf_counter()
        for batch in observe(estimator, faces, model):
            points = frame.points_to_frame(torch.from_numpy(batch.observed.positions))
            detected = torch.from_numpy(batch.observed.detected)
            head = frame.points_to_frame(torch.from_numpy(batch.prediction.landmarks))
            confidence = torch.from_numpy(batch.prediction.landmark_foreground)
            targets = faces.landmarks[batch.start:batch.stop]
            cpr_h = align_point_sets(aligner, points, detected, head, rounds=CPR_ROUNDS["cpr+refine"],
                                     stages=CPR_STAGES["cpr+refine"])
            fits = {"cpr_h": cpr_h}
            for share, damping, pose, full, scale in variants:
                fits[share, damping, pose, full, scale] = _refined(
                    model, selected, points, detected, head, confidence, cpr_h, share,
                    dataclasses.replace(options, damping=damping, pose_iterations=pose, iterations=full), scale,
                    args.occluded_confidence)
            errors["head"].append(nme(batch.prediction.landmarks, targets))
            for key, params in fits.items():
                errors[key].append(nme(landmarks_2d(model, frame.params_from_frame(params))[..., :2].numpy(),
                                       targets))
        print(f"| {split} | {len(faces)} | " + " | ".join(f"{np.concatenate(e).mean():.3f}" for e in errors.values())
              + f" | {time.perf_counter() - start:.0f} |")


def _refined(model, selected, points, detected, head, confidence, initial, share, options, landmark_scale,
             occluded_confidence):
    """The on-line refinement of ``cprfa align`` from ``initial`` (B, P) with the landmark share ``share``."""
    return where_fittable(model, points, detected, selected, lambda keep, observed, ids, weights:
                          polish_fit(model, observed[keep], ids[keep], weights[keep], head[keep].double(),
                                     confidence[keep], initial[keep].double(), options, share, landmark_scale,
                                     occluded_confidence), initial)


def _real_photos(faces: FaceArrays, limit: int) -> FaceArrays:
    keep = np.array(["@" not in str(name) for name in faces.names])
    if limit:
        keep &= np.cumsum(keep) <= limit
    return FaceArrays(**{field.name: None if getattr(faces, field.name) is None else getattr(faces, field.name)[keep]
                         for field in dataclasses.fields(faces)})


if __name__ == "__main__":
    main()
