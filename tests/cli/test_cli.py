from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cprfa.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_render_example_writes_every_file(tmp_path, capsys):
    code = main(["render", str(EXAMPLES / "astronaut.jpg"), "--boxes", str(EXAMPLES / "astronaut.boxes.csv"),
                 "--yaw", "10", "--expression", "jawOpen=0.3", "--mesh", "ply", "-o", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"astronaut_overlay.png", "astronaut_face0_pncc.png", "astronaut_face0_depth.png",
                     "astronaut_face0.ply"}
    original = np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")).astype(int)
    overlay = np.asarray(Image.open(tmp_path / "astronaut_overlay.png")).astype(int)
    changed = np.abs(overlay - original).sum(-1) > 30
    rows, cols = np.nonzero(changed)
    # drawing stays around the face box 178, 80, 262, 180 (forehead, neck and axes reach a little further)
    assert changed.sum() > 2000 and rows.min() >= 40 and rows.max() <= 250 and cols.min() >= 140
    pncc = np.asarray(Image.open(tmp_path / "astronaut_face0_pncc.png"))
    face = pncc.any(-1)
    assert 0.02 < face.mean() < 0.1 and face[130, 220]


def test_bad_inputs_are_reported_and_skipped(tmp_path, capsys):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["render", str(fake), str(tmp_path / "missing.png"), str(EXAMPLES / "astronaut.jpg"),
                 str(empty), "--box", "178", "80", "262", "180", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "fake.jpg" in err and "missing.png" in err and "no images in folder" in err
    assert (tmp_path / "out" / "astronaut_overlay.png").is_file()  # the good image still went through


@pytest.mark.parametrize("args, message", [
    (["--box", "10", "10", "5", "20"], "x1 > x0"),
    (["--box", "178", "80", "262", "180", "--yaw", "200"], "yaw must lie"),
    (["--box", "178", "80", "262", "180", "--expression", "smile=1"], "unknown expression"),
    (["--box", "178", "80", "262", "180", "--expression", "jawOpen=2"], "must lie in [0, 1]"),
])
def test_out_of_range_options(tmp_path, capsys, args, message):
    code = main(["render", str(EXAMPLES / "astronaut.jpg"), *args, "-o", str(tmp_path)])
    assert code == 1 and message in capsys.readouterr().err


def test_boxes_file_without_this_image(tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"other.jpg": [[1, 2, 30, 40]]}')
    code = main(["render", str(EXAMPLES / "astronaut.jpg"), "--boxes", str(boxes), "-o", str(tmp_path)])
    assert code == 1 and "no face box" in capsys.readouterr().err


def test_usage_error_exit_code():
    with pytest.raises(SystemExit) as exit_info:
        main(["render"])
    assert exit_info.value.code == 2
