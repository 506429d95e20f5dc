import json

import numpy as np

from cprfa.cli.main import main
from cprfa.dafi.predict import DafiEstimator


def test_train_dafi_writes_weights_and_record_and_resumes(small_build, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "dafi", "--data", str(small_build), "--splits", "helen_test", "--validation", str(small_build),
            "--out", str(out), "--input-size", "48", "--widths", "4", "8", "8", "16", "16", "--epochs", "2",
            "--batch-size", "4", "--workers", "0"]
    assert main(args) == 0
    assert {"hsunet.pt", "record.json", "checkpoint.pt", "history.jsonl", "val_001.png", "val_002.png"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "record.json").read_text())
    assert record["training_faces"] == 6 and record["final"]["epoch"] == 2  # 3 photos + 3 profiled views
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[1]["lr"] < history[0]["lr"] and np.isfinite(history[-1]["train_loss"])
    estimator = DafiEstimator.from_file(out / "hsunet.pt")
    assert estimator.input_size == 48
    capsys.readouterr()
    assert main(args) == 0  # finished: rerunning resumes after the last epoch and trains nothing more
    assert "resuming" in capsys.readouterr().out
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    assert main([*args[:-2], "--workers", "0", "--lr", "0.5"]) == 1  # other settings: refused, not mixed
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-2], "--workers", "-1"]) == 1
