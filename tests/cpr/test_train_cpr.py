import json

import numpy as np
import torch

from cprfa.cli.main import main
from cprfa.cpr.regressor import CPRAligner, CPRConfig, load_aligner
from cprfa.model.contour import landmarks_2d
from cprfa.model.face_model import default_face_model
from cprfa.train.cpr import TrainingBatches, face_photos, held_out, initialize_from
from cprfa.train.settings import CPRTrainSettings, starting_record


def test_train_cpr_writes_weights_and_record_and_resumes(small_build, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "cpr", "--out", str(out), "--real", str(small_build), "--splits", "helen_test",
            "--real-share", "0.5", "--real-holdout", "0.34", "--widths", "4", "8", "8", "8", "8", "--hidden", "16", "--epochs", "2",
            "--samples-per-epoch", "8", "--batch-size", "4", "--validation-faces", "4", "--workers", "0"]
    assert main(args) == 0
    assert {"cpr.pt", "record.json", "checkpoint.pt", "history.jsonl", "real_point_sets_full.pt"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "record.json").read_text())
    # one of the three photos, with its profiled view, is held out and validated on
    assert record["real_faces"] == 4 and record["real_validation_faces"] == 2
    assert len(record["history"]) == 2 and record["vertices"] == 512
    assert all(np.isfinite(entry["val_real_nme"]) for entry in record["history"])
    best = min(record["history"], key=lambda e: e["val_synthetic_nme"] + e["val_occluded_nme"] + e["val_real_nme"])
    assert record["shipped_epoch"] == best["epoch"]
    shipped, kept = load_aligner(out / "cpr.pt").state_dict(), load_aligner(out / "best.pt").state_dict()
    assert all(torch.equal(shipped[key], kept[key]) for key in kept)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[1]["lr"] < history[0]["lr"] and np.isfinite(history[-1]["train_loss"])
    assert np.isfinite(history[-1]["val_occluded_nme"]) and np.isfinite(history[-1]["val_occluded_no_landmarks_nme"])
    real = torch.load(out / "real_point_sets_full.pt", weights_only=True)
    n_vertices = default_face_model().n_vertices
    assert real["points"].shape == (6, n_vertices, 2) and real["detected"].any()
    assert real["landmarks"].shape == (6, 68, 2) and torch.isfinite(real["landmarks"]).all()
    aligner = load_aligner(out / "cpr.pt")
    assert aligner.config.hidden == 16 and aligner.config.rounds == 2 and aligner.config.fusion
    capsys.readouterr()
    assert main(args) == 0  # finished: rerunning resumes after the last epoch
    assert "resuming" in capsys.readouterr().out
    assert main([*args, "--lr", "0.5"]) == 1  # other settings: refused
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-2], "--workers", "-1"]) == 1
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--real", str(tmp_path)]) == 1  # not a build
    assert main([*args[:2], "--out", str(tmp_path / "x"), "--kappa", "0"]) == 1
    assert main([*args[:2], "--out", str(tmp_path / "x"), "--landmark-noise", "0.05", "0.01"]) == 1
    assert main([*args[:2], "--out", str(tmp_path / "x"), "--real-holdout", "1"]) == 1


def test_held_out_photos_keep_all_their_faces_and_views_together(tmp_path):
    names = {"a": ["1_1", "1_1@yaw+40", "1_2", "2_1", "2_1@yaw-60"], "b": ["1_1", "3_1"]}
    for split, faces in names.items():
        (tmp_path / split).mkdir()
        np.savez(tmp_path / split / "shard_0000.npz", names=np.array(faces))
    photos = face_photos(str(tmp_path), ("a", "b"))
    assert list(photos) == ["a/1", "a/1", "a/1", "a/2", "a/2", "b/1", "b/3"]
    for share in (0.25, 0.5, 0.75):
        held = held_out(photos, share)
        assert len(set(photos[held])) == round(share * 4)
        assert not set(photos[held]) & set(photos[~held])
    assert not held_out(photos, 0.0).any()
    assert np.array_equal(held_out(photos[::-1], 0.5), held_out(photos, 0.5)[::-1])  # by name, not order


def test_train_cpr_starts_from_round_one_weights(tmp_path, capsys):
    first = tmp_path / "first"
    common = ["--widths", "4", "8", "8", "8", "8", "--hidden", "16", "--epochs", "1", "--samples-per-epoch", "4",
              "--batch-size", "4", "--validation-faces", "4", "--workers", "0"]
    assert main(["train", "cpr", "--out", str(first), "--rounds", "1", "--no-fusion", *common]) == 0
    one = load_aligner(first / "cpr.pt")
    assert one.config.rounds == 1 and not one.config.fusion
    two = CPRAligner(default_face_model(), one.channels, CPRConfig(one.config.widths, 16, 3, rounds=2, fusion=True))
    initialize_from(two, str(first / "cpr.pt"))
    source, state = one.state_dict(), two.state_dict()
    for key, value in source.items():  # round one's regressors carried over
        assert torch.equal(state[key], value), key
    for stage in (3, 4, 5):  # round two's batch norms start as round one's last stage
        norm = "regressors.scale.norms.{}.0.running_var"
        assert torch.equal(state[norm.format(stage)], source[norm.format(2)])
    second = tmp_path / "second"
    assert main(["train", "cpr", "--out", str(second), "--init", str(first / "cpr.pt"), *common]) == 0
    record = json.loads((second / "record.json").read_text())
    assert record["settings"]["init"] == str(first / "cpr.pt")
    assert record["init_record"]["sha256"] == json.loads((first / "record.json").read_text())["sha256"]
    assert starting_record(str(first / "checkpoint.pt")) is None  # the folder's record is its cpr.pt's
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--init", str(tmp_path / "none.pt")]) == 1
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--warmup-steps", "-1"]) == 1
    capsys.readouterr()


def test_train_cpr_warmup_spares_the_initial_weights(tmp_path):
    first = tmp_path / "first"
    common = ["--widths", "4", "8", "8", "8", "8", "--hidden", "16", "--rounds", "1", "--no-fusion", "--epochs", "1",
              "--samples-per-epoch", "8", "--batch-size", "4", "--validation-faces", "4", "--workers", "0"]
    assert main(["train", "cpr", "--out", str(first), *common]) == 0
    moved = {}
    for warmup in (0, 1_000_000):
        out = tmp_path / f"warmup{warmup}"
        assert main(["train", "cpr", "--out", str(out), "--init", str(first / "cpr.pt"), "--lr", "0.01",
                     "--warmup-steps", str(warmup), *common]) == 0
        before, after = load_aligner(first / "cpr.pt").state_dict(), load_aligner(out / "cpr.pt").state_dict()
        moved[warmup] = max((after[key] - before[key]).abs().mean().item() for key in before if key.endswith(".weight")
                            and "norms" not in key)
    assert moved[0] > 3e-3  # ADAM's first steps: about the learning rate on every weight
    assert moved[1_000_000] < 1e-4  # the learning rate still rising from 10⁻⁸


def test_train_cpr_beta_only_trains_the_beta_networks_alone(tmp_path):
    first = tmp_path / "first"
    common = ["--widths", "4", "8", "8", "8", "8", "--hidden", "16", "--epochs", "1", "--samples-per-epoch", "8",
              "--batch-size", "4", "--validation-faces", "4", "--workers", "0"]
    assert main(["train", "cpr", "--out", str(first), *common]) == 0
    second = tmp_path / "second"
    assert main(["train", "cpr", "--out", str(second), "--init", str(first / "cpr.pt"), "--beta-only",
                 "--step-jitter", "1.0", "--lr", "0.01", *common]) == 0
    before, after = load_aligner(first / "cpr.pt").state_dict(), load_aligner(second / "cpr.pt").state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all("consistency" in key for key in changed)  # batch-norm statistics included
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--beta-only"]) == 1  # needs --init
    assert main(["train", "cpr", "--out", str(tmp_path / "x"), "--step-jitter", "-1"]) == 1


def test_synthetic_landmarks_carry_the_noise_asked_for():
    model = default_face_model()
    channels = torch.arange(48).reshape(3, 16)
    errors = []
    for noise in ((0.0, 0.0), (0.02, 0.02)):
        settings = CPRTrainSettings(out="unused", batch_size=8, landmarks_absent=0.0, landmark_noise=noise)
        inputs, params = TrainingBatches(model, channels, settings, None)[0]
        truth = landmarks_2d(model, params)[..., :2]
        given = inputs.landmark_given[:, 0]  # the first channel holds the 68 points in the 300-W order
        size = (truth.amax(dim=1) - truth.amin(dim=1)).prod(dim=1).sqrt()
        errors.append(float(((inputs.landmarks[:, 0] - truth).norm(dim=-1) / size[:, None])[given].mean()))
    assert errors[0] < 1e-4 and 0.015 < errors[1] < 0.04, errors
