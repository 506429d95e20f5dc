from pathlib import Path

import pytest

from cprfa.cli.main import main
from cprfa.errors import CprfaError
from cprfa.eval import report


def test_bench_writes_a_report_of_the_end_to_end_benchmark(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["bench", "--quick", "--only", "speed", "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## End to end: speed per stage and memory" in text and "python benchmarks/bench_align.py --repeats 2" in text
    assert "| 16 |" in text and "peak resident memory" in text


def test_bench_reports_the_tool_end_to_end_on_real_photos(copy_300w, tmp_path):
    copy_300w(tmp_path, 3)  # three helen_test photos: a face each, found by the detector and aligned
    out = tmp_path / "report"
    assert main(["bench", "--quick", "--only", "end-to-end", "--data", str(tmp_path / "300w"), "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## End to end on the helen_test photos" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| the ")]
    assert [row[1].strip() for row in rows] == ["the detector", "the annotated landmark box"]
    for row in rows:
        assert row[2].strip() == "3 / 3" and 1.0 < float(row[3]) < 6.0 and float(row[6]) == 0.0


def test_bench_reports_speed_against_accuracy_for_each_option(copy_300w, tmp_path):
    copy_300w(tmp_path, 2)
    out = tmp_path / "report"
    assert main(["bench", "--quick", "--only", "tradeoffs", "--data", str(tmp_path / "300w"), "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith(("| (defaults", "| --"))]
    assert len(rows) == 8 and "--method cpr+pose" in {row[1].strip() for row in rows}
    for row in rows:
        assert 1.0 < float(row[2]) < 6.0 and float(row[4]) == 0.0 and float(row[5]) > 0


def test_bench_reports_tilted_faces(copy_300w, tmp_path):
    copy_300w(tmp_path, 3)
    out = tmp_path / "report"
    assert main(["bench", "--quick", "--only", "roll", "--data", str(tmp_path / "300w"), "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Tilted faces: photos turned in the image plane" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2:6] for line in text.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip().endswith("°")}
    assert set(rows) == {"0°", "90°"}
    for angle, cells in rows.items():  # faces found / NME / failures per way in; turned upright, all found
        assert [cell.split("/")[0].strip() for cell in cells[1::2]] == ["3", "3"], angle
        assert float(cells[3].split("/")[1]) < 6.0


def test_a_failing_benchmark_is_reported_and_the_others_run(tmp_path, monkeypatch):
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "bench_dafi.py").write_text("import sys\nprint('partial')\nsys.exit('no data here')\n")
    (scripts / "bench_align.py").write_text("print('| table |')\n")
    (scripts / "bench_cpr.py").write_text(
        "import sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--figures') + 1])\n"
        "(out / 'ablation_ced_plain.png').write_bytes(b'png')\nprint('ablation')\n")
    monkeypatch.setattr(report, "BENCHMARKS_DIR", scripts)
    monkeypatch.chdir(tmp_path)
    out = Path("out")  # relative to where cprfa bench runs, not to benchmarks/
    for _ in range(2):  # the second run's figures overwrite the first's, and are in its report too
        assert not report.run_report(out, only=("dafi", "ablation", "speed"), progress=lambda line: None)
        text = (out / "report.md").read_text()
        assert "**Failed** (exit code 1)" in text and "no data here" in text and "partial" in text
        assert "| table |" in text and "![ablation_ced_plain](ablation_ced_plain.png)" in text
    monkeypatch.setattr(report, "BENCHMARKS_DIR", tmp_path / "absent")
    with pytest.raises(CprfaError, match="source checkout"):
        report.run_report(out)
