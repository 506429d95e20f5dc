"""Paper Table 1 for the shipped HS-U-Net: NME (%) / average detection rate (%) of the vertices retrieved from
the predicted DAFI, by |yaw| bucket, on helen_test and its occluded and large-pose sets; the landmark head's
68-point NME beside it; and the speed of the forward pass and of vertex retrieval.

Build the sets first (`cprfa data build`, README "Command line"):
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/pgt
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/occ --occlude 0.2 0.4
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/lp --large-pose
then: python benchmarks/bench_dafi.py --sets plain=/tmp/pgt occluded=/tmp/occ large-pose=/tmp/lp
Sets that are absent are skipped. The input crop is the ground-truth landmark box enlarged by cprfa.data.crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_foundation import median_seconds
from evaluation_sets import LARGE_POSE, add_set_arguments, estimator_of, evaluation_sets

from cprfa.cpr.selection import DEFAULT_SELECTION, VertexSelection
from cprfa.dafi.evaluate import bucket_table, dafi_errors, format_table
from cprfa.dafi.retrieval import VertexRetriever
from cprfa.model.face_model import default_face_model
from cprfa.train.dafi import load_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--selection", type=Path, default=DEFAULT_SELECTION,
                        help="CPR vertex selection for the 'C selected' row (cprfa train select-vertices)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each set (quick runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    estimator = estimator_of(args, args.flip, args.zoom)
    model = default_face_model()
    vertex_sets = {"68": np.asarray(model.landmarks68), "all": np.arange(model.n_vertices)}
    if args.selection.is_file():
        selection = VertexSelection.load(args.selection)
        vertex_sets[f"{selection.count} for CPR"] = selection.vertex_ids
    print(f"HS-U-Net {args.weights or 'shipped'}: input {estimator.input_size}², widths {estimator.config.widths}, "
          f"{sum(p.numel() for p in estimator.network.parameters()):,} parameters; {args.threads} threads"
          f"{'; flip test-time augmentation' if args.flip else ''}"
          f"{'; the landmark head refined (cprfa.dafi.refine)' if estimator.refiner is not None else ''}\n")
    for name, faces in evaluation_sets(args, estimator.input_size, args.limit, estimator.detail_size):
        errors = dafi_errors(estimator, faces, model=model, vertex_sets=vertex_sets)
        convention = "3D" if name == LARGE_POSE else "2D (300-W annotation)"
        print(f"### {name}: {len(faces)} faces of {args.split}; landmark ground truth in the {convention} convention\n")
        print(format_table(bucket_table(errors, list(vertex_sets))) + "\n")

    first = Path(args.sets[0].partition("=")[2])
    if not (first / args.split).is_dir():
        print(f"(speed: {first}/{args.split} not built, skipped)")
        return
    faces = load_faces(str(first), (args.split,), estimator.input_size, limit=32, detail=estimator.detail_size)
    crops, detail = faces.images, faces.detail
    one = 1000 * median_seconds(lambda: estimator.predict(crops[:1], detail=detail if detail is None else detail[:1]), 50)
    batch = 1000 * median_seconds(lambda: estimator.predict(crops, detail=detail), 5) / len(crops)
    prediction = estimator.predict(crops, detail=detail)
    retriever = VertexRetriever(model)
    retrieval = 1000 * median_seconds(lambda: retriever(prediction.dafi[:1], prediction.confident[:1]), 50)
    print(f"forward pass: {one:.1f} ms for one face, {batch:.1f} ms per face in a batch of {len(crops)}; "
          f"vertex retrieval {retrieval:.1f} ms per face (median)")


if __name__ == "__main__":
    main()
