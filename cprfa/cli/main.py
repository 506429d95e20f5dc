"""The ``cprfa`` command: a thin layer over the Python API.

Exit codes: 0 when every input succeeded, 1 when any input failed (each failure is reported and the batch goes
on), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from cprfa.errors import CprfaError
from cprfa.eval.report import DEFAULT_SETS
from cprfa.train.settings import CPRTrainSettings, DetectorTrainSettings, RefinerTrainSettings, TrainSettings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
LANDMARK_COLUMNS = [f"{axis}{k}" for k in range(68) for axis in ("x", "y")]  # landmarks_2d in the CSVs
SUMMARY_COLUMNS = ["image", "face", "status", "score", "pitch", "yaw", "roll", "scale", "observed_vertices",
                   *LANDMARK_COLUMNS]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CprfaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cprfa", description="Robust 3D face alignment (CPRFA).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    render = commands.add_parser(
        "render",
        help="draw the face model at a given pose into given face boxes (PNCC, depth, landmarks, mesh)",
        description="Pose the mean face model at the given angles inside each face box and draw it over the "
        "image: the PNCC (the DAFI the network predicts), depth, the 68 landmarks, the wireframe and the pose "
        "axes. Writes <name>_overlay.png, and per face <name>_face<k>_pncc.png, _depth.png and the mesh.",
    )
    render.add_argument("inputs", nargs="+", type=Path, help="images or folders of images (searched recursively)")
    where = render.add_mutually_exclusive_group(required=True)
    where.add_argument("--boxes", type=Path, help="CSV (image,x0,y0,x1,y1) or JSON file of face boxes")
    where.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="one box for all")
    render.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder (default: out)")
    render.add_argument("--pitch", type=float, default=0.0, help="degrees, positive = nose down")
    render.add_argument("--yaw", type=float, default=0.0, help="degrees, positive = nose to the image's right")
    render.add_argument("--roll", type=float, default=0.0, help="degrees, positive = counter-clockwise on screen")
    render.add_argument("--expression", action="append", default=[], metavar="NAME=WEIGHT",
                        help="blendshape weight, e.g. jawOpen=0.5 (repeatable)")
    render.add_argument("--mesh", choices=("obj", "ply"), help="also write the posed mesh in image space")
    render.set_defaults(run=run_render)

    align = commands.add_parser(
        "align", help="3D face alignment of every face in photos: pose, shape, landmarks, mesh",
        description="Find each face (BlazeFace detector, or the boxes of --boxes: the tight box of each face's "
        "68 landmarks) and align it: HS-U-Net DAFI, vertex retrieval, model fit. Writes per face "
        "<name>_face<k>.json (pose in degrees, coefficients, landmarks in both conventions, visibility, "
        "timings), per image <name>_overlay.png (--overlay), and summary.csv for the batch.")
    align.add_argument("inputs", nargs="+", type=Path, help="images or folders of images (searched recursively)")
    given = align.add_mutually_exclusive_group()
    given.add_argument("--boxes", type=Path, help="CSV (image,x0,y0,x1,y1[,roll]) or JSON file of face boxes: "
                       "skips the detector; a face's roll in degrees (counter-clockwise on screen) crops it upright")
    given.add_argument("--landmarks", type=Path, help="JSON file {image: [[[x, y] x 68], ...]} of your own 68 "
                       "landmarks per face: skips the detector and replaces the landmark head in the fit")
    align.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder (default: out)")
    align.add_argument("--mesh", choices=("obj", "ply"), help="also write each face's mesh in image space")
    align.add_argument("--dafi", action="store_true", help="also write each face's predicted DAFI (crop) as PNG")
    align.add_argument("--overlay", choices=("png", "jpg", "none"), default="png",
                       help="format of each image's <name>_overlay (wireframe, landmarks, pose axes), or none: "
                       "jpg is far quicker to write for large photos (a 12-megapixel overlay: about 0.06 s "
                       "against 0.7 s as png)")
    align.add_argument("--pncc", action="store_true",
                       help="also write per image <name>_pncc.png: the fitted faces' PNCC codes rendered over black")
    align.add_argument("--depth", action="store_true",
                       help="also write per image <name>_depth.png: the fitted faces' depth (each face's nearest "
                       "point white, its farthest dark grey) over black")
    align.add_argument("--weights", type=Path, help="HS-U-Net weights (default: the shipped ones)")
    align.add_argument("--method", choices=("cpr", "cpr+pose", "cpr+refine", "online", "cpr+online"),
                       default="cpr+refine",
                       help="model fit: the CPR aligner, CPRFA (both rounds, fused with the landmarks); that, then "
                       "three iterations of the on-line optimization on the pose alone; those, then six on pose, "
                       "identity and expression (one for a face mostly hidden), after round one alone (default); "
                       "the on-line optimization over the DAFI and the landmarks; or that optimization in full "
                       "started from the CPR aligner's result")
    align.add_argument("--cpr-weights", type=Path, help="CPR aligner weights (default: the shipped ones)")
    align.add_argument("--device", default="cpu", help="cpu or cuda: where the HS-U-Net runs (default cpu)")
    align.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                       help="what runs the networks: auto (default: torch the HS-U-Net, onnxruntime the CPR "
                       "aligner of one to four faces on the CPU), torch or onnx (onnxruntime all of them)")
    align.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                       help="test-time flip augmentation: the HS-U-Net also reads each mirrored crop and the two "
                       "predictions are averaged (a more precise DAFI and landmark head, twice the network's work; "
                       "on by default, --no-flip for speed)")
    align.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                       help="refine the landmark head's points on the crop at twice the HS-U-Net's resolution "
                       "(on by default, --no-refine for speed)")
    align.add_argument("--refiner-weights", type=Path, help="landmark refiner weights (default: the shipped ones)")
    align.add_argument("--detector-weights", type=Path,
                       help="face detector weights (default: the shipped fine-tuned BlazeFace; "
                       "cprfa/detect/assets/blazeface_short.pt is MediaPipe's own)")
    align.add_argument("--min-score", type=float,
                       help="face detector threshold in (0, 1) (default: the one recorded with its weights)")
    align.add_argument("--small-faces", action="store_true",
                       help="also look for faces down to about 5 %% of the photo's longer side (about 8 %% without), "
                       "in 3-4 times the detector's time")
    align.add_argument("--min-face", type=float, metavar="PIXELS",
                       help="also look for faces down to this many pixels (the side of their landmarks' box, at "
                       "least 20), in finer tiles as the photo's size asks: a group photo's faces (a 2400-pixel "
                       "photo: about 0.3 s for 60-pixel faces)")
    align.add_argument("--no-tiles", action="store_true",
                       help="look at the whole photo only, as MediaPipe does: about a fifth of the detector's time, "
                       "for faces spanning at least about 15 %% of the photo's longer side")
    align.add_argument("--any-roll", action="store_true",
                       help="also look at every photo turned by quarter turns, for faces tilted beyond about 45 "
                       "degrees in the image plane (sideways, upside down) beside upright ones, in four times the "
                       "detector's time (without it, only a photo with no face found upright is looked at turned)")
    align.add_argument("--reframe", action="store_true",
                       help="align each detected face again in the tight box of its landmarks: more precise on "
                       "profiles and small faces, about 70 %% more time")
    align.add_argument("--landmark-source", choices=("head", "mediapipe"), default="head",
                       help="the 68 sparse landmarks of the fit: the HS-U-Net's landmark head (default) or "
                       "MediaPipe's face mesh mapped to 68 (needs the mediapipe extra; the head fills the faces "
                       "the mesh misses)")
    align.add_argument("--batch-size", type=int, default=8,
                       help="images aligned together: their faces share the network passes and fits (default 8)")
    align.add_argument("--workers", type=int, default=2,
                       help="threads that read and decode the next images meanwhile; 0 = none (default 2)")
    align.add_argument("--smoothing", type=float, default=0.5,
                       help="videos: temporal smoothing of pose and landmarks in [0, 1), 0 = off (default 0.5)")
    align.add_argument("--skip-existing", action="store_true",
                       help="leave out the inputs OUT already holds results of (the faces' JSON files of an image, "
                       "the frames CSV of a video): goes on with a run that stopped part way; an image's rows in "
                       "summary.csv then come from its JSON files")
    align.add_argument("--track", action=argparse.BooleanOptionalAction, default=True,
                       help="videos: follow each face by the box of its landmarks in the frame before, the "
                       "detector only finding new faces (on by default; --no-track: the detector on every frame, "
                       "--batch-size frames at a time)")
    align.set_defaults(run=run_align)

    export = commands.add_parser(
        "export-onnx", help="write the HS-U-Net, the landmark refiner and the CPR aligner as ONNX graphs",
        description="Export the HS-U-Net (input: (B, 3, S, S) float32, RGB / 255 - 0.5 as "
        "cprfa.dafi.network.to_input makes it; outputs: the full-resolution group (B, 4, S, S: DAFI codes and "
        "foreground logit) and the landmark heatmaps) to OUT/hsunet.onnx, the landmark refiner (detail crops "
        "(B, 3, 2S, 2S) and points (B, 68, 2) in, refined points out) to OUT/refiner.onnx, and the CPR aligner's "
        "whole alignment (cprfa.cpr.onnx: the fields of cprfa.cpr.regressor.AlignerInput in, the parameters in "
        "the normalized frame out), one graph per schedule `cprfa align` runs, to "
        "OUT/cpr/rounds<R>_stages<S>.onnx, all with a dynamic batch size.")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.add_argument("--weights", type=Path, help="HS-U-Net weights (default: the shipped ones)")
    export.add_argument("--cpr-weights", type=Path, help="CPR aligner weights (default: the shipped ones)")
    export.add_argument("--refiner-weights", type=Path, help="landmark refiner weights (default: the shipped ones, "
                        "exported with the shipped HS-U-Net only)")
    export.set_defaults(run=run_export_onnx)

    bench = commands.add_parser(
        "bench", help="run the benchmarks and write a Markdown report with their tables and figures",
        description="Run the repository's benchmarks (face detection, the paper's Table 1, the paper's ablation "
        "with NME by yaw bucket and CED curves, speed per stage and memory) on the data sets that are built, "
        "and write OUT/report.md with the PNG figures beside it. A benchmark that fails is reported; the others "
        "run. Needs a source checkout.")
    bench.add_argument("-o", "--out", type=Path, default=Path("bench_report"),
                       help="report folder (default: bench_report)")
    bench.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), metavar="NAME=FOLDER",
                       help="the helen_test evaluation sets (cprfa data build outputs)")
    bench.add_argument("--data", type=Path, help="300-W folder for the detection benchmark "
                       "(default: ../shared/data/300w beside the repository)")
    bench.add_argument("--only", nargs="+",
                       choices=("detection", "dafi", "ablation", "end-to-end", "speed", "tradeoffs", "video",
                                "roll"),
                       help="run only these benchmarks")
    bench.add_argument("--quick", action="store_true", help="a handful of faces each: a smoke run in minutes")
    bench.set_defaults(run=run_bench)

    build = commands.add_parser(
        "build-model",
        help="derive the default face model from ICT-FaceKit's ict_face_model.npz",
        description="Convert ICT-FaceKit Light into cprfa's face model (face area, triangulated, float16 bases).",
    )
    build.add_argument("--source", type=Path, required=True, help="path to ict_face_model.npz")
    build.add_argument("--out", type=Path, help="output .npz (default: the bundled model's path)")
    build.set_defaults(run=run_build_model)

    data = commands.add_parser("data", help="build training and evaluation data").add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", required=True)
    pseudo = data.add_parser(
        "build",
        help="pseudo-dense ground truth from 300-W: fit the model to the landmarks, crop, render PNCC + mask",
        description="Fit the face model to each face's 68 landmarks, crop the face and render the fitted "
        "model's PNCC and mask: the HS-U-Net's training data. Deterministic and resumable (finished shards "
        "are kept); writes OUT/<split>/shard_*.npz and OUT/manifest.json. helen_test is for evaluation only.",
    )
    pseudo.add_argument("--data", type=Path, required=True, help="the 300-W folder (with afw/, helen_train/, ...)")
    pseudo.add_argument("--out", type=Path, required=True, help="output folder (keep it out of git)")
    pseudo.add_argument("--splits", nargs="+", default=["afw", "helen_train"])
    pseudo.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256)")
    pseudo.add_argument("--occlude", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="occluded evaluation set: synthetic occluders cover this fraction range of each face "
                        "(e.g. 0.2 0.4); the ground truth is unchanged")
    pseudo.add_argument("--profile", type=int, default=0, metavar="K",
                        help="training: add K profiled views per face (face turned to |yaw| 20-90 deg, pitch "
                        "within +-30 deg; landmarks are the annotation carried with the face)")
    pseudo.add_argument("--large-pose", action="store_true",
                        help="evaluation: only profiled views, one per face in each |yaw| bucket [0,30], "
                        "(30,60], (60,90]; landmarks are the fitted model's, in the 3D convention")
    pseudo.add_argument("--seed", type=int, default=0, help="seed of the occluders and profiled views (default 0)")
    pseudo.set_defaults(run=run_data_build)

    train = commands.add_parser("train", help="train a network").add_subparsers(
        dest="train_command", metavar="NETWORK", required=True)
    dafi = train.add_parser(
        "dafi", help="train the HS-U-Net (DAFI + landmark head) on `cprfa data build` output",
        description="Train the HS-U-Net on pseudo-dense ground truth with on-line augmentation. Resumable: "
        "rerun the same command to continue from OUT/checkpoint.pt. Each epoch validates and writes a figure; "
        "the end calibrates the landmark head and the retrieved vertices on the training faces and writes "
        "OUT/hsunet.pt and OUT/record.json (copy both into cprfa/dafi/assets/ to ship). --init FILE --epochs 0 "
        "only calibrates FILE's network.")
    dafi.add_argument("--data", type=Path, required=True, help="training build (cprfa data build --out)")
    dafi.add_argument("--validation", type=Path, required=True, help="build of helen_test for validation")
    dafi.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, figures, weights)")
    defaults = SimpleNamespace(**{field.name: field.default for field in fields(TrainSettings)})
    dafi.add_argument("--splits", nargs="+", default=list(defaults.splits))
    dafi.add_argument("--input-size", type=int, default=defaults.input_size)
    dafi.add_argument("--widths", type=int, nargs=5, default=list(defaults.widths))
    dafi.add_argument("--epochs", type=int, default=defaults.epochs)
    dafi.add_argument("--batch-size", type=int, default=defaults.batch_size)
    dafi.add_argument("--lr", type=float, default=defaults.lr)
    dafi.add_argument("--final-lr-ratio", type=float, default=defaults.final_lr_ratio,
                      help="the learning rate decays exponentially to lr × this at the last epoch")
    dafi.add_argument("--landmark-weight", type=float, default=defaults.landmark_weight,
                      help="weight of the landmark head's loss against the DAFI losses")
    dafi.add_argument("--init", type=Path, help="HS-U-Net weights to start from (default: random); "
                      "a narrower network of the same input size is widened to --widths first")
    dafi.add_argument("--workers", type=int, default=defaults.workers, help="augmentation processes")
    dafi.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    dafi.add_argument("--device", default="cpu", help="cpu or cuda (only the speed changes; default cpu)")
    dafi.add_argument("--seed", type=int, default=defaults.seed)
    dafi.add_argument("--limit", type=int, default=0, help="use only the first N training samples (quick runs)")
    dafi.add_argument("--calibration-zoom", type=float, default=0.0,
                      help="crop zoom of the training faces the calibration measures (default: cprfa align's, "
                      "DafiEstimator.zoom; 1 for the training crops)")
    dafi.add_argument("--train-zoom", type=float, default=defaults.train_zoom,
                      help="crop zoom of the faces trained and validated on: each built crop cut this many times "
                      "smaller about its centre (default 1: the built crops; cprfa align cuts at DafiEstimator.zoom)")
    dafi.set_defaults(run=run_train_dafi)

    refiner = train.add_parser(
        "refiner", help="train the landmark refiner on the HS-U-Net head's points (cprfa.dafi.refine)",
        description="Train the refiner that looks again at each of the landmark head's points on a crop at twice "
        "the HS-U-Net's resolution, on augmented training faces. Resumable: rerun the same command. Each epoch "
        "prints the validation landmark NME of the head and of the refined head; the end writes "
        "OUT/refiner.pt and OUT/record.json (copy both into cprfa/dafi/assets/ to ship).")
    refiner_defaults = SimpleNamespace(**{field.name: field.default for field in fields(RefinerTrainSettings)})
    refiner.add_argument("--data", type=Path, required=True, help="training build (cprfa data build --out)")
    refiner.add_argument("--validation", type=Path, required=True, help="build of helen_test for validation")
    refiner.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, weights)")
    refiner.add_argument("--splits", nargs="+", default=list(refiner_defaults.splits))
    refiner.add_argument("--dafi-weights", type=Path, help="the HS-U-Net whose points are refined (default: the "
                         "shipped one)")
    refiner.add_argument("--patch-size", type=int, default=refiner_defaults.patch_size)
    refiner.add_argument("--pitches", type=float, nargs="+", default=list(refiner_defaults.pitches),
                         help="one patch per pitch, in detail pixels (default %(default)s)")
    refiner.add_argument("--jitter", type=float, default=refiner_defaults.jitter,
                         help="noise added to the head's points in training, detail pixels (default %(default)s)")
    refiner.add_argument("--epochs", type=int, default=refiner_defaults.epochs)
    refiner.add_argument("--batch-size", type=int, default=refiner_defaults.batch_size)
    refiner.add_argument("--lr", type=float, default=refiner_defaults.lr)
    refiner.add_argument("--final-lr-ratio", type=float, default=refiner_defaults.final_lr_ratio)
    refiner.add_argument("--init", type=Path, help="refiner weights to start from (default: random)")
    refiner.add_argument("--validation-faces", type=int, default=0, help="only the first N (default: all)")
    refiner.add_argument("--workers", type=int, default=refiner_defaults.workers, help="augmentation processes")
    refiner.add_argument("--threads", type=int, default=refiner_defaults.threads, help="torch threads")
    refiner.add_argument("--device", default="cpu", help="cpu or cuda (only the speed changes; default cpu)")
    refiner.add_argument("--seed", type=int, default=refiner_defaults.seed)
    refiner.add_argument("--limit", type=int, default=0, help="use only the first N training samples (quick runs)")
    refiner.set_defaults(run=run_train_refiner)

    detector = train.add_parser(
        "detector", help="fine-tune the face detector (BlazeFace) on the training faces and their profiled views",
        description="Fine-tune MediaPipe's BlazeFace (as converted) on mosaics of the built training crops, "
        "profiled views included (cprfa data build --profile K), so that it finds faces turned up to 90 deg "
        "(cprfa.train.detector). Resumable: rerun the same command. Writes OUT/blazeface.pt and "
        "OUT/blazeface.json (copy both into cprfa/detect/assets/ to ship).")
    detector_defaults = SimpleNamespace(**{field.name: field.default for field in fields(DetectorTrainSettings)})
    detector.add_argument("--data", type=Path, required=True, help="training build with profiled views")
    detector.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, weights)")
    detector.add_argument("--validation", type=Path, help="a --large-pose build of helen_test: recall by yaw")
    detector.add_argument("--photos", type=Path, help="the 300-W folder: recall and extra detections on the "
                          "helen_test photos each epoch; the shipped detection threshold, chosen on the training "
                          "splits' photos at the end")
    detector.add_argument("--splits", nargs="+", default=list(detector_defaults.splits))
    detector.add_argument("--init", type=Path, help="detector weights to start from (default: MediaPipe's, as "
                          "converted)")
    detector.add_argument("--epochs", type=int, default=detector_defaults.epochs)
    detector.add_argument("--samples-per-epoch", type=int, default=detector_defaults.samples_per_epoch)
    detector.add_argument("--batch-size", type=int, default=detector_defaults.batch_size)
    detector.add_argument("--lr", type=float, default=detector_defaults.lr)
    detector.add_argument("--final-lr-ratio", type=float, default=detector_defaults.final_lr_ratio)
    detector.add_argument("--workers", type=int, default=detector_defaults.workers, help="augmentation processes")
    detector.add_argument("--threads", type=int, default=detector_defaults.threads, help="torch threads")
    detector.add_argument("--seed", type=int, default=detector_defaults.seed)
    detector.add_argument("--limit", type=int, default=0, help="use only the first N training crops (quick runs)")
    detector.set_defaults(run=run_train_detector)

    select = train.add_parser(
        "select-vertices", help="rank vertices by detection and accuracy on a reference set; pick the CPR's C",
        description="Run the HS-U-Net on a reference build (the training faces, never the evaluation set), "
        "score each vertex by p1 (detection frequency) and p2 (accurate detections), and save the C best "
        "in the three shuffled CPR channels.")
    select.add_argument("--data", type=Path, required=True, help="reference build (cprfa data build --out)")
    select.add_argument("--splits", nargs="+", default=list(defaults.splits))
    select.add_argument("--weights", type=Path, help="HS-U-Net weights (default: the shipped ones)")
    select.add_argument("--count", type=int, default=512, help="C, a multiple of 4 (default 512)")
    select.add_argument("--seed", type=int, default=0, help="seed of the channel shuffle (default 0)")
    select.add_argument("--out", type=Path, required=True, help="output .npz")
    select.set_defaults(run=run_select_vertices)

    cpr = train.add_parser(
        "cpr", help="train the CPR aligner (both rounds, fusion with sparse landmarks) on synthetic and real "
        "point sets",
        description="Train the CNN + recurrent regressors, the consistency-aware weights of round two and the "
        "sparse-landmark branch on synthetic point sets drawn afresh every batch (faces up to 90 deg of yaw, "
        "occluders, drop-out, noise, outliers, noisy or missing landmarks), optionally mixed with the "
        "HS-U-Net's point sets and landmarks on a `cprfa data build` folder (--real). Resumable: rerun the "
        "same command. "
        "The end writes OUT/cpr.pt and OUT/record.json (copy both into cprfa/cpr/assets/ to ship).")
    cpr_defaults = SimpleNamespace(**{field.name: field.default for field in fields(CPRTrainSettings)})
    cpr.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, weights)")
    cpr.add_argument("--real", type=Path, help="training build (cprfa data build --out) for real point sets")
    cpr.add_argument("--splits", nargs="+", default=list(cpr_defaults.splits))
    cpr.add_argument("--real-share", type=float, default=cpr_defaults.real_share,
                     help="share of each batch taken from --real (default %(default)s)")
    cpr.add_argument("--real-holdout", type=float, default=cpr_defaults.real_holdout,
                     help="share of --real's photos (with all their faces and views) kept out of training and "
                          "used as a real validation set (default %(default)s)")
    cpr.add_argument("--warmup-steps", type=int, default=cpr_defaults.warmup_steps,
                     help="batches over which the learning rate rises to --lr (for --init runs; default %(default)s)")
    cpr.add_argument("--beta-only", action="store_true",
                     help="train only round two's β networks, the rest as --init has it")
    cpr.add_argument("--step-jitter", type=float, default=cpr_defaults.step_jitter,
                     help="J: round two's steps scaled by exp(U(-J, J)) while training (default %(default)s)")
    cpr.add_argument("--landmarks-absent", type=float, default=cpr_defaults.landmarks_absent,
                     help="share of synthetic faces trained without sparse landmarks (default %(default)s)")
    cpr.add_argument("--landmark-noise", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     default=list(cpr_defaults.landmark_noise),
                     help="the synthetic landmarks' noise σ per coordinate, a fraction of the face size drawn "
                          "uniformly per face (default %(default)s)")
    cpr.add_argument("--dafi-weights", type=Path, help="HS-U-Net weights for --real (default: the shipped ones)")
    cpr.add_argument("--selection", type=Path, help="vertex selection .npz (default: the shipped one)")
    cpr.add_argument("--widths", type=int, nargs=5, default=list(cpr_defaults.widths))
    cpr.add_argument("--hidden", type=int, default=cpr_defaults.hidden)
    cpr.add_argument("--rounds", type=int, choices=(1, 2), default=cpr_defaults.rounds,
                     help="1: round one alone; 2: with consistency-aware updating (default %(default)s)")
    cpr.add_argument("--no-fusion", action="store_true", help="without the sparse-landmark branch (CPR-C2)")
    cpr.add_argument("--kappa", type=float, default=cpr_defaults.kappa,
                     help="share of detected DAFI vertices in round two's error pool (default %(default)s)")
    cpr.add_argument("--path-samples", type=int, default=cpr_defaults.path_samples,
                     help="M: round two tries 2M points along each step (default %(default)s)")
    cpr.add_argument("--init", type=Path, help="aligner weights to start from, e.g. a round-one run's cpr.pt")
    cpr.add_argument("--epochs", type=int, default=cpr_defaults.epochs)
    cpr.add_argument("--samples-per-epoch", type=int, default=cpr_defaults.samples_per_epoch)
    cpr.add_argument("--batch-size", type=int, default=cpr_defaults.batch_size)
    cpr.add_argument("--validation-faces", type=int, default=cpr_defaults.validation_faces,
                     help="faces per synthetic validation set (default %(default)s)")
    cpr.add_argument("--lr", type=float, default=cpr_defaults.lr)
    cpr.add_argument("--final-lr-ratio", type=float, default=cpr_defaults.final_lr_ratio)
    cpr.add_argument("--workers", type=int, default=cpr_defaults.workers, help="point-set processes")
    cpr.add_argument("--threads", type=int, default=cpr_defaults.threads, help="torch threads")
    cpr.add_argument("--device", default="cpu", help="cpu or cuda (only the speed changes; default cpu)")
    cpr.add_argument("--seed", type=int, default=cpr_defaults.seed)
    cpr.set_defaults(run=run_train_cpr)
    return parser


def find_images(inputs: list[Path], suffixes=IMAGE_SUFFIXES) -> dict[Path, Path]:
    """Files as given, and files with one of ``suffixes`` (images by default) found recursively inside folders,
    in sorted order, each with the name its outputs take in the output folder (``output_names``). Hidden files
    and folders (names starting with a dot: macOS's ``._photo.jpg`` companions, ``.ipynb_checkpoints``) are
    not searched."""
    images: list[tuple[Path, Path]] = []  # (file, name: the file's path under the folder given, or its name)
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                print(f"warning: no images in folder {path}", file=sys.stderr)
            images += [(p, p.relative_to(path)) for p in found]
        else:
            images.append((path, Path(path.name)))  # a missing or non-image file is reported when it is read
    return output_names(images)


def output_names(images: list[tuple[Path, Path]]) -> dict[Path, Path]:
    """Each file's output name (its outputs are OUT/<name>_overlay.png and so on): its path under the folder it
    was found in (subfolders kept) without the suffix; where two files would share one, with the suffix
    (``photo_png``), and then a number."""
    unique: dict[Path, Path] = {}
    for path, name in images:
        unique.setdefault(path, name)  # a file given twice: once, with its first name
    shared = {stem for stem, count in Counter(name.with_suffix("") for name in unique.values()).items() if count > 1}
    names: dict[Path, Path] = {}
    taken: set[Path] = set()
    for path, name in unique.items():
        stem = name.with_suffix("")
        if stem in shared:
            stem = stem.with_name(f"{stem.name}_{name.suffix.lstrip('.').lower()}")
        candidate, number = stem, 1
        while candidate in taken:
            number += 1
            candidate = stem.with_name(f"{stem.name}_{number}")
        names[path] = candidate
        taken.add(candidate)
    return names


def parse_expressions(items: list[str]) -> dict[str, float]:
    expressions = {}
    for item in items:
        name, _, weight = item.partition("=")
        try:
            expressions[name] = float(weight)
        except ValueError:
            raise CprfaError(f"--expression takes NAME=WEIGHT, got '{item}'") from None
    return expressions


def run_render(args: argparse.Namespace) -> int:
    from cprfa.api import draw_posed_model, pose_model_in_box
    from cprfa.data.boxes import boxes_for, check_box, read_boxes
    from cprfa.data.images import load_image, save_image
    from cprfa.model.draw import depth_to_gray
    from cprfa.model.face_model import default_face_model
    from cprfa.model.mesh_io import write_obj, write_ply

    model = default_face_model()
    expressions = parse_expressions(args.expression)
    boxes = read_boxes(args.boxes) if args.boxes else None
    if args.box:
        check_box(args.box, "--box")
    images = find_images(args.inputs)
    failures = 0
    for path, name in images.items():
        try:
            image_boxes = boxes_for(boxes, path) if boxes is not None else [tuple(args.box)]
            if not image_boxes:
                raise CprfaError(f"{path}: no face box for this image in {args.boxes}")
            image = load_image(path)
            overlay = image
            for k, box in enumerate(image_boxes):
                posed = pose_model_in_box(image.shape[:2], box, args.pitch, args.yaw, args.roll, expressions,
                                          model=model)
                overlay = draw_posed_model(overlay, posed, model)
                stem = args.out / f"{name}_face{k}"
                save_image(f"{stem}_pncc.png", (posed.pncc * 255).round().astype(np.uint8))
                save_image(f"{stem}_depth.png", depth_to_gray(posed.depth))
                if args.mesh:
                    writer = write_obj if args.mesh == "obj" else write_ply
                    writer(f"{stem}.{args.mesh}", posed.vertices, model.triangles)
            save_image(args.out / f"{name}_overlay.png", overlay)
            print(f"{path}: {len(image_boxes)} face(s) -> {args.out / f'{name}_overlay.png'}")
        except CprfaError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
    if not images:
        print("error: no images to process", file=sys.stderr)
        return 1
    return 1 if failures else 0


def run_align(args: argparse.Namespace) -> int:
    import itertools

    from tqdm import tqdm

    from cprfa.align import FaceAligner
    from cprfa.data.boxes import boxes_for, read_boxes_and_rolls, read_landmarks
    from cprfa.data.images import load_image

    boxes = read_boxes_and_rolls(args.boxes) if args.boxes is not None else None
    landmarks = read_landmarks(args.landmarks) if args.landmarks is not None else None
    images = find_images(args.inputs, IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not images:
        print("error: no images to process", file=sys.stderr)
        return 1
    if not 0 <= args.smoothing < 1:
        raise CprfaError(f"--smoothing must lie in [0, 1), got {args.smoothing}")
    if args.batch_size < 1 or args.workers < 0:
        raise CprfaError("--batch-size must be at least 1 and --workers not negative")
    if args.min_score is not None and not 0 < args.min_score < 1:
        raise CprfaError(f"--min-score must lie in (0, 1), got {args.min_score}")
    _check_device(args.device)
    for option in ("small_faces", "min_face"):
        if args.no_tiles and getattr(args, option):
            raise CprfaError(f"--no-tiles and --{option.replace('_', '-')} exclude each other: the small faces' "
                             "tiles are tiles too")
    detector = None
    if (args.detector_weights is not None or args.min_score is not None or args.small_faces or args.no_tiles
            or args.any_roll or args.min_face is not None):
        from cprfa.detect.detector import FaceDetector

        detector = FaceDetector(args.detector_weights, min_score=args.min_score, small_faces=args.small_faces,
                                tiles=not args.no_tiles, any_roll=args.any_roll, min_face=args.min_face)
    landmark_source = None
    if args.landmark_source == "mediapipe":
        from cprfa.detect.landmarks import MediaPipeLandmarks

        landmark_source = MediaPipeLandmarks()
    aligner = FaceAligner(weights=args.weights, device=args.device, method=args.method, cpr_weights=args.cpr_weights,
                          runtime=args.runtime, flip=args.flip, refine=args.refine,
                          refiner_weights=args.refiner_weights, detector=detector, reframe=args.reframe,
                          landmark_source=landmark_source)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = [SUMMARY_COLUMNS]
    failures = 0

    def report(path: Path, error: CprfaError) -> None:
        nonlocal failures
        failures += 1
        print(f"error: {error}", file=sys.stderr)
        summary.append(summary_row(path, "error"))

    def read(path: Path) -> LoadedImage:
        try:
            given = boxes_for(boxes, path) if boxes is not None else None
            image_landmarks = boxes_for(landmarks, path) if landmarks is not None else None
            if given == [] or image_landmarks == []:
                raise CprfaError(f"{path}: no face for this image in {args.boxes or args.landmarks}")
            image_boxes, rolls = map(list, zip(*given)) if given else (None, None)
            return LoadedImage(path, load_image(path), image_boxes, image_landmarks, rolls)
        except CprfaError as error:
            return LoadedImage(path, error=error)

    stills = [p for p in images if p.suffix.lower() not in VIDEO_SUFFIXES]
    if args.skip_existing:
        done = {path: existing_faces(args.out / images[path]) for path in stills}
        for path, records in done.items():
            summary.extend(summary_row(path, "ok", k, record) for k, record in records)
        stills = [path for path in stills if not done[path]]
    for path in (p for p in images if p.suffix.lower() in VIDEO_SUFFIXES):
        if args.skip_existing and (args.out / f"{images[path]}_frames.csv").is_file():
            summary.append(summary_row(path, "video: done before"))
            continue
        try:
            count = align_video_file(aligner, path, args.out / images[path], args.smoothing, args.batch_size,
                                     args.track)
            summary.append(summary_row(path, f"video: {count} frames"))
            print(f"{path}: {count} frames -> {args.out / f'{images[path]}_annotated.mp4'}")
        except CprfaError as error:
            report(path, error)
    loaded = prefetched(read, stills, args.workers, ahead=2 * args.batch_size)
    with tqdm(total=len(stills), desc="align", unit="image", disable=len(stills) < 2, file=sys.stderr) as bar:
        while batch := list(itertools.islice(loaded, args.batch_size)):
            ready = [item for item in batch if item.error is None]
            for item in batch:
                if item.error is not None:
                    report(item.path, item.error)
            for item, outcome in zip(ready, _align_batch(aligner, ready), strict=True):
                if isinstance(outcome, CprfaError):
                    report(item.path, outcome)
                elif not outcome:
                    report(item.path, CprfaError(f"{item.path}: no face found"))
                else:
                    failures += _write_faces(aligner, args, item, args.out / images[item.path], outcome, summary)
            bar.update(len(batch))
    with open(args.out / "summary.csv", "w", newline="") as file:
        csv.writer(file).writerows(summary)
    return 1 if failures else 0


def summary_row(path: Path, status: str, face: int | str = "", record: dict | None = None) -> list[str]:
    """A row of ``cprfa align``'s summary.csv (SUMMARY_COLUMNS): an image's or face's status and, for an aligned
    face (its JSON record, ``FaceResult.to_dict``), its score, pose, vertex count and 68 landmarks (2D
    convention)."""
    if record is None:
        return [str(path), str(face), status] + [""] * (len(SUMMARY_COLUMNS) - 3)
    pose, score = record["pose"], record["score"]
    return [str(path), str(face), status, "" if score is None else f"{score:.3f}",
            *(f"{pose[name]:.2f}" for name in ("pitch", "yaw", "roll")), f"{pose['scale']:.4f}",
            str(record["observed_vertices"]), *(f"{value:.2f}" for value in np.ravel(record["landmarks_2d"]))]


def existing_faces(out: Path) -> list[tuple[int, dict]]:
    """The (k, record) of the faces' JSON files <out>_face<k>.json an earlier run wrote (none where one is
    unreadable or lacks what summary.csv takes: the image is aligned again)."""
    import glob
    import json
    import re

    pattern = re.compile(rf"{re.escape(out.name)}_face(\d+)\.json")
    records = []
    for file in out.parent.glob(f"{glob.escape(out.name)}_face*.json"):
        if match := pattern.fullmatch(file.name):
            try:
                record = json.loads(file.read_text())
                summary_row(file, "ok", 0, record)  # it holds what summary.csv takes
            except (OSError, ValueError, KeyError, TypeError):
                return []
            records.append((int(match[1]), record))
    return sorted(records, key=lambda item: item[0])


def prefetched(function, items: list, workers: int, ahead: int):
    """``map(function, items)`` with ``workers`` threads running at most ``ahead`` items in advance (bounded
    memory however many items there are); in order."""
    if workers < 1:
        yield from map(function, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class LoadedImage(NamedTuple):
    """An input image of ``cprfa align`` as read: the image with its given boxes or landmarks, or the error."""

    path: Path
    image: np.ndarray | None = None
    boxes: list | None = None
    landmarks: list | None = None
    rolls: list | None = None
    error: CprfaError | None = None


def _align_batch(aligner, ready: list[LoadedImage]) -> list:
    """Per loaded image its results, or the error that refused it: the batch at once, and image by image when
    one of them is refused (so that one bad image never stops the others)."""
    try:
        return aligner.align_batch([item.image for item in ready], [item.boxes for item in ready],
                                   [item.landmarks for item in ready], [item.rolls for item in ready])
    except CprfaError:
        outcomes = []
        for item in ready:
            try:
                outcomes.append(aligner.align(item.image, item.boxes, item.landmarks, rolls=item.rolls))
            except CprfaError as error:
                outcomes.append(error)
        return outcomes


def _write_faces(aligner, args: argparse.Namespace, item: LoadedImage, out: Path, results: list,
                 summary: list[list[str]]) -> int:
    """The per-face files (``out``: the image's output path without a suffix, find_images) and summary rows of
    one image; returns how many of its boxes held no face."""
    import json

    from tqdm import tqdm

    from cprfa.align import draw_face_result, render_faces
    from cprfa.data.images import save_image
    from cprfa.model.draw import depth_to_gray
    from cprfa.model.mesh_io import write_obj, write_ply

    path, image, image_boxes = item.path, item.image, item.boxes
    out.parent.mkdir(parents=True, exist_ok=True)
    missing, overlay = 0, image
    for k, result in enumerate(results):
        if result is None:
            missing += 1
            where = f"box {image_boxes[k]}" if image_boxes else f"face {k}"
            print(f"error: {path}: no face recognised in {where}", file=sys.stderr)
            summary.append(summary_row(path, "no face", k))
            continue
        stem = f"{out}_face{k}"
        record = result.to_dict()
        Path(f"{stem}.json").write_text(json.dumps(record, indent=1))
        if args.mesh:
            writer = write_obj if args.mesh == "obj" else write_ply
            writer(f"{stem}.{args.mesh}", result.vertices, aligner.model.triangles)
        if args.dafi:
            save_image(f"{stem}_dafi.png", (result.dafi * result.dafi_mask[..., None] * 255).round().astype(np.uint8))
        if args.overlay != "none":
            overlay = draw_face_result(overlay, result, aligner.model)
        summary.append(summary_row(path, "ok", k, record))
    if args.overlay != "none":
        save_image(f"{out}_overlay.{args.overlay}", overlay)
    if args.pncc or args.depth:
        maps = render_faces(image.shape[:2], results, aligner.model)
        if args.pncc:
            save_image(f"{out}_pncc.png", (maps.pncc * 255).round().astype(np.uint8))
        if args.depth:
            save_image(f"{out}_depth.png", depth_to_gray(maps.depth, maps.face))
    tqdm.write(f"{path}: {sum(r is not None for r in results)} of {len(results)} face(s) aligned", file=sys.stdout)
    return missing


def align_video_file(aligner, path: Path, out: Path, smoothing: float, batch_size: int = 8,
                     track: bool = True) -> int:
    """Align every frame of a video: writes <out>_annotated.mp4 and <out>_frames.csv (``out`` the video's output
    path without a suffix, find_images; one row per face and frame: the face's id, pose and the 68 landmarks,
    2D convention); returns the number of frames."""
    import cv2

    from cprfa.align import draw_face_result
    from cprfa.video import align_video, video_fps

    header = ["frame", "seconds", "face", "score", "pitch", "yaw", "roll", "scale", "tx", "ty", *LANDMARK_COLUMNS]
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, writer, count = [",".join(header)], None, 0
    try:
        for frame in align_video(aligner, path, smoothing, batch_size, track):
            overlay = frame.image
            for face_id, face in zip(frame.face_ids, frame.faces, strict=True):
                overlay = draw_face_result(overlay, face, aligner.model)
                values = [frame.index, f"{frame.seconds:.3f}", face_id, "" if face.score is None else f"{face.score:.3f}",
                          *(f"{v:.2f}" for v in (face.pitch, face.yaw, face.roll)), f"{face.scale:.4f}",
                          *(f"{v:.2f}" for v in face.translation), *(f"{v:.2f}" for v in face.landmarks_2d.ravel())]
                rows.append(",".join(str(v) for v in values))
            if writer is None:
                height, width = overlay.shape[:2]
                writer = cv2.VideoWriter(f"{out}_annotated.mp4", cv2.VideoWriter_fourcc(*"mp4v"),
                                         video_fps(path), (width, height))
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    Path(f"{out}_frames.csv").write_text("\n".join(rows) + "\n")
    return count


def run_build_model(args: argparse.Namespace) -> int:
    from cprfa.model.face_model import DEFAULT_MODEL_PATH
    from cprfa.model.ict import build_ict_face_model

    out = args.out or DEFAULT_MODEL_PATH
    model = build_ict_face_model(args.source)
    digest = model.save(out, compact=True)
    print(f"wrote {out}: {model.n_vertices} vertices, {len(model.triangles)} triangles, "
          f"{model.n_identity} identity and {model.n_expression} expression modes, sha256 {digest}")
    return 0


def run_data_build(args: argparse.Namespace) -> int:
    from cprfa.data.build import BuildSettings, build_pseudo_gt

    if not 32 <= args.size <= 1024:
        raise CprfaError(f"--size must lie in [32, 1024], got {args.size}")
    if args.occlude and not 0 < args.occlude[0] <= args.occlude[1] < 1:
        raise CprfaError(f"--occlude needs 0 < LOW <= HIGH < 1, got {args.occlude}")
    if not 0 <= args.profile <= 20:
        raise CprfaError(f"--profile must lie in [0, 20], got {args.profile}")
    if args.profile and args.large_pose:
        raise CprfaError("--profile (training views) and --large-pose (evaluation set) exclude each other")
    settings = BuildSettings(str(args.data), str(args.out), tuple(args.splits), args.size,
                             tuple(args.occlude) if args.occlude else None, args.seed, args.profile, args.large_pose)
    manifest = build_pseudo_gt(settings)
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['kept_faces']} faces kept ({entry['samples']} samples), "
              f"{len(entry['skipped'])} skipped")
        for item in entry["skipped"]:
            print(f"  skipped {item['image']}: {item['reason']}")
    print(f"wrote {args.out / 'manifest.json'} ({manifest['seconds']} s)")
    return 0


def run_train_dafi(args: argparse.Namespace) -> int:

    from cprfa.train.dafi import train_dafi

    _check_training_options(args, ("batch_size", "threads"))
    if args.epochs < (0 if args.init else 1):
        raise CprfaError(f"--epochs must be at least 1 (0 with --init: calibrate that network only), got {args.epochs}")
    if not 0 < args.lr < 1 or not 0 < args.final_lr_ratio <= 1 or args.landmark_weight < 0:
        raise CprfaError("--lr must lie in (0, 1), --final-lr-ratio in (0, 1], --landmark-weight not be negative")
    if args.workers < 0 or args.limit < 0:
        raise CprfaError("--workers and --limit must not be negative")
    if args.init is not None and not args.init.is_file():
        raise CprfaError(f"--init {args.init}: no such file")
    if args.input_size < 32 or args.input_size % 16:
        raise CprfaError(f"--input-size must be a multiple of 16 and at least 32, got {args.input_size}")
    from cprfa.data.crop import check_zoom

    check_zoom(args.train_zoom)
    if args.calibration_zoom:
        check_zoom(args.calibration_zoom)
    settings = TrainSettings(
        data=str(args.data), out=str(args.out), validation=str(args.validation), splits=tuple(args.splits),
        input_size=args.input_size, widths=tuple(args.widths), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, final_lr_ratio=args.final_lr_ratio, landmark_weight=args.landmark_weight,
        workers=args.workers, seed=args.seed, threads=args.threads, limit=args.limit,
        init=str(args.init) if args.init else "", calibration_zoom=args.calibration_zoom,
        train_zoom=args.train_zoom)
    record = train_dafi(settings, device=args.device)
    calibrated = record["calibration"]
    print(f"wrote {args.out / 'hsunet.pt'} and record.json: validation landmark NME "
          f"{calibrated['val_landmark_nme_after']:.2f} %, vertex NME {calibrated['val_vertex_nme_after']:.2f} % "
          "(calibrated)")
    return 0


def run_train_refiner(args: argparse.Namespace) -> int:

    from cprfa.train.refine import train_refiner

    _check_training_options(args, ("epochs", "batch_size", "threads"))
    if not 0 < args.lr < 1 or not 0 < args.final_lr_ratio <= 1:
        raise CprfaError("--lr must lie in (0, 1), --final-lr-ratio in (0, 1]")
    if min(args.workers, args.limit, args.validation_faces, args.jitter) < 0:
        raise CprfaError("--workers, --limit, --validation-faces and --jitter must not be negative")
    if args.patch_size < 8 or args.patch_size % 8 or min(args.pitches) <= 0:
        raise CprfaError("--patch-size must be a positive multiple of 8 and --pitches positive")
    for option, path in (("--init", args.init), ("--dafi-weights", args.dafi_weights)):
        if path is not None and not path.is_file():
            raise CprfaError(f"{option} {path}: no such file")
    settings = RefinerTrainSettings(
        data=str(args.data), out=str(args.out), validation=str(args.validation), splits=tuple(args.splits),
        validation_faces=args.validation_faces, dafi_weights=str(args.dafi_weights or ""),
        patch_size=args.patch_size, pitches=tuple(args.pitches), jitter=args.jitter, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, final_lr_ratio=args.final_lr_ratio, workers=args.workers,
        seed=args.seed, threads=args.threads, limit=args.limit, init=str(args.init or ""))
    record = train_refiner(settings, device=args.device)
    final = record["final"]
    print(f"wrote {args.out / 'refiner.pt'} and record.json: validation landmark NME "
          f"{final.get('val_head_nme', float('nan')):.3f} % (head) -> {final.get('val_refined_nme', float('nan')):.3f} %")
    return 0


def run_train_detector(args: argparse.Namespace) -> int:
    from cprfa.train.detector import train_detector

    _check_training_options(args, ("epochs", "batch_size", "threads", "samples_per_epoch"))
    if not 0 < args.lr < 1 or not 0 < args.final_lr_ratio <= 1:
        raise CprfaError("--lr must lie in (0, 1), --final-lr-ratio in (0, 1]")
    if min(args.workers, args.limit) < 0:
        raise CprfaError("--workers and --limit must not be negative")
    for option, path in (("--init", args.init), ("--validation", args.validation), ("--photos", args.photos)):
        if path is not None and not path.exists():
            raise CprfaError(f"{option} {path}: no such file or folder")
    missing = [split for split in ("helen_test", *args.splits) if args.photos and not (args.photos / split).is_dir()]
    if missing:  # helen_test for the validation, the training splits for the threshold
        raise CprfaError(f"--photos {args.photos} has no {', '.join(missing)} folder: give the 300-W folder")
    settings = DetectorTrainSettings(
        data=str(args.data), out=str(args.out), validation=str(args.validation or ""),
        photos=str(args.photos or ""), splits=tuple(args.splits), init=str(args.init or ""), epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch, batch_size=args.batch_size, lr=args.lr,
        final_lr_ratio=args.final_lr_ratio, workers=args.workers, seed=args.seed, threads=args.threads,
        limit=args.limit)
    record = train_detector(settings)
    print(f"wrote {args.out / 'blazeface.pt'} and blazeface.json: {record['fine_tuning']['final']}")
    return 0


def _check_training_options(args: argparse.Namespace, positive: tuple[str, ...]) -> None:
    """The options of the training commands that every one checks: counts of at least 1, an existing device."""
    for name in positive:
        if getattr(args, name) < 1:
            raise CprfaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    _check_device(getattr(args, "device", "cpu"))


def _check_device(device: str) -> None:
    import torch

    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise CprfaError(f"--device {device} is not available here (use cpu)")


def run_train_cpr(args: argparse.Namespace) -> int:

    from cprfa.train.cpr import train_cpr

    _check_training_options(args, ("epochs", "batch_size", "threads", "hidden", "samples_per_epoch",
                                   "validation_faces", "path_samples"))
    if args.warmup_steps < 0:
        raise CprfaError(f"--warmup-steps must not be negative, got {args.warmup_steps}")
    if not 0 < args.lr < 1 or not 0 < args.final_lr_ratio <= 1 or args.workers < 0 or not 0 <= args.real_share < 1:
        raise CprfaError("--lr must lie in (0, 1), --final-lr-ratio in (0, 1], --real-share in [0, 1); --workers "
                         "must not be negative")
    if args.samples_per_epoch < args.batch_size:
        raise CprfaError("--samples-per-epoch must be at least --batch-size")
    if not 0 < args.kappa <= 1:
        raise CprfaError(f"--kappa must lie in (0, 1], got {args.kappa}")
    if not 0 <= args.real_holdout < 1:
        raise CprfaError(f"--real-holdout must lie in [0, 1), got {args.real_holdout}")
    if not 0 <= args.landmarks_absent <= 1:
        raise CprfaError(f"--landmarks-absent must lie in [0, 1], got {args.landmarks_absent}")
    if not 0 <= args.landmark_noise[0] <= args.landmark_noise[1] <= 0.2:
        raise CprfaError(f"--landmark-noise wants 0 <= LOW <= HIGH <= 0.2, got {args.landmark_noise}")
    if args.init is not None and not args.init.is_file():
        raise CprfaError(f"--init {args.init} not found")
    if args.beta_only and (args.init is None or args.rounds < 2):
        raise CprfaError("--beta-only trains round two's β networks of the --init weights: give --init, two rounds")
    if not 0 <= args.step_jitter <= 2:
        raise CprfaError(f"--step-jitter must lie in [0, 2], got {args.step_jitter}")
    if args.real is not None and not (args.real / "manifest.json").is_file():
        raise CprfaError(f"--real {args.real} is not a `cprfa data build` output (no manifest.json)")
    settings = CPRTrainSettings(
        out=str(args.out), real=str(args.real or ""), splits=tuple(args.splits), real_share=args.real_share,
        real_holdout=args.real_holdout, dafi_weights=str(args.dafi_weights or ""),
        selection=str(args.selection or ""), widths=tuple(args.widths),
        hidden=args.hidden, rounds=args.rounds, fusion=not args.no_fusion, kappa=args.kappa,
        path_samples=args.path_samples,
        landmarks_absent=args.landmarks_absent, landmark_noise=tuple(args.landmark_noise),
        warmup_steps=args.warmup_steps, beta_only=args.beta_only,
        step_jitter=args.step_jitter,
        init=str(args.init or ""), epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
        validation_faces=args.validation_faces, batch_size=args.batch_size, lr=args.lr,
        final_lr_ratio=args.final_lr_ratio, workers=args.workers,
        seed=args.seed, threads=args.threads)
    record = train_cpr(settings, device=args.device)
    shipped = record["shipped"]
    print(f"wrote {args.out / 'cpr.pt'} (epoch {record['shipped_epoch']}) and record.json: synthetic 68-point NME "
          f"{shipped.get('val_synthetic_nme', float('nan')):.2f} %, occluded "
          f"{shipped.get('val_occluded_nme', float('nan')):.2f} %"
          + (f", held-out real {shipped['val_real_nme']:.2f} %" if "val_real_nme" in shipped else ""))
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from cprfa.align import CPR_ROUNDS, CPR_STAGES, METHODS
    from cprfa.cpr.onnx import export_aligner
    from cprfa.cpr.regressor import load_aligner
    from cprfa.dafi.onnx import export_hsunet, export_refiner
    from cprfa.dafi.predict import load_network
    from cprfa.dafi.refine import load_refiner

    network, config = load_network(args.weights)
    aligner = load_aligner(args.cpr_weights).fused()
    (args.out / "cpr").mkdir(parents=True, exist_ok=True)
    export_hsunet(network, config.input_size, args.out / "hsunet.onnx")
    print(f"wrote {args.out / 'hsunet.onnx'} (input {config.input_size}², dynamic batch)")
    if args.weights is None or args.refiner_weights is not None:  # the shipped refiner goes with the shipped network
        refiner = load_refiner(args.refiner_weights)
        side = refiner.config.scale * config.input_size
        export_refiner(refiner, side, args.out / "refiner.onnx")
        print(f"wrote {args.out / 'refiner.onnx'} (detail crops {side}² and 68 points, dynamic batch)")
    schedules = sorted({aligner.schedule(CPR_ROUNDS.get(method), CPR_STAGES.get(method))
                        for method in METHODS if method.startswith("cpr")})
    for rounds, stages in schedules:
        export_aligner(aligner, args.out / "cpr" / f"rounds{rounds}_stages{stages}.onnx", rounds, stages)
    print(f"wrote the CPR aligner as {len(schedules)} graphs, one per schedule that `cprfa align` runs "
          f"(rounds, stages per round: {', '.join(map(str, schedules))}), to {args.out / 'cpr'}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from cprfa.eval.report import run_report

    succeeded = run_report(args.out, tuple(args.sets), args.data, args.quick, tuple(args.only or ()))
    print(f"wrote {args.out / 'report.md'}")
    return 0 if succeeded else 1


def run_select_vertices(args: argparse.Namespace) -> int:
    from cprfa.cpr.selection import reference_statistics, select_vertices
    from cprfa.dafi.predict import DafiEstimator
    from cprfa.model.face_model import default_face_model
    from cprfa.train.dafi import load_faces

    model = default_face_model()
    estimator = DafiEstimator.from_file(args.weights)
    faces = load_faces(args.data, tuple(args.splits), estimator.input_size, zoom=estimator.zoom,  # align's crops
                       detail=estimator.detail_size)
    p1, p2 = reference_statistics(estimator, faces, model)
    reference = f"{len(faces)} faces of {', '.join(args.splits)} in {args.data}, HS-U-Net {args.weights or 'shipped'}"
    selection = select_vertices(model, p1, p2, args.count, args.seed, reference)
    selection.save(args.out)
    chosen = selection.vertex_ids
    print(f"wrote {args.out}: {selection.count} vertices, mean p1 {p1[chosen].mean():.3f} (all: {p1.mean():.3f}), "
          f"mean p2 {p2[chosen].mean():.3f} (all detected: {p2[p1 > 0].mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
