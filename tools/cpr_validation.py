"""The CPR trainer's validation figures for aligner weights already made: the fixed synthetic sets and the
real faces that ``cprfa train cpr --real-holdout`` holds out of a build (cprfa.train.cpr), 68-point NME in %.

    python tools/cpr_validation.py WEIGHTS... --real /tmp/train_p2 [--real-holdout 0.1] [--point-sets FILE]

``--point-sets``: a run folder's ``real_point_sets_full.pt`` of that build, else they are computed (minutes).
Weights that trained on the held-out photos (those shipped before 7 December 2026) score better there than
they would on new faces."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from cprfa.cpr.regressor import load_aligner
from cprfa.cpr.selection import DEFAULT_SELECTION, VertexSelection
from cprfa.model.face_model import default_face_model
from cprfa.train.cpr import RealPointSets, evaluate_aligner, face_photos, held_out, validation_sets
from cprfa.train.settings import CPRTrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--real", type=Path, required=True, help="the training build (cprfa data build --out)")
    parser.add_argument("--splits", nargs="+", default=list(CPRTrainSettings.splits))
    parser.add_argument("--real-holdout", type=float, default=CPRTrainSettings.real_holdout)
    parser.add_argument("--point-sets", type=Path, help="a run folder's real_point_sets_full.pt of --real")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = default_face_model()
    splits = tuple(args.splits)
    with tempfile.TemporaryDirectory() as folder:
        cache = args.point_sets or Path(folder) / "real_point_sets_full.pt"
        every = RealPointSets.build(str(args.real), splits, "", model, cache)
    photos = face_photos(str(args.real), splits)
    if len(photos) != len(every):
        raise SystemExit(f"{args.point_sets} holds {len(every)} faces, {args.real} {len(photos)}: another build's")
    held = held_out(photos, args.real_holdout)
    channels = torch.from_numpy(VertexSelection.load(DEFAULT_SELECTION).channels)
    sets = validation_sets(model, channels, CPRTrainSettings.validation_faces, CPRTrainSettings.kappa,
                           every.subset(held))
    print(f"{int(held.sum())} held-out faces of {len(held)}")
    for path in args.weights:
        metrics = evaluate_aligner(load_aligner(path, model).eval(), model, sets)
        print(path, "  ".join(f"{name[:-4]} {value:.2f} %" for name, value in metrics.items()
                              if name.endswith("_nme")), flush=True)


if __name__ == "__main__":
    main()
