import json

import numpy as np
import torch

from cprfa.cli.main import main
from cprfa.cpr.regressor import load_aligner


def test_train_cpr_writes_weights_and_record_and_resumes(small_build, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "cpr", "--out", str(out), "--real", str(small_build), "--splits", "helen_test",
            "--real-share", "0.5", "--widths", "4", "8", "8", "8", "8", "--hidden", "16", "--epochs", "2",
            "--samples-per-epoch", "8", "--batch-size", "4", "--validation-faces", "4", "--workers", "0"]
    assert main(args) == 0
    assert {"cpr.pt", "record.json", "checkpoint.pt", "history.jsonl", "real_point_sets.pt"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "record.json").read_text())
    assert record["real_faces"] == 6 and record["final"]["epoch"] == 2 and record["vertices"] == 512
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[1]["lr"] < history[0]["lr"] and np.isfinite(history[-1]["train_loss"])
    assert np.isfinite(history[-1]["val_occluded_nme"])
    real = torch.load(out / "real_point_sets.pt", weights_only=True)
    assert real["observed"].shape == (6, 3, 256, 2) and real["detected"].any()
    aligner = load_aligner(out / "cpr.pt")
    assert aligner.config.hidden == 16
    capsys.readouterr()
    assert main(args) == 0  # finished: rerunning resumes after the last epoch
    assert "resuming" in capsys.readouterr().out
    assert main([*args, "--lr", "0.5"]) == 1  # other settings: refused
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-2], "--workers", "-1"]) == 1
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--real", str(tmp_path)]) == 1  # not a build
