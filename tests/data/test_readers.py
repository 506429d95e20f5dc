from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cprfa.data.readers import (
    from_one_based,
    iter_300w,
    landmark_box,
    read_300wlp_mat,
    read_pts,
    to_one_based,
    write_pts,
)
from cprfa.errors import InvalidInputError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HELEN_TEST = DATA / "300w" / "helen_test"
LP_SAMPLE = DATA / "300w-lp-sample" / "IBUG_image_008_1_0.mat"


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the data {path}")
    return path


def pts_text(rows: list[str], n_points: str = "68") -> str:
    return "version: 1\nn_points: " + n_points + "\n{\n" + "\n".join(rows) + "\n}\n"


GOOD_ROWS = [f"{10 + i}.5 {20 + 2 * i}.25" for i in range(68)]


def test_pts_convention_and_round_trip(tmp_path):
    path = tmp_path / "a.pts"
    path.write_text(pts_text(GOOD_ROWS).replace("\n", "\r\n"))
    points = read_pts(path)
    assert points.shape == (68, 2) and points.dtype == np.float64
    # 1-based centre 1.0 is pixel 0's centre, 0.5 in cprfa: x = value - 0.5.
    assert np.array_equal(points[0], [10.0, 19.75]) and np.array_equal(points[67], [77.0, 153.75])
    assert from_one_based([[1.0, 1.0]]).tolist() == [[0.5, 0.5]]
    assert np.array_equal(to_one_based(from_one_based(points)), points)
    out = write_pts(tmp_path / "sub" / "b.pts", points)
    assert np.allclose(read_pts(out), points, atol=1e-6)
    assert out.read_text().splitlines()[3] == "10.500000 20.250000"


@pytest.mark.parametrize("content, message", [
    ("n_points: 68\n{\n" + "\n".join(GOOD_ROWS) + "\n}\n", "not a .pts file"),
    (pts_text(GOOD_ROWS, n_points="67"), "n_points: 68"),
    (pts_text(GOOD_ROWS[:-1]), "got 67 lines"),
    (pts_text(GOOD_ROWS)[:-2], "no closing"),
    (pts_text(GOOD_ROWS[:-1] + ["1.0 abc"]), "landmark 68 must be two numbers"),
    (pts_text(["1.0 2.0 3.0"] + GOOD_ROWS[1:]), "landmark 1 must be two numbers"),
    (pts_text(GOOD_ROWS[:-1] + ["1.0 nan"]), "NaN"),
    ("", "not a .pts file"),
], ids=["no version", "n_points 67", "67 lines", "no brace", "text", "three values", "nan", "empty"])
def test_malformed_pts(tmp_path, content, message):
    path = tmp_path / "bad.pts"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message) as caught:
        read_pts(path)
    assert str(path) in str(caught.value)


def test_missing_pts_and_bad_points(tmp_path):
    with pytest.raises(InvalidInputError, match="not found.*nope.pts"):
        read_pts(tmp_path / "nope.pts")
    with pytest.raises(InvalidInputError, match="68 finite"):
        write_pts(tmp_path / "c.pts", np.zeros((67, 2)))
    assert landmark_box([[3, 4], [1, 8], [2, 5]]) == (1.0, 4.0, 3.0, 8.0)
    with pytest.raises(InvalidInputError):
        landmark_box(np.zeros((0, 2)))


def test_iter_300w_skips_bad_faces(tmp_path):
    split = tmp_path / "afw"
    split.mkdir()
    for name in ("b_1", "a_1", "c_1", "d_1"):
        Image.new("RGB", (200, 200)).save(split / f"{name}.jpg")
    write_pts(split / "b_1.pts", np.full((68, 2), 50.0))
    write_pts(split / "a_1.pts", np.full((68, 2), 60.0))
    (split / "c_1.pts").write_text("garbage")
    skipped = []
    faces = list(iter_300w(tmp_path, splits=("afw",), skipped=skipped))
    assert [(f.split, f.name) for f in faces] == [("afw", "a_1"), ("afw", "b_1")]
    assert faces[0].image == split / "a_1.jpg" and np.allclose(faces[0].landmarks, 60.0)
    assert not faces[0].landmarks.flags.writeable
    assert [(path.name, "c_1.pts" in reason or "d_1.pts" in reason) for path, reason in skipped] == [
        ("c_1.jpg", True), ("d_1.jpg", True)]
    with pytest.warns(UserWarning, match="skipping"):
        assert len(list(iter_300w(tmp_path, splits=("afw",)))) == 2
    with pytest.raises(InvalidInputError, match="helen_train"):
        list(iter_300w(tmp_path))


def test_real_300w_helen_test(tmp_path):
    helen = needs(HELEN_TEST)
    skipped = []
    faces = list(iter_300w(helen.parent, splits=("helen_test",), skipped=skipped))
    assert len(faces) == 330 and skipped == []
    assert [f.name for f in faces] == sorted(f.name for f in faces)
    for face in faces:
        with Image.open(face.image) as image:
            width, height = image.size
        x0, y0, x1, y1 = landmark_box(face.landmarks)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, face.name
    pts = faces[0].image.with_suffix(".pts")
    copy = write_pts(tmp_path / pts.name, read_pts(pts))
    assert np.allclose(read_pts(copy), faces[0].landmarks, atol=1e-9)
    original = [line.split() for line in pts.read_text().splitlines()[3:71]]
    assert np.allclose(np.array(original, dtype=float), read_pts(copy) + 0.5, atol=1e-9)


def write_mat(path, **fields):
    base = {"pt2d": np.arange(136, dtype=float).reshape(2, 68) + 1.0,
            "Pose_Para": np.array([[0.1, -0.2, 0.3, 10.0, 20.0, 30.0, 0.002]], dtype=np.float32),
            "Shape_Para": np.ones((199, 1)), "Exp_Para": np.zeros((29, 1))}
    base.update(fields)
    scipy.io.savemat(path, {k: v for k, v in base.items() if v is not None})
    return path


def test_synthetic_mat(tmp_path):
    lp = read_300wlp_mat(write_mat(tmp_path / "a.mat", roi=np.array([[1, 2, 30, 40]], dtype=np.int16)))
    assert lp.landmarks.shape == (68, 2) and lp.landmarks_3d is None
    assert np.array_equal(lp.landmarks[:, 0], np.arange(68) + 0.5)  # 1-based -> minus 0.5
    assert np.array_equal(lp.landmarks[:, 1], np.arange(68, 136) + 0.5)
    assert (lp.pitch, lp.yaw, lp.roll) == pytest.approx((0.1, -0.2, 0.3))
    assert lp.translation.tolist() == pytest.approx([10, 20, 30]) and lp.scale == pytest.approx(0.002)
    assert lp.shape_params.shape == (199,) and lp.expression_params.shape == (29,)
    assert lp.roi == (1.0, 2.0, 30.0, 40.0)
    assert not lp.landmarks.flags.writeable
    # AFLW2000-3D: pt2d holds AFLW's 21 points; the 68 landmarks come from pt3d_68.
    pt3d = np.vstack([np.full(68, 11.0), np.full(68, 21.0), np.full(68, -5.0)])
    lp = read_300wlp_mat(write_mat(tmp_path / "b.mat", pt2d=-np.ones((2, 21)), pt3d_68=pt3d))
    assert np.array_equal(lp.landmarks, np.tile([10.5, 20.5], (68, 1))) and lp.roi is None
    assert np.array_equal(lp.landmarks_3d, np.tile([10.5, 20.5, -5.0], (68, 1)))


@pytest.mark.parametrize("fields, message", [
    ({"Pose_Para": None}, "no 'Pose_Para'"),
    ({"pt2d": None}, "no 'pt2d'"),
    ({"pt2d": np.zeros((2, 21))}, "'pt2d' must be"),
    ({"Shape_Para": np.zeros((100, 1))}, "'Shape_Para' must be"),
    ({"Exp_Para": np.full((29, 1), np.nan)}, "NaN"),
    ({"roi": np.zeros((1, 3))}, "'roi' must be"),
    ({"Pose_Para": "text"}, "'Pose_Para' must be"),
], ids=["no pose", "no pt2d", "pt2d 21", "shape 100", "nan", "roi 3", "pose text"])
def test_malformed_mat(tmp_path, fields, message):
    path = write_mat(tmp_path / "bad.mat", **fields)
    with pytest.raises(InvalidInputError, match=message) as caught:
        read_300wlp_mat(path)
    assert str(path) in str(caught.value)


def test_unreadable_mat(tmp_path):
    text = tmp_path / "text.mat"
    text.write_text("not a mat file at all, just some text " * 10)
    with pytest.raises(InvalidInputError, match="cannot read .*text.mat"):
        read_300wlp_mat(text)
    with pytest.raises(InvalidInputError, match="not found.*nope.mat"):
        read_300wlp_mat(tmp_path / "nope.mat")


def test_real_300wlp_sample():
    lp = read_300wlp_mat(needs(LP_SAMPLE))
    with Image.open(LP_SAMPLE.with_suffix(".jpg")) as image:
        width, height = image.size
    x0, y0, x1, y1 = landmark_box(lp.landmarks)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert 0.2 * width < x1 - x0 < 0.9 * width and 0.2 * height < y1 - y0 < 0.9 * height
    assert np.linalg.norm(lp.landmarks.std(axis=0)) > 30  # 68 distinct points spread over a face
    assert all(abs(angle) < np.pi / 2 for angle in (lp.pitch, lp.yaw, lp.roll))
    assert lp.yaw == pytest.approx(-0.768, abs=1e-3) and lp.scale > 0
    assert lp.roi is not None and lp.landmarks_3d is None
