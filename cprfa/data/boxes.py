"""Face boxes given by the user: a CSV (``image,x0,y0,x1,y1`` with a header) or a JSON file; or 68 landmarks per
face (a JSON file ``{"image.jpg": [[[x, y] × 68], ...], ...}``, pixels, 300-W order and 2D convention).

Boxes JSON may be ``{"image.jpg": [[x0, y0, x1, y1], ...], ...}`` or a list of ``{"image": ..., "box": [...]}``.
Images are matched by file name (``photo.jpg``) or by the path as given; a name may have several boxes.
Boxes are in pixels, (x0, y0) the top-left and (x1, y1) the bottom-right corner.

A box may carry the face's roll in degrees (``FaceResult.roll``'s sense: the face turned counter-clockwise on
screen is positive): a ``roll`` column in the CSV (an empty cell: not known), a ``"roll"`` beside the ``"box"``
of a JSON record, or ``{"box": [...], "roll": r}`` in place of a box in the JSON mapping. The box and roll are
then the face's turned rectangle: the box is the face's as if turned upright about the box's centre
(cprfa.data.crop.upright_box), as ``FaceAligner.align``'s ``rolls`` take it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from cprfa.errors import InvalidInputError

Box = tuple[float, float, float, float]


def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """Read a boxes file into ``{image name: [box, ...]}`` (their rolls left out); a malformed file raises
    InvalidInputError."""
    return {image: [box for box, _ in faces] for image, faces in read_boxes_and_rolls(path).items()}


def read_boxes_and_rolls(path: str | Path) -> dict[str, list[tuple[Box, float | None]]]:
    """Read a boxes file into ``{image name: [(box, roll in degrees or None), ...]}``; a malformed file raises
    InvalidInputError naming the entry."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"boxes file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot read boxes file {path}: {error}") from None
    entries = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_csv(path, text)
    boxes: dict[str, list[tuple[Box, float | None]]] = {}
    for number, (image, values, roll) in enumerate(entries, start=1):
        where = f"{path}, entry {number}"
        boxes.setdefault(str(image), []).append(
            (check_box(values, where), check_optional_number(roll, where, "a roll must be a finite number of degrees")))
    if not boxes:
        raise InvalidInputError(f"boxes file {path} holds no boxes")
    return boxes


def boxes_for(boxes: dict[str, list], image_path: str | Path) -> list:
    """The boxes (or landmarks) of one image, looked up by its path as given, then by its file name."""
    return boxes.get(str(image_path), boxes.get(Path(image_path).name, []))


def check_box(values, where: str) -> Box:
    """Four finite numbers with x1 > x0 and y1 > y0, else InvalidInputError naming ``where``."""
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: a box must be four numbers x0, y0, x1, y1, got {values!r}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise InvalidInputError(f"{where}: a box must be four finite numbers x0, y0, x1, y1, got {values!r}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidInputError(f"{where}: a box needs x1 > x0 and y1 > y0, got {box}")
    return box


def check_optional_number(value, where: str, what: str = "a finite number or None") -> float | None:
    """None, or a finite number, else InvalidInputError naming ``where`` and saying ``what`` it must be."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidInputError(f"{where}: {what}, got {value!r}")
    return number


def _parse_csv(path: Path, text: str):
    rows = list(csv.DictReader(text.splitlines()))
    columns = ("image", "x0", "y0", "x1", "y1")
    if not rows or any(c not in rows[0] for c in columns):
        raise InvalidInputError(f"boxes file {path} must be a CSV with the header {','.join(columns)}[,roll]")
    return [(row["image"], [row[c] for c in columns[1:]], row.get("roll") or None) for row in rows]  # "": none


def _parse_json(path: Path, text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"boxes file {path} is not valid JSON: {error}") from None
    if isinstance(data, dict):
        if not all(isinstance(v, list) for v in data.values()):
            raise InvalidInputError(f"boxes file {path}: each image must map to a list of boxes")
        return [(image, *_box_and_roll(box)) for image, image_boxes in data.items() for box in image_boxes]
    if isinstance(data, list) and all(isinstance(e, dict) and {"image", "box"} <= e.keys() for e in data):
        return [(e["image"], e["box"], e.get("roll")) for e in data]
    raise InvalidInputError(f"boxes file {path}: expected {{image: [[x0, y0, x1, y1], ...]}} or "
                            "[{\"image\": ..., \"box\": [...]}, ...]")


def _box_and_roll(entry) -> tuple:
    """A JSON mapping's box: [x0, y0, x1, y1], or {"box": [...], "roll": r}."""
    return (entry.get("box"), entry.get("roll")) if isinstance(entry, dict) else (entry, None)


def read_landmarks(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read a landmarks file into ``{image name: [(68, 2) float64 array, ...]}``; a malformed file raises
    InvalidInputError naming the entry."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"landmarks file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"landmarks file {path} is not readable JSON: {error}") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, list) for v in data.values()):
        raise InvalidInputError(f"landmarks file {path}: expected {{image: [[[x, y] × 68], ...], ...}}")
    return {str(image): [check_landmarks(face, f"{path}, {image}, face {k}") for k, face in enumerate(faces)]
            for image, faces in data.items()}


def check_landmarks(values, where: str) -> np.ndarray:
    """68 finite (x, y) points spanning a box, else InvalidInputError naming ``where``. Shape: -> (68, 2)."""
    try:
        points = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: landmarks must be 68 pairs of numbers") from None
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise InvalidInputError(f"{where}: landmarks must be 68 finite (x, y) pairs, got shape {points.shape}")
    if (np.ptp(points, axis=0) <= 0).any():
        raise InvalidInputError(f"{where}: the 68 landmarks do not span a box")
    return points


def landmark_box(points: np.ndarray) -> Box:
    """The tight box (x0, y0, x1, y1) of (68, 2) landmarks."""
    return (*(float(v) for v in points.min(axis=0)), *(float(v) for v in points.max(axis=0)))
