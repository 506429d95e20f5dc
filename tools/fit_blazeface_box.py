"""Fit the map from BlazeFace's box to the tight 68-landmark box that cprfa's aligner takes, on 300-W's training
images, and store it in ``cprfa/detect/assets/blazeface_short.json`` (section ``face_box``).

A developer script, run after ``tools/convert_blazeface.py``:

    python tools/fit_blazeface_box.py --data ../shared/data/300w

Each annotated face of ``--splits`` (default afw and helen_train; never helen_test, the evaluation split) is
matched to the detection (FaceDetector with its default options) whose box centre lies inside the face's
tight landmark box, the best scoring one if several. Per matched face, with the detection's centre (cx, cy)
and size (w, h) and the landmark box's centre (cx', cy') and size (w', h'): offset_x = (cx' − cx) / w,
offset_y = (cy' − cy) / h, width_ratio = w' / w, height_ratio = h' / h; each coefficient is the median over
the faces (robust to the few bad matches and odd annotations).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.data.readers import iter_300w, landmark_box
from cprfa.detect.detector import MEDIAPIPE_WEIGHTS, FaceBoxMap, FaceDetector


def box_iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the 300-W folder (afw/, helen_train/, ...)")
    parser.add_argument("--splits", nargs="+", default=["afw", "helen_train"])
    parser.add_argument("--weights", type=Path, default=MEDIAPIPE_WEIGHTS,
                        help="MediaPipe's converted weights (the fine-tuning inherits their box map)")
    args = parser.parse_args()
    if "helen_test" in args.splits:
        raise SystemExit("helen_test is the evaluation split: never fit on it")
    torch.set_num_threads(1)
    detector = FaceDetector(args.weights, face_box_map=FaceBoxMap())
    rows, faces = [], 0
    for face in iter_300w(args.data, tuple(args.splits)):
        faces += 1
        image = cv2.cvtColor(cv2.imread(str(face.image)), cv2.COLOR_BGR2RGB)
        target = landmark_box(face.landmarks)
        inside = [d for d in detector.detect(image)
                  if target[0] <= (d.box[0] + d.box[2]) / 2 <= target[2]
                  and target[1] <= (d.box[1] + d.box[3]) / 2 <= target[3]]
        if not inside:
            continue
        box = max(inside, key=lambda d: d.score).box
        w, h = box[2] - box[0], box[3] - box[1]
        tw, th = target[2] - target[0], target[3] - target[1]
        rows.append(([((target[0] + target[2]) - (box[0] + box[2])) / 2 / w,
                      ((target[1] + target[3]) - (box[1] + box[3])) / 2 / h, tw / w, th / h], box, target))
    values = np.array([r[0] for r in rows])
    medians = np.median(values, axis=0)
    mapping = FaceBoxMap(*(float(v) for v in medians))
    mapped = mapping(torch.tensor([r[1] for r in rows], dtype=torch.float64)).tolist()
    ious = np.array([box_iou(m, r[2]) for m, r in zip(mapped, rows, strict=True)])
    spread = np.percentile(values, [25, 75], axis=0)
    names = ("offset_x", "offset_y", "width_ratio", "height_ratio")
    section = {
        **{name: round(float(v), 5) for name, v in zip(names, medians, strict=True)},
        "fitted": {
            "data": f"300-W {' + '.join(args.splits)} ({args.data.name}/: crops of twice the landmark box, "
                    f"at most 450 px)",
            "faces": faces, "matched": len(rows),
            "matching": "the best scoring detection whose box centre lies inside the tight landmark box",
            "method": "per coefficient, the median over matched faces of (landmark-box centre − detection centre)"
                      " / detection size and landmark-box size / detection size",
            "detector": {"min_score": detector.min_score, "tiles": bool(detector.grids)},
            "interquartile": {name: [round(float(a), 4), round(float(b), 4)]
                              for name, a, b in zip(names, *spread, strict=True)},
            "iou_with_landmark_box": {"mean": round(float(ious.mean()), 4),
                                      "median": round(float(np.median(ious)), 4),
                                      "at_least_0.5": round(float((ious >= 0.5).mean()), 4)},
            "tool": "tools/fit_blazeface_box.py",
        },
    }
    record_path = args.weights.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record["face_box"] = section
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(section, indent=1))


if __name__ == "__main__":
    main()
