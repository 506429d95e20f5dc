"""Rebuild the README's example sheets from built data.

Run: cprfa data build --data ../shared/data/300w --out /tmp/pgt --splits helen_test
     cprfa data build --data ../shared/data/300w --out /tmp/occ --splits helen_test --occlude 0.2 0.4
     cprfa data build --data ../shared/data/300w --out /tmp/lp --splits helen_test --large-pose
     python benchmarks/make_figures.py --plain /tmp/pgt --occluded /tmp/occ --large-pose /tmp/lp
Writes docs/pseudo_gt_helen_test.jpg, docs/occluded_helen_test.jpg and docs/profiling_helen_test.jpg (faces of
the large-pose set: the photo with its annotation, then its profiled view in each |yaw| bucket with the
3D-convention ground truth; the mask's outline in white).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from cprfa.data.augment import PNCC_SCALE
from cprfa.model.draw import blend, draw_landmarks

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
    parser.add_argument("--large-pose", type=Path, required=True, help="data build --large-pose output")
    args = parser.parse_args()
    plain = np.load(args.plain / "helen_test" / "shard_0000.npz")
    occluded = np.load(args.occluded / "helen_test" / "shard_0000.npz")

    tiles = [blend(plain["images"][i], (plain["pncc"][i] / (PNCC_SCALE / 255)).astype(np.uint8), plain["mask"][i],
                   0.5) for i in FACES]
    save(DOCS / "pseudo_gt_helen_test.jpg", np.concatenate(tiles, 1))
    save(DOCS / "occluded_helen_test.jpg", np.concatenate([occluded["images"][i] for i in FACES], 1))

    large = np.load(args.large_pose / "helen_test" / "shard_0000.npz")
    views = [name.split("@")[0] for name in large["names"]]
    rows = []
    for i in (0, 21, 40, 7):
        row = [draw_landmarks(plain["images"][i], plain["landmarks"][i], radius=1.5)]
        for j in np.flatnonzero(np.array(views) == plain["names"][i]):
            image = large["images"][j].copy()
            image[cv2.dilate(large["mask"][j].view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                  & ~large["mask"][j]] = 255
            row.append(draw_landmarks(image, large["landmarks"][j], radius=1.5))
        rows.append(np.concatenate(row, 1))
    save(DOCS / "profiling_helen_test.jpg", np.concatenate(rows, 0), shrink=0.75)


if __name__ == "__main__":
    main()
