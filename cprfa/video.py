"""Align the faces of a video frame by frame, with temporal smoothing (``align_video``).

With ``track`` (the default), each face is followed as face trackers follow one: its box in a frame is the
tight box of its landmarks in the frame before, and the detector runs only to find faces, on a frame without
any and on every DETECT_EVERY-th frame (a detection that overlaps a followed face's box, IoU ≥ ``MIN_IOU``,
is left to it; a new one must be confirmed by the HS-U-Net, ``cprfa.align.is_confirmed``, before its fit), and a face whose
landmarks' box overlaps one already found in the frame is dropped (two boxes on one face). On the other frames a followed face's fit starts from its result in the frame before
(``FaceAligner.align(starts=...)``, with the methods whose on-line fit frees every parameter: STARTABLE),
which skips the CPR aligner; on the detector's frames the CPR aligner starts it afresh, so that a fit cannot drift
for long. A followed face ends where the HS-U-Net no longer recognises a face in its box; its
``score`` is None. The detector's box degrades as a face turns to profile and it misses some full profiles,
while the box of the last landmarks stays tight (README, "Videos"). The frames go through one at a time (the
faces of a frame together).

Without ``track``, frames go through ``FaceAligner.align_batch`` ``batch_size`` at a time (the detector finds
the faces of every frame; the frames of a batch share the network passes and fits), and faces are followed
from frame to frame by their box: a face takes the previous frame's face whose box overlaps it most (IoU ≥
``MIN_IOU``, each previous face used once). With ``smoothing`` s in [0, 1), a followed face's 2D and 3D landmarks, the
landmark head's points, mesh and pitch / yaw / roll become ``s · previous smoothed + (1 − s) · current`` —
an exponential moving average that removes frame-to-frame jitter at the cost of a lag of about s / (1 − s)
frames; 0 turns it off. A face seen for the first time, or after a frame without it, starts afresh.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.align import STARTABLE, FaceAligner, FaceResult, landmark_frame
from cprfa.data.boxes import landmark_box
from cprfa.detect.blazeface import box_iou
from cprfa.errors import ImageReadError, InvalidInputError
from cprfa.model.projection import euler_to_rotation

MIN_IOU = 0.3
DETECT_EVERY = 8  # while faces are followed, the detector looks for new ones on every DETECT_EVERY-th frame
DEFAULT_SMOOTHING = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class VideoFrame:
    """One frame: its index, time in seconds, the RGB image (H, W, 3) uint8, its faces (smoothed) and their
    ids (the same number for a face from frame to frame while it is followed; a new one for a new face)."""

    index: int
    seconds: float
    image: np.ndarray
    faces: list[FaceResult]
    face_ids: list[int]


def read_frames(path: str | Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, seconds, RGB frame) of every frame of a video file; ImageReadError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ImageReadError(f"{path}: not a readable video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield index, index / fps if fps > 0 else 0.0, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
        if index == 0:
            raise ImageReadError(f"{path}: the video has no readable frame")
    finally:
        capture.release()


def video_fps(path: str | Path, default: float = 25.0) -> float:
    """The frame rate a video file declares, or ``default``."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if fps and fps > 0 else default


def align_video(aligner: FaceAligner, path: str | Path, smoothing: float = DEFAULT_SMOOTHING,
                batch_size: int = 8, track: bool = True) -> Iterator[VideoFrame]:
    """Every frame of the video with its aligned faces (module docstring)."""
    if not 0.0 <= smoothing < 1.0:
        raise InvalidInputError(f"smoothing must lie in [0, 1), got {smoothing}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    frames = read_frames(path)
    if track:
        yield from _followed(aligner, frames, smoothing)
        return
    previous: list[FaceResult] = []
    previous_ids: list[int] = []
    new_ids = itertools.count()
    while chunk := list(itertools.islice(frames, batch_size)):
        aligned = aligner.align_batch([image for _, _, image in chunk], turn_unseen=False)
        for (index, seconds, image), results in zip(chunk, aligned, strict=True):
            faces = [face for face in results if face is not None]
            matches = _matches(faces, previous)
            ids = [next(new_ids) if match is None else previous_ids[match] for match in matches]
            faces = [_smoothed(face, previous[match], smoothing) if match is not None else face
                     for face, match in zip(faces, matches, strict=True)]
            previous, previous_ids = faces, ids
            yield VideoFrame(index, seconds, image, faces, ids)


def _followed(aligner: FaceAligner, frames, smoothing: float) -> Iterator[VideoFrame]:
    """The frames with their faces followed by the boxes of their last landmarks (module docstring)."""
    raw: list[FaceResult] = []  # the last frame's faces before smoothing: their landmarks give the next boxes
    shown: list[FaceResult] = []  # the same, smoothed
    ids: list[int] = []  # and their ids
    new_ids = itertools.count()
    for index, seconds, image in frames:
        boxes, rolls = [], []  # the followed faces', each turned upright as its roll asks (FaceAligner.align)
        for face in raw:
            box, roll = landmark_frame(face.landmarks_2d)
            boxes.append(box)
            rolls.append(roll)
        scores: list[float | None] = [None] * len(boxes)
        detecting = not raw or index % DETECT_EVERY == 0
        detect_seconds = 0.0
        if detecting:
            start = time.perf_counter()
            for detection in aligner.detect(image):
                if not _overlaps(detection.face_box, boxes):
                    boxes.append(detection.face_box)
                    rolls.append(aligner.detected_roll(image, detection))  # as ``align`` checks its own
                    scores.append(detection.score)
            detect_seconds = time.perf_counter() - start
        starts = None  # on the frames the detector looks at, the CPR aligner starts every fit afresh
        if aligner.method in STARTABLE and not detecting:
            starts = raw
        # the followed faces first, one entry each; then the detections the HS-U-Net confirms (the others unfitted)
        results = aligner.align(image, boxes, starts=starts, scores=scores, rolls=rolls) if boxes else []
        if detect_seconds and boxes:  # the detector ran outside ``align``: its time per box, as ``align`` gives it
            detect_ms = round(1000 * detect_seconds / len(boxes), 2)
            results = [None if face is None else dataclasses.replace(face, timings={**face.timings,
                                                                                    "detect": detect_ms})
                       for face in results]
        followed, raw, previous, previous_ids = len(raw), [], shown, ids
        shown, ids, found = [], [], []
        for k, face in enumerate(results):
            if face is None:
                continue
            box = landmark_box(face.landmarks_2d)
            if _overlaps(box, found):  # two boxes found one face
                continue
            found.append(box)
            raw.append(face)
            shown.append(_smoothed(face, previous[k], smoothing) if k < followed else face)
            ids.append(previous_ids[k] if k < followed else next(new_ids))
        yield VideoFrame(index, seconds, image, shown, ids)


def _overlaps(box, boxes: list) -> bool:
    """Whether ``box`` overlaps one of ``boxes`` (IoU ≥ MIN_IOU)."""
    return bool(boxes) and float(box_iou(torch.tensor([box]), torch.tensor(boxes)).max()) >= MIN_IOU


def _matches(faces: list[FaceResult], previous: list[FaceResult]) -> list[int | None]:
    """For each face, the index of the previous frame's face with the largest box overlap (IoU ≥ MIN_IOU), each
    used once."""
    if not faces or not previous:
        return [None] * len(faces)
    overlaps = box_iou(torch.tensor([face.box for face in faces]), torch.tensor([old.box for old in previous]))
    pairs = sorted(((float(overlaps[i, j]), i, j) for i in range(len(faces)) for j in range(len(previous))),
                   reverse=True)
    matched: list[int | None] = [None] * len(faces)
    used = set()
    for overlap, i, j in pairs:
        if overlap < MIN_IOU:
            break
        if matched[i] is None and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def _smoothed(face: FaceResult, previous: FaceResult, smoothing: float) -> FaceResult:
    def blend(old, new):
        return smoothing * np.asarray(old) + (1.0 - smoothing) * np.asarray(new)

    def blend_angle(old, new):  # along the shorter way round: 179° and −179° blend near 180°, not 0°
        angle = new + smoothing * ((old - new + 180.0) % 360.0 - 180.0)
        return float((angle + 180.0) % 360.0 - 180.0)

    pitch, yaw, roll = (blend_angle(getattr(previous, name), getattr(face, name)) for name in ("pitch", "yaw", "roll"))
    return dataclasses.replace(
        face, landmarks_2d=blend(previous.landmarks_2d, face.landmarks_2d),
        landmarks_3d=blend(previous.landmarks_3d, face.landmarks_3d),
        head_landmarks=blend(previous.head_landmarks, face.head_landmarks),
        vertices=blend(previous.vertices, face.vertices),
        pitch=pitch, yaw=yaw, roll=roll,
        rotation=euler_to_rotation(np.radians(np.array([[pitch, yaw, roll]])))[0])

