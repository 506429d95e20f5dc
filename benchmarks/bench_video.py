"""Videos of faces turning to profile: following faces by their last landmarks against the detector alone.

Each of the first ``--faces`` faces of a built helen_test set (``cprfa data build --data ../shared/data/300w
--splits helen_test --out /tmp/pgt``) is turned step by step from its own pose by 0° to ``--max-yaw`` more,
towards the side it already shows (``cprfa.data.profiling.profile_face``, as the large-pose set is made), and
the views, pasted into a grey 512² frame, make a ``--steps``-frame video. ``align_video`` runs on it with
``track`` on and off (no smoothing); for every frame: was the face found, and the 68-point NME (%) of
``landmarks_3d`` against the turned model's landmarks (3D convention, as the large-pose set's ground truth);
and the time per frame of each way (``--no-track`` aligns 8 frames at a time).
The views beyond about 45° carry the profiling's artifacts (README, "Command line", ``data build``).

    python benchmarks/bench_video.py [--data /tmp/pgt] [--faces 10] [--steps 12] [--max-yaw 85]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.align import FaceAligner
from cprfa.data.profiling import profile_face
from cprfa.model.face_model import default_face_model
from cprfa.model.projection import landmarks_3d
from cprfa.train.dafi import load_faces
from cprfa.video import align_video

FRAME, CROP = 512, 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/pgt"), help="a built helen_test set")
    parser.add_argument("--split", default="helen_test")
    parser.add_argument("--faces", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12, help="frames per video")
    parser.add_argument("--max-yaw", type=float, default=85.0, help="the last frame's turn, degrees")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "manifest.json").is_file():
        print(f"({args.data} is not a built set: skipped)")
        return
    model = default_face_model()
    faces = load_faces(args.data, (args.split,), CROP, limit=args.faces)
    aligner = FaceAligner()
    turns = np.radians(np.linspace(0.0, args.max_yaw, args.steps))
    errors = {True: np.full((len(faces), args.steps), np.nan), False: np.full((len(faces), args.steps), np.nan)}
    seconds = {True: 0.0, False: 0.0}  # reading, aligning and scoring the frames
    with tempfile.TemporaryDirectory() as folder:
        for f in range(len(faces)):
            params = torch.from_numpy(faces.params[f]).double()
            side = 1.0 if params[1] >= 0 else -1.0
            path, truths = Path(folder) / f"turn_{f}.avi", []
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (FRAME, FRAME))
            for turn in turns:
                view, turned = profile_face(model, faces.images[f], params, side * turn) if turn else (
                    faces.images[f], params)
                frame = np.full((FRAME, FRAME, 3), 127, np.uint8)
                offset = (FRAME - CROP) // 2
                frame[offset:offset + CROP, offset:offset + CROP] = view
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                truths.append(landmarks_3d(model, turned[None].float())[0, :, :2].numpy() + offset)
            writer.release()
            for track in (False, True):
                start = time.perf_counter()
                for frame, truth in zip(align_video(aligner, path, smoothing=0.0, track=track), truths, strict=True):
                    size = math.sqrt(float(np.prod(truth.max(axis=0) - truth.min(axis=0))))
                    found = [np.linalg.norm(face.landmarks_3d[:, :2] - truth, axis=1).mean() / size * 100
                             for face in frame.faces]
                    errors[track][f, frame.index] = min(found, default=np.nan)
                seconds[track] += time.perf_counter() - start

    print(f"{len(faces)} faces of {args.split} turned by 0 to {args.max_yaw:g}° more in {args.steps} frames; "
          "cells: faces found / mean NME % of those found\n")
    print("| extra yaw | " + " | ".join(f"{math.degrees(turn):.0f}°" for turn in turns)
          + " | all frames | failures | ms / frame |")
    print("|---" * (args.steps + 4) + "|")
    for track, label in ((False, "the detector on every frame (`--no-track`)"), (True, "followed (`--track`)")):
        table = errors[track]
        cells = [f"{int(np.isfinite(column).sum())} / {np.nanmean(column):.1f}" if np.isfinite(column).any()
                 else "0 / –" for column in table.T]
        failures = int((~np.isfinite(table)).sum() + (table > 10).sum())
        print(f"| {label} | " + " | ".join(cells) + f" | {int(np.isfinite(table).sum())} / {np.nanmean(table):.2f} "
              f"| {failures} of {table.size} | {1000 * seconds[track] / table.size:.0f} |")


if __name__ == "__main__":
    main()
