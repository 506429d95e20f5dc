"""``FaceDetector``: find the faces in a photo with short-range BlazeFace (``Detection`` per face).

The network is MediaPipe's short-range BlazeFace, fine-tuned by ``cprfa train detector`` (cprfa.train.detector)
on the 300-W training faces and their profiled views: MediaPipe's own weights miss many faces turned beyond
60° of yaw. Short-range BlazeFace was trained on faces that fill a good part of its 128 × 128 input (selfie
range), so one pass over a whole photo misses the smaller faces: measured on 300-W training faces with
MediaPipe's weights, it finds nearly every face whose tight 68-landmark box spans 0.15 to 1.0 of its input side
(94 % at 0.15, 64 % at 0.12, 14 % at 0.10). The detector therefore looks at the photo at two scales, in one
batch: the whole image letterboxed (padded to a square, centred, no distortion; what MediaPipe itself does),
and square tiles of half the image's longer side laid over it with at least 50 % overlap (3 × 3 on a square
photo), which reach faces down to about 0.08 of the longer side; with ``small_faces``, also 5 × 5 tiles of a
third of it, down to about 0.05. With ``min_face`` (pixels), finer levels of tiles follow, each at most
``LEVEL_STEP`` times smaller than the one before, down to tiles whose side is ``min_face / FACE_REACH``: faces
of that many pixels whatever the photo's size (a group photo's), in as many tiles as that takes. The tiles are
left out when they would be under ``MIN_TILE_SIDE`` pixels.
Padding is black, as in MediaPipe's letterbox.

Each view is decoded and suppressed as MediaPipe does (score ≥ ``min_score``, weighted NMS at IoU 0.3). Tiles
enlarge parts of big faces, where BlazeFace sees faces in ears, chins and hands at middling scores, so a
tile's detection must score at least ``1 − TILE_DOUBT · (1 − min_score)`` (0.7 for MediaPipe's 0.5: on half
the 300-W training crops this cut the extra detections from 108 to 22 on 604 images, the letterbox alone
giving 14, and kept every face, also in 3 × 3 and 4 × 4 mosaics of them). A tile's detections whose box
crosses a tile edge inside the photo are dropped (the face is cut there; the letterbox or the neighbouring
tile sees it whole). Then all views' detections are merged in image coordinates by the same weighted NMS,
and a detection lying inside one at least twice its size is dropped (``_nested``: faces do not nest; it is
an eye or a mouth of the bigger face, seen in a tile). ``min_score`` defaults to the one recorded with the
weights: 0.9 for the fine-tuned ones (chosen on the training photos, cprfa.train.detector), 0.5 for
MediaPipe's.

BlazeFace finds faces within about 45° of upright (in-plane); beyond, ``any_roll`` looks at the photo turned
by a quarter, a half and three quarters too, in the same batch (four times the work), and maps what it finds
there back. Each detection carries the face's roll, from its keypoints (``Detection.roll``), which
``FaceAligner`` uses to crop the face upright.

Two boxes per face. ``box`` is BlazeFace's own, a square about the face in image pixels. ``face_box``
is what ``cprfa.align.FaceAligner.align`` wants, the tight box of the face's 68 landmarks (as 300-W's
annotations; of the face as it stands upright in the view that found it, about the same centre): ``box``
mapped by ``FaceBoxMap``, a centre offset in units of the box size and width / height ratios, fitted on the
300-W training images (afw, helen_train) by ``tools/fit_blazeface_box.py`` and stored in the weights' record
(the fine-tuning trains the boxes towards that map's inverse of the landmark boxes, so the map carries over).

Weights: ``assets/blazeface.pt`` (fine-tuned) and ``assets/blazeface_short.pt`` (MediaPipe's, converted by
``tools/convert_blazeface.py``, values unchanged: ``MEDIAPIPE_WEIGHTS``); both Apache-2.0, see
``assets/LICENSE-MediaPipe.txt``. Each is a ``torch.save`` dict read with ``weights_only=True`` whose sha256
must match the value in the ``.json`` of the same name beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.data.crop import face_roll
from cprfa.detect.blazeface import (
    INPUT_SIZE,
    IOU_THRESHOLD,
    BlazeFace,
    anchor_centres,
    box_iou,
    decode,
    to_input,
    weighted_nms,
)
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.weights import read_weights

WEIGHTS_FORMAT = "cprfa-blazeface"
WEIGHTS_VERSION = 1
MEDIAPIPE_WEIGHTS = Path(__file__).parent / "assets" / "blazeface_short.pt"  # as converted, values unchanged
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "blazeface.pt"  # fine-tuned by `cprfa train detector`
TILE_GRIDS = (3,)  # n × n tiles of side 2 / (n + 1) of the longer image side: 50 % overlap on a square photo
SMALL_FACE_GRID = 5  # with small_faces, tiles of a third of the longer side too
MIN_TILE_SIDE = 96  # pixels; smaller tiles are not used
FACE_REACH = 0.15  # a view finds faces whose landmark box spans this share of its side and more (docstring)
SMALLEST_FACE = 20  # pixels: the least min_face
LEVEL_STEP = 3.0  # with min_face, each level of tiles is at most this many times smaller than the one before
VIEW_BATCH = 64  # views through the network at a time
TILE_DOUBT = 0.6  # a tile detection needs score >= 1 - TILE_DOUBT * (1 - min_score)
MIN_IMAGE_SIDE = 8
DEFAULT_MIN_SCORE = 0.5  # MediaPipe's, for weights whose record names none
NESTED_AREA, NESTED_COVER = 2.0, 0.7  # a detection this much inside a bigger one is a part of it (_nested)
HALVE_FROM = 8  # photos reduced this much or more are halved first (faster than INTER_AREA alone)

Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in image pixels (origin at the top-left pixel's corner, x right, y down).

    box: BlazeFace's box (x0, y0, x1, y1); face_box: the tight 68-landmark box estimated from it, the box
    ``FaceAligner.align`` takes; score in (0, 1); keypoints (6, 2) float32: the subject's right eye, left eye,
    nose tip, mouth centre, right ear tragion, left ear tragion (cprfa.detect.blazeface.KEYPOINT_NAMES)."""

    box: Box
    face_box: Box
    score: float
    keypoints: np.ndarray

    @property
    def roll(self) -> float:
        """The face's in-plane angle in degrees (FaceResult.roll's sense) from its eye and mouth keypoints
        (cprfa.data.crop.face_roll)."""
        return face_roll(self.keypoints[0], self.keypoints[1], self.keypoints[3])


@dataclass(frozen=True)
class FaceBoxMap:
    """BlazeFace box -> tight 68-landmark box: with the box's centre (cx, cy) and size (w, h), the face box has
    centre (cx + offset_x·w, cy + offset_y·h) and size (width_ratio·w, height_ratio·h)."""

    offset_x: float = 0.0
    offset_y: float = 0.0
    width_ratio: float = 1.0
    height_ratio: float = 1.0

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """Shape: (N, 4) -> (N, 4), (x0, y0, x1, y1)."""
        size = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + size * boxes.new_tensor([self.offset_x, self.offset_y])
        half = size * boxes.new_tensor([self.width_ratio, self.height_ratio]) / 2
        return torch.cat([centre - half, centre + half], dim=1)

    @classmethod
    def from_dict(cls, values: dict) -> FaceBoxMap:
        mapped = cls(*(float(values[key]) for key in ("offset_x", "offset_y", "width_ratio", "height_ratio")))
        if not all(math.isfinite(v) for v in vars(mapped).values()) or min(mapped.width_ratio,
                                                                          mapped.height_ratio) <= 0:
            raise ValueError(f"face box map must be finite with positive ratios, got {mapped}")
        return mapped


def load_detector_network(path: str | Path | None = None) -> tuple[BlazeFace, dict]:
    """The BlazeFace network from a weights file (default: the shipped one) and the record beside it (the
    ``.json`` of the same name), after checking the file's sha256 against the record and its format."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    record_path = path.with_suffix(".json")
    content = read_weights(path, WEIGHTS_FORMAT, WEIGHTS_VERSION, "face detector", record_path, record_required=True)
    record = json.loads(record_path.read_text())  # read and checked by read_weights
    network = BlazeFace()
    try:
        network.load_state_dict({key: value.float() for key, value in content["state_dict"].items()})
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match the BlazeFace network ({error})") from None
    return network.eval(), record


class FaceDetector:
    """Faces in photos: ``FaceDetector().detect(image)`` -> [Detection, ...], best score first.

    weights: default the fine-tuned ones (``MEDIAPIPE_WEIGHTS`` for MediaPipe's); min_score: keep detections
    scoring at least this, in (0, 1) (default: the weights' record's, else MediaPipe's 0.5); max_faces: keep at
    most this many (None: all); tiles: also look at tiles of the photo (module docstring), False for the
    whole letterboxed image only, as MediaPipe; small_faces: also look at SMALL_FACE_GRID² tiles of a third of
    the photo's longer side, which find faces down to about 5 % of it (about 8 % without) in 3–4 times the
    time (README, "Face detection"); any_roll: also look at the photo turned by quarter turns, for faces beyond
    about 45° from upright, in four times the time; min_face: also look for faces down to this many pixels
    (their tight landmark box's side; at least SMALLEST_FACE), in finer tiles as the photo's size asks (module
    docstring), None: not; face_box_map: override the box mapping of the weights' record (needed for weights
    whose record has none)."""

    def __init__(self, weights: str | Path | None = None, min_score: float | None = None,
                 max_faces: int | None = None, tiles: bool = True, face_box_map: FaceBoxMap | None = None,
                 small_faces: bool = False, any_roll: bool = False, min_face: float | None = None):
        if min_face is not None and (not isinstance(min_face, int | float) or isinstance(min_face, bool)
                                     or not SMALLEST_FACE <= min_face < math.inf):
            raise InvalidInputError(f"min_face must be a number of pixels of at least {SMALLEST_FACE}, got "
                                    f"{min_face!r}")
        if min_face is not None and not tiles:
            raise InvalidInputError("min_face needs the tiles: it looks for small faces in finer ones")
        if min_score is not None and not _is_score(min_score):
            raise InvalidInputError(f"min_score must be a number in (0, 1), got {min_score!r}")
        if max_faces is not None and (isinstance(max_faces, bool) or not isinstance(max_faces, int)
                                      or max_faces < 1):
            raise InvalidInputError(f"max_faces must be a positive integer or None, got {max_faces!r}")
        self.network, self.record = load_detector_network(weights)
        if face_box_map is None:
            try:
                face_box_map = FaceBoxMap.from_dict(self.record["face_box"])
            except (KeyError, TypeError, ValueError) as error:
                raise ModelFileError(f"the record of {weights or DEFAULT_WEIGHTS} has no valid 'face_box' map "
                                     f"({error})") from None
        self.face_box_map = face_box_map
        if min_score is None:
            min_score = self.record.get("min_score", DEFAULT_MIN_SCORE)
            if not _is_score(min_score):
                raise ModelFileError(f"the record of {weights or DEFAULT_WEIGHTS} has an invalid min_score "
                                     f"{min_score!r}")
        self.min_score, self.max_faces = float(min_score), max_faces
        self.grids = (TILE_GRIDS + (SMALL_FACE_GRID,) if small_faces else TILE_GRIDS) if tiles else ()
        self.any_roll, self.min_face = any_roll, min_face
        self.turns = (0, 1, 2, 3) if any_roll else (0,)
        self.anchors = anchor_centres()

    @torch.inference_mode()
    def detect(self, image: np.ndarray, choose: Callable[[list[Detection]], int] | None = None,
               turns: tuple[int, ...] | None = None) -> list[Detection]:
        """The faces in ``image``, an (H, W, 3) uint8 RGB array; an empty list when there is none. ``turns``: the
        quarter turns (counter-clockwise) of the photo to look at, default (0,), or all four with ``any_roll``.
        With several, ``choose`` picks the face among overlapping detections of different turns (its index in
        the list it is given), by default the one of the photo as it is, else the best scoring
        (``_one_per_face``)."""
        turns = self.turns if turns is None else tuple(turns)
        if not turns or not set(turns) <= {0, 1, 2, 3}:
            raise InvalidInputError(f"turns must be quarter turns among 0, 1, 2, 3, got {turns!r}")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            description = (f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray)
                           else type(image).__name__)
            raise InvalidInputError(f"image must be an (H, W, 3) uint8 RGB array, got {description}")
        if min(image.shape[:2]) < MIN_IMAGE_SIDE:
            raise InvalidInputError(f"image must be at least {MIN_IMAGE_SIDE} pixels on a side, got {image.shape}")
        crops, views = [], []
        grids = tile_grids(max(image.shape[:2]), self.grids, self.min_face)
        for turn in turns:
            turned_crops, turned_views = _views(np.ascontiguousarray(np.rot90(image, turn)), grids)
            crops.append(turned_crops)
            views += [(turn, *view) for view in turned_views]
        single_view = len(views) == len(turns)
        crops = np.concatenate(crops)
        found = {turn: ([], [], []) for turn in turns}  # per turn: boxes, scores, keypoints and face box
        tile_score = 1 - TILE_DOUBT * (1 - self.min_score)
        size = image.shape[:2]
        for view, (turn, origin, scale, inner_edges, tile) in enumerate(views):
            row = view % VIEW_BATCH
            if row == 0:  # the network's outputs a batch of views at a time: bounded memory
                regressors, logits = self.network(to_input(torch.from_numpy(crops[view:view + VIEW_BATCH])))
                boxes, keypoints, scores = decode(regressors, logits, self.anchors)
            keep = scores[row] >= (tile_score if tile else self.min_score)
            if not keep.any():
                continue
            view_boxes, view_scores, view_keypoints = weighted_nms(boxes[row][keep], scores[row][keep],
                                                                   keypoints[row][keep], IOU_THRESHOLD)
            whole = _inside(view_boxes, inner_edges)
            view_boxes = view_boxes[whole] * scale.repeat(2) + origin.repeat(2)
            face_boxes = self.face_box_map(view_boxes)  # in the turned photo, where the face stands upright
            face_centres = (face_boxes[:, :2] + face_boxes[:, 2:]) / 2
            points = _unturned(torch.cat([view_keypoints[whole] * scale + origin, face_centres[:, None]], dim=1),
                               turn, size)
            corners = _unturned(view_boxes.reshape(-1, 2, 2), turn, size)
            # the face box's centre and size ride with the keypoints through the merging below
            found[turn][0].append(torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=1))
            found[turn][1].append(view_scores[whole])
            found[turn][2].append(torch.cat([points, (face_boxes[:, 2:] - face_boxes[:, :2])[:, None]], dim=1))
        merged = []
        for turn, parts in found.items():
            if parts[0]:
                turned = tuple(torch.cat(part) for part in parts)
                if not single_view:  # the views of one turn of the photo (its tiles) together
                    turned = weighted_nms(*turned, IOU_THRESHOLD)
                merged.append((*turned, torch.full((len(turned[0]),), float(turn))))
        if not merged:
            return []
        boxes, scores, points, turns = (torch.cat(parts) for parts in zip(*merged, strict=True))
        if len(merged) > 1:
            kept = _one_per_face(boxes, scores, points, turns, choose)
            boxes, scores, points = boxes[kept], scores[kept], points[kept]
        kept = ~_nested(boxes)
        boxes, scores, points = boxes[kept], scores[kept], points[kept]
        if self.max_faces is not None:
            boxes, scores, points = boxes[:self.max_faces], scores[:self.max_faces], points[:self.max_faces]
        return _detections(boxes, scores, points)


def _detections(boxes: torch.Tensor, scores: torch.Tensor, points: torch.Tensor) -> list[Detection]:
    """Detections of rows of boxes (N, 4), scores (N,) and points (N, 8, 2): the keypoints, then the face box's
    centre and size."""
    keypoints, face_centres, face_sizes = points[:, :-2], points[:, -2], points[:, -1]
    face_boxes = torch.cat([face_centres - face_sizes / 2, face_centres + face_sizes / 2], dim=1)
    return [Detection(box=_as_box(boxes[i]), face_box=_as_box(face_boxes[i]), score=float(scores[i]),
                      keypoints=keypoints[i].numpy().astype(np.float32)) for i in range(len(boxes))]


def _one_per_face(boxes: torch.Tensor, scores: torch.Tensor, points: torch.Tensor, turns: torch.Tensor,
                  choose: Callable[[list[Detection]], int] | None) -> torch.Tensor:
    """One detection per face among those of different quarter turns of the photo that overlap (IoU >
    IOU_THRESHOLD): ``choose``'s pick, or by default the one of the photo as it is, else the best scoring —
    BlazeFace also fires on faces lying sideways in a turned view, with the keypoints of an upright face there,
    so without a better judge the turned views only add the faces the photo as it is misses.
    Shape: boxes (N, 4), scores (N,), points (N, 8, 2), turns (N,) -> the kept rows (M,), best score first."""
    order = sorted(range(len(boxes)), key=lambda i: (bool(turns[i]), -float(scores[i])))
    overlaps = box_iou(boxes, boxes) > IOU_THRESHOLD
    free = torch.ones(len(boxes), dtype=torch.bool)
    kept = []
    for i in order:
        if not free[i]:
            continue
        group = [j for j in order if free[j] and overlaps[i, j]]
        free[group] = False
        pick = 0 if choose is None or len(group) == 1 else choose(_detections(boxes[group], scores[group],
                                                                              points[group]))
        kept.append(group[pick])
    kept = torch.tensor(kept, dtype=torch.long)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _unturned(points: torch.Tensor, turn: int, size: tuple[int, int]) -> torch.Tensor:
    """Points of the photo turned by ``turn`` quarter turns counter-clockwise (``np.rot90``) back in the photo
    of ``size`` (H, W). Shape: (..., 2) -> (..., 2)."""
    height, width = size
    x, y = points[..., 0], points[..., 1]
    if turn == 1:
        x, y = width - y, x
    elif turn == 2:
        x, y = width - x, height - y
    elif turn == 3:
        x, y = y, height - x
    return torch.stack([x, y], dim=-1)


def _is_score(value) -> bool:
    """Whether ``value`` is a number in (0, 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def _nested(boxes: torch.Tensor) -> torch.Tensor:
    """Which boxes lie inside another detection of at least NESTED_AREA times their area (NESTED_COVER of
    their own area covered): faces do not nest, so such a box is a part of the bigger face (an eye, a mouth, an
    ear seen in a tile). Shape: (N, 4) -> (N,) bool."""
    low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    intersection = (high - low).clamp(min=0).prod(dim=-1)  # (N, N)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=-1)
    inside = (intersection >= NESTED_COVER * area[:, None]) & (area[None, :] >= NESTED_AREA * area[:, None])
    return inside.any(dim=1)


def _as_box(values: torch.Tensor) -> Box:
    return tuple(float(v) for v in values)


def tile_grids(longest: int, grids: tuple[int, ...], min_face: float | None = None) -> tuple[int, ...]:
    """The n of the n × n grids of tiles for a photo of ``longest`` pixels on its longer side: ``grids`` and,
    with ``min_face``, finer ones, each level's tiles at most LEVEL_STEP times smaller than the level before,
    until the tiles' side is at most ``min_face / FACE_REACH`` (module docstring)."""
    grids = tuple(grids)
    if min_face is None:
        return grids
    side, wanted = 2 * longest / (max(grids, default=1) + 1), min_face / FACE_REACH
    if side <= wanted:
        return grids
    levels = math.ceil(math.log(side / wanted) / math.log(LEVEL_STEP) - 1e-9)  # evenly spaced in scale
    return grids + tuple(math.ceil(2 * longest / (side * (wanted / side) ** (level / levels)) - 1 - 1e-9)
                         for level in range(1, levels + 1))


def _views(image: np.ndarray, grids: tuple[int, ...]):
    """The network's inputs and, per view, how its relative coordinates map to the image: the letterboxed
    photo and, per n of ``grids`` (ascending), n × n tiles of side 2 / (n + 1) of its longer side.

    Returns crops (V, 128, 128, 3) uint8 and per view (origin (2,), scale (2,), inner_edges (4,) bool, tile):
    image point = origin + scale · view point (view points relative, 0 to 1 across the view); inner_edges says
    which of the view's left, top, right, bottom edges lie inside the photo (a face may be cut there); tile is
    False for the letterboxed whole image. The letterbox comes last."""
    height, width = image.shape[:2]
    longest = max(height, width)
    sides = [float(longest)]  # the letterbox
    sides += [2 * longest / (n + 1) for n in grids if 2 * longest / (n + 1) >= MIN_TILE_SIDE]
    crops, views = [], []
    source = image
    # A photo reduced HALVE_FROM times or more is first halved until less remains: INTER_LINEAR at half size
    # averages 2 × 2 pixels, the same box filter as INTER_AREA, several times faster on a 12-megapixel photo.
    while source.shape[1] * min(sides) >= HALVE_FROM * INPUT_SIZE * width:
        source = cv2.resize(source, (round(source.shape[1] / 2), round(source.shape[0] / 2)),
                            interpolation=cv2.INTER_LINEAR)
    for side in reversed(sides):  # smallest tiles first: each level is resized from the previous one
        k = INPUT_SIZE / side
        size = (max(1, round(width * k)), max(1, round(height * k)))
        interpolation = cv2.INTER_AREA if size[0] < source.shape[1] else cv2.INTER_LINEAR
        level = cv2.resize(source, size, interpolation=interpolation)
        source = level
        scale = torch.tensor([width / size[0], height / size[1]]) * INPUT_SIZE
        padded, pad = _pad(level)
        for top in _starts(size[1]):
            for left in _starts(size[0]):
                crops.append(padded[top + pad:top + pad + INPUT_SIZE, left + pad:left + pad + INPUT_SIZE])
                origin = torch.tensor([left * width / size[0], top * height / size[1]])
                inner = torch.tensor([left > 0, top > 0, left + INPUT_SIZE < size[0], top + INPUT_SIZE < size[1]])
                views.append((origin, scale, inner, side < longest))
    return np.ascontiguousarray(np.stack(crops)), views


def _starts(length: int) -> list[int]:
    """Offsets of 128-pixel windows covering ``length`` pixels with at least 50 % overlap; one centred window
    (reaching into the padding) when the length is at most 128."""
    if length <= INPUT_SIZE:
        return [(length - INPUT_SIZE) // 2]
    count = math.ceil((length - INPUT_SIZE) / (INPUT_SIZE / 2)) + 1
    return [round(v) for v in np.linspace(0, length - INPUT_SIZE, count)]


def _pad(level: np.ndarray) -> tuple[np.ndarray, int]:
    """The level image with a black border wide enough for every window; returns it and the border width."""
    pad = INPUT_SIZE // 2 + 1
    return cv2.copyMakeBorder(level, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)), pad


def _inside(boxes: torch.Tensor, inner_edges: torch.Tensor) -> torch.Tensor:
    """Which view boxes (N, 4), relative to the view, cross none of its inner edges. Shape: -> (N,) bool."""
    cut = torch.stack([boxes[:, 0] < 0, boxes[:, 1] < 0, boxes[:, 2] > 1, boxes[:, 3] > 1], dim=1)
    return ~(cut & inner_edges).any(dim=1)
