"""Videos: a short clip generated from the bundled example runs through alignment and the CLI."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

import cprfa.align
from cprfa.align import FaceAligner
from cprfa.cli.main import main
from cprfa.data.images import load_image
from cprfa.detect.detector import FaceDetector
from cprfa.errors import ImageReadError, InvalidInputError
from cprfa.video import align_video

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"


def write_clip(path: Path, frames: int = 4) -> None:
    """The example photo drifting right by 3 pixels a frame."""
    image = cv2.cvtColor(load_image(EXAMPLE), cv2.COLOR_RGB2BGR)
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    for k in range(frames):
        shift = np.float32([[1, 0, 3 * k], [0, 1, 0]])
        writer.write(cv2.warpAffine(image, shift, (width, height), borderMode=cv2.BORDER_REPLICATE))
    writer.release()


def aligner_detecting(monkeypatch, change) -> FaceAligner:
    """A FaceAligner whose detector gives ``change(detections)`` instead of the shipped detector's detections."""
    aligner = FaceAligner()
    aligner.detector = FaceDetector()
    detect = aligner.detector.detect
    monkeypatch.setattr(aligner.detector, "detect", lambda image: change(detect(image)))
    return aligner


def test_a_generated_clip_is_aligned_frame_by_frame_and_smoothed(tmp_path):
    clip = tmp_path / "clip.avi"
    write_clip(clip)
    aligner = FaceAligner()
    raw = list(align_video(aligner, clip, smoothing=0.0, track=False))  # batches of 8: the whole clip at once
    smooth = list(align_video(aligner, clip, smoothing=0.5, batch_size=3, track=False))  # a batch of 3, then 1
    one_by_one = list(align_video(aligner, clip, smoothing=0.0, batch_size=1, track=False))
    followed = list(align_video(aligner, clip, smoothing=0.5))  # the default: faces followed, smoothed too
    for frame, alone in zip(raw, one_by_one, strict=True):  # pixels: the networks and fits run batched
        # equal but for the last bits, which a batch's convolutions may round otherwise on some processors
        assert np.allclose(frame.faces[0].head_landmarks, alone.faces[0].head_landmarks, rtol=0, atol=1e-3)
        distance = np.linalg.norm(frame.faces[0].landmarks_2d - alone.faces[0].landmarks_2d, axis=1)
        # the fit's iterations grow those last bits (batch against one by one on 16 helen_test photos: up to
        # 0.4 px mean with the CPR weights before 4 December 2026, 0.65 px with these); the jaw's points (0-16)
        # lie on the silhouette, where they can move one to the next vertex of its contour line
        assert distance.mean() < 0.5 and distance[17:].max() < 1.5 and distance.max() < 3
    assert [frame.index for frame in raw] == [0, 1, 2, 3] and all(len(frame.faces) >= 1 for frame in raw)
    assert all(frame.face_ids[0] == 0 for frame in raw)  # followed by box overlap: the same face throughout
    centres = [frame.faces[0].landmarks_2d[:, 0].mean() for frame in raw]
    assert np.allclose(np.diff(centres), 3.0, atol=1.5)  # the faces follow the drift
    lagged = [frame.faces[0].landmarks_2d[:, 0].mean() for frame in smooth]
    assert lagged[0] == pytest.approx(centres[0]) and lagged[3] < centres[3] - 1.0  # smoothing lags a moving face
    followed_centres = [frame.faces[0].landmarks_2d[:, 0].mean() for frame in followed]
    assert followed_centres[3] < centres[3] - 1.0 and followed_centres[3] > centres[0] + 3.0
    with pytest.raises(InvalidInputError):
        next(align_video(aligner, clip, smoothing=1.0))
    with pytest.raises(InvalidInputError):
        next(align_video(aligner, clip, batch_size=0))
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(ImageReadError):
        next(align_video(aligner, tmp_path / "fake.mp4"))


def test_a_face_the_detector_loses_is_followed_from_its_last_landmarks(tmp_path, monkeypatch):
    clip = tmp_path / "clip.avi"
    write_clip(clip)
    aligner = FaceAligner()
    aligner.detector = FaceDetector()
    detect, calls = aligner.detector.detect, []

    def first_frame_only(image):  # the detector finds the face in the first frame and misses it afterwards
        calls.append(1)
        return detect(image) if len(calls) == 1 else []

    monkeypatch.setattr(aligner.detector, "detect", first_frame_only)
    tracked = list(align_video(aligner, clip, smoothing=0.0))
    assert [len(frame.faces) for frame in tracked] == [1, 1, 1, 1]
    assert [frame.face_ids for frame in tracked] == [[0], [0], [0], [0]]
    assert tracked[0].faces[0].score is not None and all(frame.faces[0].score is None for frame in tracked[1:])
    assert tracked[0].faces[0].timings["detect"] > 0  # the detector's time, although it ran outside ``align``
    assert all(frame.faces[0].timings["detect"] == 0 for frame in tracked[1:])  # followed: no detector
    centres = [frame.faces[0].landmarks_2d[:, 0].mean() for frame in tracked]
    assert np.allclose(np.diff(centres), 3.0, atol=1.5)  # followed as the face drifts
    assert len(calls) == 1  # while a face is followed, the detector only looks for new ones now and then
    calls.clear()
    lost = list(align_video(aligner, clip, smoothing=0.0, track=False))
    assert [len(frame.faces) for frame in lost] == [1, 0, 0, 0]

    def every_other_frame(image):
        calls.append(1)
        return detect(image) if len(calls) % 2 else []

    monkeypatch.setattr(aligner.detector, "detect", every_other_frame)
    calls.clear()  # found in frames 0 and 2, lost in between: a new id when it comes back
    assert [frame.face_ids for frame in align_video(aligner, clip, track=False)] == [[0], [], [1], []]


def test_two_boxes_on_one_face_give_one_face(tmp_path, monkeypatch):
    clip = tmp_path / "clip.avi"
    write_clip(clip, frames=2)

    def with_a_shifted_copy(found):  # a second detection 60 % of a face to the right: IoU < MIN_IOU with the first
        x0, y0, x1, y1 = found[0].face_box
        shift = 0.6 * (x1 - x0)
        return [*found, dataclasses.replace(found[0], face_box=(x0 + shift, y0, x1 + shift, y1))]

    aligner = aligner_detecting(monkeypatch, with_a_shifted_copy)
    assert [len(frame.faces) for frame in align_video(aligner, clip, smoothing=0.0)] == [1, 1]


def test_the_cli_writes_an_annotated_video_and_a_frame_table(tmp_path, capsys):
    clip = tmp_path / "clip.avi"
    write_clip(clip, frames=2)
    out = tmp_path / "out"
    assert main(["align", str(clip), "-o", str(out)]) == 0
    rows = (out / "clip_frames.csv").read_text().splitlines()
    assert rows[0].startswith("frame,seconds,face,score,pitch") and len(rows) == 3
    assert len(rows[1].split(",")) == 10 + 136
    capture = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    capture.release()
    assert main(["align", str(clip), "-o", str(out), "--smoothing", "1.5"]) == 1


def test_a_new_detection_the_hsunet_does_not_confirm_is_not_fitted(tmp_path, monkeypatch):
    clip = tmp_path / "clip.avi"
    write_clip(clip, frames=1)
    sleeve = (13.0, 326.0, 169.0, 479.0)  # the astronaut's orange sleeve and mission patch: no face

    def the_face_and_the_sleeve(found):
        return [found[0], dataclasses.replace(found[0], box=sleeve, face_box=sleeve, score=0.95)]

    aligner = aligner_detecting(monkeypatch, the_face_and_the_sleeve)
    monkeypatch.setattr(cprfa.align, "MIN_DETECTION", 0.0)  # the sleeve has too few vertices even for this
    fitted = []
    polish = cprfa.align.polish_fit
    monkeypatch.setattr(cprfa.align, "polish_fit", lambda model, points, *rest: fitted.append(len(points))
                        or polish(model, points, *rest))
    (frame,) = align_video(aligner, clip, smoothing=0.0)
    assert len(frame.faces) == 1 and fitted == [1]  # the sleeve went through the HS-U-Net, not the fit


def test_a_followed_face_is_cropped_upright_as_it_tilts(tmp_path):
    image = cv2.cvtColor(load_image(EXAMPLE), cv2.COLOR_RGB2BGR)
    clip, angles = tmp_path / "tilting.avi", range(0, 121, 20)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (512, 512))
    for angle in angles:  # the head turns counter-clockwise about its centre, 20° a frame
        turn = cv2.getRotationMatrix2D((220.0, 130.0), angle, 1.0)
        writer.write(cv2.warpAffine(image, turn, (512, 512), borderMode=cv2.BORDER_REFLECT))
    writer.release()
    frames = list(align_video(FaceAligner(), clip, smoothing=0.0))
    assert [len(frame.faces) for frame in frames] == [1] * len(angles)
    rolls = np.array([frame.faces[0].roll for frame in frames])
    assert np.abs(rolls - rolls[0] - np.array(angles)).max() < 10
    assert frames[-1].faces[0].crop_roll > 60  # followed by the roll of its landmarks in the frame before
