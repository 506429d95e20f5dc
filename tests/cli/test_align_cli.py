import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cprfa.cli.main import LoadedImage, _align_batch, main, output_names, prefetched
from cprfa.data.images import load_image, save_image
from cprfa.detect.detector import MEDIAPIPE_WEIGHTS
from cprfa.errors import CprfaError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_align_writes_results_and_goes_on_past_bad_files(tmp_path, capsys):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "astronaut.jpg")
    (tmp_path / "broken.jpg").write_text("not an image")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nastronaut.jpg,178,80,262,180\nbroken.jpg,10,10,50,50\n")
    out = tmp_path / "out"
    code = main(["align", str(tmp_path / "broken.jpg"), str(tmp_path / "astronaut.jpg"), str(tmp_path / "none.jpg"),
                 "--boxes", str(boxes), "-o", str(out), "--mesh", "ply", "--dafi", "--pncc", "--depth"])
    assert code == 1  # two inputs failed, the good one was still aligned
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "none.jpg" in err
    result = json.loads((out / "astronaut_face0.json").read_text())
    assert set(result["pose"]) == {"pitch", "yaw", "roll", "scale", "translation", "rotation"}
    assert len(result["landmarks_2d"]) == 68 and len(result["landmarks_3d"][0]) == 3
    assert (out / "astronaut_overlay.png").is_file() and (out / "astronaut_face0.ply").is_file()
    assert (out / "astronaut_face0_dafi.png").is_file()
    pncc, depth = load_image(out / "astronaut_pncc.png"), load_image(out / "astronaut_depth.png")
    assert pncc.shape == depth.shape == load_image(tmp_path / "astronaut.jpg").shape
    face = depth.max(axis=-1) > 0
    assert ((pncc.max(axis=-1) > 0) == face).mean() > 0.999  # the same pixels (a PNCC code may be black)
    rows, cols = np.nonzero(face)  # the face, around its box
    assert 160 < cols.mean() < 280 and 60 < rows.mean() < 200
    with open(out / "summary.csv", newline="") as file:
        summary = list(csv.DictReader(file))
    assert sorted(row["status"] for row in summary) == ["error", "error", "ok"]
    aligned, failed = (next(row for row in summary if row["status"] == status) for status in ("ok", "error"))
    assert aligned["image"].endswith("astronaut.jpg") and aligned["face"] == "0"
    assert float(aligned["yaw"]) == pytest.approx(result["pose"]["yaw"], abs=0.01)
    points = np.array([[float(aligned[f"x{k}"]), float(aligned[f"y{k}"])] for k in range(68)])
    assert np.abs(points - np.array(result["landmarks_2d"])).max() <= 0.005
    assert all(value == "" for key, value in failed.items() if key not in ("image", "status"))


def test_align_without_boxes_detects_the_faces(tmp_path, capsys):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "astronaut.jpg")
    grey = tmp_path / "grey.png"
    save_image(grey, np.full((120, 160, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "astronaut.jpg"), "-o", str(out)]) == 0
    result = json.loads((out / "astronaut_face0.json").read_text())
    x0, y0, x1, y1 = result["box"]
    assert 0.5 < result["score"] <= 1.0 and abs((x0 + x1) / 2 - 220) < 15 and abs((y0 + y1) / 2 - 130) < 20
    assert (out / "astronaut_overlay.png").is_file()
    for overlay, written in (("jpg", ["astronaut_overlay.jpg"]), ("none", [])):
        assert main(["align", str(tmp_path / "astronaut.jpg"), "-o", str(tmp_path / overlay), "--overlay", overlay,
                     "--boxes", str(_box_file(tmp_path))]) == 0
        assert sorted(p.name for p in (tmp_path / overlay).glob("*_overlay.*")) == written
    assert main(["align", str(grey), "-o", str(out)]) == 1  # no face: reported, exit code 1
    assert "grey.png: no face found" in capsys.readouterr().err
    assert main(["align", str(grey), "-o", str(out), "--device", "tpu"]) == 1
    assert "--device tpu is not available" in capsys.readouterr().err


def _box_file(folder: Path) -> Path:
    boxes = folder / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nastronaut.jpg,178,80,262,180\n")
    return boxes


def test_align_small_faces(tmp_path, capsys):
    canvas = np.full((1800, 1800, 3), 128, np.uint8)  # the example's face about 5 % of the side
    canvas[300:812, 500:1012] = load_image(EXAMPLES / "astronaut.jpg")
    save_image(tmp_path / "far.png", canvas)
    assert main(["align", str(tmp_path / "far.png"), "-o", str(tmp_path / "out")]) == 1
    assert "far.png: no face found" in capsys.readouterr().err
    assert main(["align", str(tmp_path / "far.png"), "-o", str(tmp_path / "out"), "--small-faces"]) == 0
    face = json.loads((tmp_path / "out" / "far_face0.json").read_text())
    assert 650 < np.mean(np.array(face["landmarks_2d"])[:, 0]) < 800 and not (tmp_path / "out" / "far_face1.json").exists()
    assert main(["align", str(tmp_path / "far.png"), "-o", str(tmp_path / "min"), "--min-face", "60"]) == 0
    assert (tmp_path / "min" / "far_face0.json").is_file()
    assert main(["align", str(tmp_path / "far.png"), "-o", str(tmp_path / "min"), "--min-face", "10"]) == 1
    assert "min_face must be a number of pixels of at least 20" in capsys.readouterr().err


def test_align_without_tiles_looks_at_the_whole_photo_only(tmp_path, capsys):
    canvas = np.full((1000, 1000, 3), 128, np.uint8)  # the example's face about 9 % of the side: tiles find it
    canvas[200:712, 300:812] = load_image(EXAMPLES / "astronaut.jpg")
    save_image(tmp_path / "mid.png", canvas)
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "mid.png"), "-o", str(out), "--no-tiles"]) == 1
    assert "mid.png: no face found" in capsys.readouterr().err
    assert main(["align", str(tmp_path / "mid.png"), "-o", str(out)]) == 0
    assert main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--no-tiles"]) == 0
    assert json.loads((out / "astronaut_face0.json").read_text())["timings_ms"]["detect"] > 0
    assert main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--no-tiles", "--small-faces"]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_align_with_another_detector_and_threshold(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--detector-weights",
                 str(MEDIAPIPE_WEIGHTS), "--min-score", "0.6"])
    assert code == 0 and 0.6 <= json.loads((out / "astronaut_face0.json").read_text())["score"] <= 1.0
    assert main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--min-score", "1.5"]) == 1
    assert "--min-score must lie in (0, 1), got 1.5" in capsys.readouterr().err
    (tmp_path / "fake.pt").write_text("not weights")
    assert main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--detector-weights",
                 str(tmp_path / "fake.pt")]) == 1
    assert "fake" in capsys.readouterr().err


def test_align_says_what_the_mediapipe_landmark_source_needs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # as if not installed
    assert main(["align", str(EXAMPLES / "astronaut.jpg"), "-o", str(tmp_path), "--landmark-source",
                 "mediapipe"]) == 1
    assert 'pip install -e ".[mediapipe]"' in capsys.readouterr().err


def test_align_with_the_users_landmarks(tmp_path, capsys):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "astronaut.jpg")
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "astronaut.jpg"), "--boxes", str(EXAMPLES / "astronaut.boxes.csv"),
                 "-o", str(out)]) == 0
    points = json.loads((out / "astronaut_face0.json").read_text())["landmarks_2d"]
    landmarks = tmp_path / "landmarks.json"
    landmarks.write_text(json.dumps({"astronaut.jpg": [points]}))
    again = tmp_path / "again"
    assert main(["align", str(tmp_path / "astronaut.jpg"), "--landmarks", str(landmarks), "-o", str(again)]) == 0
    result = json.loads((again / "astronaut_face0.json").read_text())
    assert np.abs(np.array(result["landmarks_2d"]) - np.array(points)).mean() < 3.0
    landmarks.write_text(json.dumps({"astronaut.jpg": [points[:10]]}))
    assert main(["align", str(tmp_path / "astronaut.jpg"), "--landmarks", str(landmarks), "-o", str(again)]) == 1
    assert "68 finite" in capsys.readouterr().err


def test_align_batches_images_and_goes_on_past_a_bad_one(tmp_path, capsys):
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / name)
    (tmp_path / "c.jpg").write_text("not an image")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\na.jpg,178,80,262,180\nb.jpg,178,80,262,180\nc.jpg,178,80,262,180\n")
    inputs = [str(tmp_path / name) for name in ("a.jpg", "c.jpg", "b.jpg")]
    batched, single = tmp_path / "batched", tmp_path / "single"
    assert main(["align", *inputs, "--boxes", str(boxes), "-o", str(batched), "--batch-size", "3"]) == 1
    assert "c.jpg" in capsys.readouterr().err
    assert main(["align", *inputs, "--boxes", str(boxes), "-o", str(single), "--batch-size", "1", "--workers", "0"]) == 1
    for name in ("a", "b"):
        together = json.loads((batched / f"{name}_face0.json").read_text())["landmarks_2d"]
        alone = json.loads((single / f"{name}_face0.json").read_text())["landmarks_2d"]
        assert np.allclose(together, alone, atol=1e-3)
    assert main(["align", inputs[0], "-o", str(single), "--batch-size", "0"]) == 1


def test_an_image_the_batch_refuses_is_reported_alone():
    class Aligner:  # refuses the batch because of one image, as FaceAligner does for a bad box
        def align_batch(self, images, boxes, landmarks, rolls):
            raise CprfaError("batch refused")

        def align(self, image, boxes, landmarks, rolls):
            if image == "bad":
                raise CprfaError("bad image")
            return ["face"]

    outcomes = _align_batch(Aligner(), [LoadedImage("a", "good"), LoadedImage("b", "bad")])
    assert outcomes[0] == ["face"] and str(outcomes[1]) == "bad image"
    assert list(prefetched(str.upper, ["a", "b", "c"], workers=2, ahead=1)) == ["A", "B", "C"]


def test_align_with_any_roll_finds_an_upside_down_face(tmp_path):
    save_image(tmp_path / "upside_down.png", np.ascontiguousarray(np.rot90(load_image(EXAMPLES / "astronaut.jpg"), 2)))
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "upside_down.png"), "--any-roll", "--no-tiles", "-o", str(out)]) == 0
    result = json.loads((out / "upside_down_face0.json").read_text())
    assert abs(abs(result["crop_roll"]) - 180) < 20 and abs(abs(result["pose"]["roll"]) - 180) < 20


def test_align_takes_each_boxs_roll_from_the_boxes_file(tmp_path):
    image = load_image(EXAMPLES / "astronaut.jpg")
    save_image(tmp_path / "turned.png", np.ascontiguousarray(np.rot90(image)))  # a quarter turn: roll + 90°
    centre_x, centre_y = 80 + 180 / 2, image.shape[1] - (178 + 262) / 2  # the example's box centre, turned
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,x0,y0,x1,y1,roll\nturned.png,{centre_x - 42},{centre_y - 50},{centre_x + 42},"
                     f"{centre_y + 50},90\n")
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "turned.png"), "--boxes", str(boxes), "--no-flip", "-o", str(out)]) == 0
    result = json.loads((out / "turned_face0.json").read_text())
    assert result["crop_roll"] == 90.0 and abs(result["pose"]["roll"] - 90.0) < 15.0


def test_a_folder_keeps_same_named_photos_apart_reads_heic_and_leaves_hidden_files_out(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "photos" / folder / "photo.jpg")
    (tmp_path / "photos" / "a" / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS's companion: skipped
    (tmp_path / "photos" / ".cache").mkdir()
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "photos" / ".cache" / "photo.jpg")
    heif = importlib.util.find_spec("pillow_heif") is not None  # the heif extra (and the test extra)
    if heif:
        importlib.import_module("pillow_heif").register_heif_opener()  # to write an iPhone's photo
        Image.open(EXAMPLES / "astronaut.jpg").save(tmp_path / "photos" / "c.heic", quality=95)
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "photos"), "-o", str(out), "--overlay", "none"]) == 0
    first, second = (json.loads((out / folder / "photo_face0.json").read_text()) for folder in ("a", "b"))
    # the same photo twice: its two results, each under its own name (batch-mates move floats by 1e-5 px)
    np.testing.assert_allclose(first["landmarks_2d"], second["landmarks_2d"], atol=1e-3)
    with open(out / "summary.csv", newline="") as file:
        assert sorted(Path(row["image"]).parent.name for row in csv.DictReader(file)) == ["a", "b"] + ["photos"] * heif
    if heif:
        heic = json.loads((out / "c_face0.json").read_text())
        assert np.abs(np.array(heic["landmarks_2d"]) - np.array(first["landmarks_2d"])).mean() < 1.0


def test_output_names_keep_subfolders_and_part_files_that_would_share_one():
    found = [(Path("x/a/p.jpg"), Path("a/p.jpg")), (Path("x/b/p.jpg"), Path("b/p.jpg")),
             (Path("x/q.jpg"), Path("q.jpg")), (Path("x/q.png"), Path("q.png")),
             (Path("y/q.jpg"), Path("q.jpg"))]
    names = output_names(found + [found[0]])  # a file given twice keeps its one name
    assert names == {Path("x/a/p.jpg"): Path("a/p"), Path("x/b/p.jpg"): Path("b/p"), Path("x/q.jpg"): Path("q_jpg"),
                     Path("x/q.png"): Path("q_png"), Path("y/q.jpg"): Path("q_jpg_2")}


def test_skip_existing_goes_on_with_a_run_that_stopped(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    for name in ("one", "two", "three"):
        shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "photos" / f"{name}.jpg")
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "photos" / "one.jpg"), str(tmp_path / "photos" / "two.jpg"),
                 "-o", str(out), "--overlay", "none"]) == 0
    (out / "two_face0.json").write_text('{"pose": ')  # cut off as by a kill: aligned again
    capsys.readouterr()
    assert main(["align", str(tmp_path / "photos"), "-o", str(out), "--overlay", "none", "--skip-existing"]) == 0
    assert "one.jpg" not in capsys.readouterr().out  # only two and three were aligned
    with open(out / "summary.csv", newline="") as file:
        summary = {Path(row["image"]).stem: row for row in csv.DictReader(file)}
    assert sorted(summary) == ["one", "three", "two"] and {row["status"] for row in summary.values()} == {"ok"}
    assert summary["one"]["x30"] == summary["three"]["x30"] != ""  # the row from the JSON file as written
    assert json.loads((out / "two_face0.json").read_text())["pose"]
