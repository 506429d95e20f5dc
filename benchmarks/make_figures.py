"""Rebuild the README's example sheets from built data.

Run: cprfa data build --data ../shared/data/300w --out /tmp/pgt --splits helen_test
     cprfa data build --data ../shared/data/300w --out /tmp/occ --splits helen_test --occlude 0.2 0.4
     python benchmarks/make_figures.py --plain /tmp/pgt --occluded /tmp/occ
Writes docs/pseudo_gt_helen_test.jpg, docs/occluded_helen_test.jpg and docs/profiling_helen_test.jpg.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.data.augment import PNCC_SCALE
from cprfa.data.profiling import profile_face
from cprfa.model.contour import landmarks_2d
from cprfa.model.draw import blend, draw_landmarks
from cprfa.model.face_model import default_face_model

DOCS = Path(__file__).resolve().parents[1] / "docs"
FACES = (0, 7, 21, 40)


def save(path: Path, rgb: np.ndarray, shrink: float = 1.0) -> None:
    if shrink != 1.0:
        rgb = cv2.resize(rgb, (int(rgb.shape[1] * shrink), int(rgb.shape[0] * shrink)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=Path, required=True, help="data build output of helen_test")
    parser.add_argument("--occluded", type=Path, required=True, help="data build --occlude output of helen_test")
    args = parser.parse_args()
    model = default_face_model()
    plain = np.load(args.plain / "helen_test" / "shard_0000.npz")
    occluded = np.load(args.occluded / "helen_test" / "shard_0000.npz")

    tiles = [blend(plain["images"][i], (plain["pncc"][i] / (PNCC_SCALE / 255)).astype(np.uint8), plain["mask"][i],
                   0.5) for i in FACES]
    save(DOCS / "pseudo_gt_helen_test.jpg", np.concatenate(tiles, 1))
    save(DOCS / "occluded_helen_test.jpg", np.concatenate([occluded["images"][i] for i in FACES], 1))

    rows = []
    for i, sign in ((0, 1), (21, -1), (40, 1)):
        image, params = plain["images"][i], torch.from_numpy(plain["params"][i]).double()
        row = [draw_landmarks(image, landmarks_2d(model, params[None])[0, :, :2].numpy(), radius=1.5)]
        for yaw, pitch in ((30, 0), (60, 0), (85, 0), (40, -20)):
            warped, turned = profile_face(model, image, params, math.radians(sign * yaw), math.radians(pitch))
            row.append(draw_landmarks(warped, landmarks_2d(model, turned[None])[0, :, :2].numpy(), radius=1.5))
        rows.append(np.concatenate(row, 1))
    save(DOCS / "profiling_helen_test.jpg", np.concatenate(rows, 0), shrink=0.75)


if __name__ == "__main__":
    main()
