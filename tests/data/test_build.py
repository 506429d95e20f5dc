import json
from pathlib import Path

import numpy as np
import torch

from cprfa.cli.main import main
from cprfa.data.build import PNCC_SCALE
from cprfa.data.crop import (
    box_centre,
    crop_box,
    crop_image,
    eyes_and_mouth,
    face_roll,
    params_from_crop,
    params_to_crop,
    points_from_crop,
    points_to_crop,
    turn_points,
    upright_box,
    zoom_box,
)
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import ParamLayout, landmarks_3d


def test_crop_moves_image_points_and_params_consistently(face_model):
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 60] = 255  # pixel centre (60.5, 40.5)
    box = crop_box((40.0, 30.0, 80.0, 70.0))
    assert np.isclose(box[2] - box[0], 60) and np.isclose(box[3] - box[1], 60)
    crop = crop_image(image, box, 120)  # k = 2
    centre = points_to_crop(np.array([60.5, 40.5]), box, 120)
    assert crop[int(centre[1]), int(centre[0])].max() > 100
    layout = ParamLayout.of(face_model)
    params = layout.initial(1, dtype=torch.float64)
    params[0, :6] = torch.tensor([0.1, 0.3, 0.0, 2.0, 60.0, 50.0])
    moved = landmarks_3d(face_model, params_to_crop(params, box, 120))[..., :2]
    expected = points_to_crop(landmarks_3d(face_model, params)[..., :2], box, 120)
    assert torch.allclose(moved, expected)


def test_a_turned_crop_moves_image_points_and_params_consistently(face_model):
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 60] = 255  # pixel centre (60.5, 40.5)
    box, roll = crop_box((40.0, 30.0, 80.0, 70.0)), 35.0
    crop = crop_image(image, box, 120, roll=roll)
    centre = points_to_crop(np.array([60.5, 40.5]), box, 120, roll)
    assert crop[int(centre[1]), int(centre[0])].max() > 100
    assert np.allclose(points_from_crop(centre, box, 120, roll), [60.5, 40.5])
    layout = ParamLayout.of(face_model)
    params = layout.initial(1, dtype=torch.float64)
    params[0, :6] = torch.tensor([0.1, 0.3, 0.4, 2.0, 60.0, 50.0])
    in_crop = params_to_crop(params, box, 120, roll)
    assert np.isclose(float(in_crop[0, 2]), 0.4 - np.radians(roll))  # the crop takes the roll out
    moved = landmarks_3d(face_model, in_crop)[..., :2]
    assert torch.allclose(moved, points_to_crop(landmarks_3d(face_model, params)[..., :2], box, 120, roll))
    assert torch.allclose(params_from_crop(in_crop, box, 120, roll), params)


def test_the_roll_of_landmarks_and_their_upright_box(face_model):
    layout = ParamLayout.of(face_model)
    params = layout.initial(1, dtype=torch.float64)
    params[0, :6] = torch.tensor([0.0, 0.2, 0.0, 2.0, 60.0, 50.0])
    upright = landmarks_3d(face_model, params)[0, :, :2].numpy()
    assert abs(face_roll(*eyes_and_mouth(upright))) < 3
    centre = (60.0, 50.0)  # the translation: the roll turns the face about it
    for degrees in (30.0, 90.0, -150.0):
        turned = turn_points(upright, centre, degrees)
        params[0, 2] = np.radians(degrees)  # turn_points turns the landmarks as the roll does
        assert np.allclose(turned, landmarks_3d(face_model, params)[0, :, :2].numpy(), atol=1e-6)
        assert abs((face_roll(*eyes_and_mouth(turned)) - degrees + 180) % 360 - 180) < 3
        box = upright_box(turned, degrees)  # the upright face's box, where the turned face is
        tight = (*upright.min(axis=0), *upright.max(axis=0))
        assert np.allclose(np.subtract(box[2:], box[:2]), np.subtract(tight[2:], tight[:2]), atol=1e-6)
        assert np.allclose(turn_points(np.array(box_centre(box)), centre, -degrees), box_centre(tight), atol=1e-6)


def test_zoom_box_keeps_the_centre_and_divides_the_side():
    box = crop_box((40.0, 30.0, 80.0, 70.0))
    zoomed = zoom_box(box, 1.2)
    assert np.allclose([zoomed[0] + zoomed[2], zoomed[1] + zoomed[3]], [box[0] + box[2], box[1] + box[3]])
    assert np.isclose((zoomed[2] - zoomed[0]) * 1.2, box[2] - box[0])
    assert zoom_box(box, 1.0) == box


def test_data_build_on_real_faces_is_resumable(copy_300w, tmp_path, capsys):
    source, names = copy_300w(tmp_path, 3)
    name = names[-1]
    (source / "broken.jpg").write_text("not an image")
    (source / "broken.pts").write_text((source / f"{name}.pts").read_text())
    args = ["data", "build", "--data", str(tmp_path / "300w"), "--out", str(tmp_path / "out"),
            "--splits", "helen_test", "--size", "128"]
    assert main(args) == 0
    assert "3 faces kept (3 samples), 1 skipped" in capsys.readouterr().out
    shard = tmp_path / "out" / "helen_test" / "shard_0000.npz"
    with np.load(shard) as data:
        assert data["images"].shape == (3, 128, 128, 3) and data["pncc"].dtype == np.uint16
        assert (data["fit_nme"] < 3).all() and 0.2 < data["mask"].mean() < 0.8
        pncc = data["pncc"][data["mask"]] / PNCC_SCALE
        assert pncc.min() >= 0 and pncc.max() <= 1
        # brows, nose and outer lips lie on the rendered face (jaw points on its outline; the eyes and the inner
        # lips fall in the model's eye and mouth openings)
        points = data["landmarks"][:, [*range(17, 36), *range(48, 60)]].astype(int).clip(0, 127)
        on_face = [data["mask"][i][points[i, :, 1], points[i, :, 0]].mean() for i in range(3)]
        assert min(on_face) > 0.95
    stamp = shard.stat().st_mtime_ns
    assert main(args) == 0 and shard.stat().st_mtime_ns == stamp  # resumed: the finished shard is kept
    assert "1 skipped" in capsys.readouterr().out


def test_occluded_evaluation_set(copy_300w, tmp_path, capsys):
    copy_300w(tmp_path, 2)
    plain, occluded = tmp_path / "plain", tmp_path / "occluded"
    common = ["data", "build", "--data", str(tmp_path / "300w"), "--splits", "helen_test", "--size", "96"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(occluded), "--occlude", "0.2", "0.4"]) == 0
    with np.load(plain / "helen_test" / "shard_0000.npz") as a, np.load(occluded / "helen_test" / "shard_0000.npz") as b:
        assert np.array_equal(a["landmarks"], b["landmarks"]) and np.array_equal(a["mask"], b["mask"])
        assert ((b["occlusion"] >= 0.2) & (b["occlusion"] <= 0.401)).all()
        changed = (a["images"] != b["images"]).any(-1)
        assert not changed[~b["occluded"]].any() and changed[b["occluded"]].mean() > 0.5
    assert main([*common, "--out", str(tmp_path / "bad"), "--occlude", "0.5", "0.2"]) == 1
    assert "--occlude" in capsys.readouterr().err


def test_profiled_training_views_and_large_pose_set(copy_300w, tmp_path, face_model):
    copy_300w(tmp_path, 2)
    common = ["data", "build", "--data", str(tmp_path / "300w"), "--splits", "helen_test", "--size", "96"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "profiled"), "--profile", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "large"), "--large-pose"]) == 0
    shard = "helen_test/shard_0000.npz"
    with np.load(tmp_path / "plain" / shard) as plain, np.load(tmp_path / "profiled" / shard) as profiled:
        assert len(profiled["names"]) == 6 and profiled["profiled"].tolist() == [False] * 2 + [True] * 4
        for key in ("images", "pncc", "landmarks", "params"):
            assert np.array_equal(plain[key], profiled[key][:2])  # the photos themselves come first, unchanged
        turned = profiled["yaw"][2:]
        assert ((np.abs(turned) >= 20) & (np.abs(turned) <= 90.01)).all()
        assert (np.abs(profiled["pitch"]) <= 30.01).all()
        # turned further towards the side each face already shows
        assert (np.sign(turned) == np.sign(np.repeat(plain["yaw"], 2))).all()
        # the annotation travels with the face: the same offsets from the model's 2D landmarks as in the photo
        model_points = landmarks_2d(face_model, torch.from_numpy(profiled["params"]).double())[..., :2].numpy()
        offsets = profiled["landmarks"] - model_points
        assert np.abs(offsets[2:] - np.repeat(offsets[:2], 2, axis=0)).max() < 0.01
    with np.load(tmp_path / "large" / shard) as large:
        assert large["profiled"].all() and len(large["names"]) == 6
        buckets = np.digitize(np.abs(large["yaw"]), [30, 60])
        assert buckets.tolist() == [0, 1, 2, 0, 1, 2]
        expected = landmarks_3d(face_model, torch.from_numpy(large["params"]).double())[..., :2].numpy()
        assert np.abs(large["landmarks"] - expected).max() < 1e-3
    manifest = json.loads((tmp_path / "large" / "manifest.json").read_text())
    assert manifest["landmark_convention"] == "3d" and manifest["splits"]["helen_test"]["samples"] == 6
    assert main([*common, "--out", str(tmp_path / "bad"), "--profile", "1", "--large-pose"]) == 1


def test_each_split_gets_a_sample_index(small_build):
    lines = (small_build / "helen_test" / "samples.csv").read_text().splitlines()
    assert lines[0] == "name,yaw_deg,pitch_deg,profiled,fit_nme,occlusion" and len(lines) == 7
    assert [line.split(",")[3] for line in lines[1:]] == ["0"] * 3 + ["1"] * 3
    assert all("@yaw" in line for line in lines[4:])


def test_recorded_evaluation_sets_are_what_the_build_makes(copy_300w, tmp_path):
    """benchmarks/sets/*.csv record the evaluation sets; rebuilding their first faces gives the same rows."""
    copy_300w(tmp_path, 2)
    recorded = Path(__file__).resolve().parents[2] / "benchmarks" / "sets"
    common = ["data", "build", "--data", str(tmp_path / "300w"), "--splits", "helen_test", "--size", "64"]
    for name, extra, rows in (("plain", [], 2), ("occluded", ["--occlude", "0.2", "0.4"], 2),
                              ("large_pose", ["--large-pose"], 6)):
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0
        built = (tmp_path / name / "helen_test" / "samples.csv").read_text().splitlines()
        expected = (recorded / f"helen_test_{name}.csv").read_text().splitlines()[:rows + 1]
        if name == "occluded":  # coverage is measured on the crop, whose size differs here: compare the rest
            built, expected = ([line.rsplit(",", 1)[0] for line in lines] for lines in (built, expected))
        assert built == expected
