"""Fit the map from MediaPipe's 468-point face mesh to the 68 landmarks of 300-W on 300-W's training photos, and
store it in ``cprfa/detect/assets/mediapipe_68.json`` (cprfa.detect.landmarks.MediaPipeLandmarks).

A developer script, in an environment with the mediapipe extra (``pip install -e ".[mediapipe]"``):

    python tools/fit_mediapipe_68.py --data ../shared/data/300w

Each annotated face of ``--splits`` (default afw and helen_train; never helen_test, the evaluation split) gets
the mesh in its tight landmark box. For each of the 68 landmarks (2D convention: the jaw on the silhouette)
the map takes the mesh point whose distance to it, over sqrt(w·h) of the landmark box, is smallest on average
over the faces where the mesh found one. The file records the faces, how many the mesh found, and the
68-point NME of the mapped points on them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cprfa.data.images import load_image
from cprfa.data.readers import iter_300w, landmark_box
from cprfa.detect.landmarks import MEDIAPIPE_68, MESH_POINTS, MediaPipeLandmarks
from cprfa.eval.metrics import nme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/300w"))
    parser.add_argument("--splits", nargs="+", default=["afw", "helen_train"])
    parser.add_argument("--out", type=Path, default=MEDIAPIPE_68)
    args = parser.parse_args()
    if "helen_test" in args.splits:
        parser.error("helen_test is the evaluation split")
    source = MediaPipeLandmarks(mapping=None)  # the mesh alone: there is no map yet
    distance_sum, faces, found = np.zeros((68, MESH_POINTS)), 0, 0
    meshes, annotations = [], []
    for face in iter_300w(args.data, tuple(args.splits)):
        mesh = source.mesh(load_image(face.image), [landmark_box(face.landmarks)])[0]
        faces += 1
        if np.isnan(mesh).any():
            continue
        found += 1
        size = np.sqrt(np.prod(face.landmarks.max(axis=0) - face.landmarks.min(axis=0)))
        distance_sum += np.linalg.norm(face.landmarks[:, None] - mesh[None], axis=-1) / size
        meshes.append(mesh)
        annotations.append(face.landmarks)
    indices = distance_sum.argmin(axis=1)
    errors = nme(np.stack(meshes)[:, indices], np.stack(annotations))
    record = {"indices": indices.tolist(), "splits": args.splits, "faces": faces, "mesh_found": found,
              "train_nme_percent": round(float(errors.mean()), 3),
              "made_by": "python tools/fit_mediapipe_68.py --data ../shared/data/300w (mediapipe 0.10.14)"}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{found} of {faces} faces meshed; mapped 68-point NME {errors.mean():.2f} % on them; wrote {args.out}")


if __name__ == "__main__":
    main()
