"""The helen_test evaluation sets the DAFI benchmarks share: their command-line options and loading.

Build them first (`cprfa data build`, README "Command line"; recorded in benchmarks/sets/):
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/pgt
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/occ --occlude 0.2 0.4
    cprfa data build --data ../shared/data/300w --splits helen_test --out /tmp/lp --large-pose
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from cprfa.dafi.predict import DafiEstimator
from cprfa.data.crop import DEFAULT_ZOOM
from cprfa.train.dafi import FaceArrays, load_faces

LARGE_POSE = "large-pose"  # the set whose ground truth is in the 3D convention


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    add_estimator_arguments(parser)
    parser.add_argument("--sets", nargs="+", default=["plain=/tmp/pgt", "occluded=/tmp/occ", f"{LARGE_POSE}=/tmp/lp"],
                        metavar="NAME=FOLDER")
    parser.add_argument("--split", default="helen_test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flip", action="store_true", help="test-time flip augmentation (DafiEstimator.flip)")
    parser.add_argument("--zoom", type=float, default=DEFAULT_ZOOM,
                        help=f"crop zoom (DafiEstimator.zoom; default {DEFAULT_ZOOM}, as cprfa align)")


def add_estimator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, help="HS-U-Net weights (default: the shipped ones)")
    parser.add_argument("--refiner", type=Path, help="landmark refiner weights (default: the shipped ones)")
    parser.add_argument("--no-refine", action="store_true", help="the landmark head's points, unrefined")


def estimator_of(args: argparse.Namespace, flip: bool, zoom: float) -> DafiEstimator:
    """The DafiEstimator that the options of ``add_estimator_arguments`` ask for."""
    return DafiEstimator.from_file(args.weights, flip=flip, zoom=zoom, refine=not args.no_refine,
                                   refiner_path=args.refiner)


def evaluation_sets(args: argparse.Namespace, input_size: int, limit: int = 0,
                    detail: int = 0) -> Iterator[tuple[str, FaceArrays]]:
    """(name, faces) of each built set of ``--sets``, at the network's input size (with detail crops of side
    ``detail`` for a landmark refiner); absent sets are skipped."""
    for item in args.sets:
        name, _, folder = item.partition("=")
        if not (Path(folder) / args.split).is_dir():
            print(f"({name}: {folder}/{args.split} not built, skipped)\n")
            continue
        yield name, load_faces(folder, (args.split,), input_size, limit, args.zoom, detail)
