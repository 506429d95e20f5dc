import json

import numpy as np
import torch

from cprfa.cli.main import main
from cprfa.dafi.predict import DafiEstimator, load_network
from cprfa.model.projection import landmarks_3d
from cprfa.train.dafi import calibration_offsets, load_faces


def test_train_dafi_writes_weights_and_record_and_resumes(small_build, tmp_path, capsys, monkeypatch):
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
    # calibrated at the end: the mean error of the landmark head on the training faces is removed, in both
    # flip modes (too few faces here to calibrate a vertex: MIN_CALIBRATION_FACES)
    assert record["calibration"]["zoom"] == estimator.zoom == 1.08  # measured on the crops cprfa align cuts
    faces = load_faces(small_build, ("helen_test",), 48, zoom=estimator.zoom)
    assert record["calibration"]["vertices_calibrated"] == 0 and not estimator.vertex_offset.any()
    assert estimator.network.landmark_offset.abs().max() > 0.1
    inside = ((faces.landmarks >= 0) & (faces.landmarks <= 48)).all(axis=-1)
    for flip in (False, True):
        estimator.flip = flip
        error = estimator.predict(faces.images).landmarks - faces.landmarks
        mean = np.nanmean(np.where(inside[..., None], error, np.nan), axis=0)
        assert np.nanmax(np.abs(mean)) < 0.02  # float16 storage
    capsys.readouterr()
    assert main(args) == 0  # finished: rerunning resumes after the last epoch and trains nothing more
    assert "resuming" in capsys.readouterr().out
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    assert main([*args[:-2], "--workers", "0", "--lr", "0.5"]) == 1  # other settings: refused, not mixed
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-2], "--workers", "-1"]) == 1
    # --init starts a new run from these weights; its record keeps how they were made
    tuned = tmp_path / "tuned"
    init_args = [*args[:args.index("--out")], "--out", str(tuned), *args[args.index("--out") + 2:]]
    init_args[init_args.index("--epochs") + 1] = "1"
    assert main([*init_args, "--init", str(out / "hsunet.pt"), "--lr", "1e-9"]) == 0
    (start, _), (after, _) = load_network(out / "hsunet.pt"), load_network(tuned / "hsunet.pt")
    for key, value in start.state_dict().items():
        # batch-norm statistics move regardless of lr; the landmark offset is measured anew after every run
        if value.is_floating_point() and "running" not in key and key != "landmark_offset":
            assert (after.state_dict()[key] - value).abs().max() < 1e-3, key
    assert json.loads((tuned / "record.json").read_text())["init_record"]["final"]["epoch"] == 2  # its run's
    (out / "hsunet.record.json").write_text('{"shipped": true}')  # a shipped file's record comes first
    assert main([*init_args, "--out", str(tmp_path / "again"), "--init", str(out / "hsunet.pt")]) == 0
    assert json.loads((tmp_path / "again" / "record.json").read_text())["init_record"] == {"shipped": True}
    assert main([*init_args, "--init", str(tmp_path / "missing.pt")]) == 1
    # --epochs 0 with --init only calibrates: the same network, the same offsets (same faces)
    calibrated = tmp_path / "calibrated"
    init_args[init_args.index("--epochs") + 1] = "0"
    assert main([*init_args, "--out", str(calibrated), "--init", str(out / "hsunet.pt")]) == 0
    again = load_network(calibrated / "hsunet.pt")[0].state_dict()
    for key, value in start.state_dict().items():
        assert torch.equal(again[key], value), key
    assert json.loads((calibrated / "record.json").read_text())["epochs"] == 0
    policy = tmp_path / "policy"  # calibrated on the training crops themselves: other offsets
    assert main([*init_args, "--out", str(policy), "--init", str(out / "hsunet.pt"), "--calibration-zoom", "1"]) == 0
    assert json.loads((policy / "record.json").read_text())["calibration"]["zoom"] == 1.0
    assert not torch.equal(load_network(policy / "hsunet.pt")[0].landmark_offset, start.landmark_offset)
    assert main([*init_args, "--out", str(policy), "--init", str(out / "hsunet.pt"), "--calibration-zoom", "3"]) == 1
    # --train-zoom: trained and validated on crops cut as cprfa align cuts them, calibrated on the same faces
    import cprfa.train.dafi as train_module

    zooms = []
    monkeypatch.setattr(train_module, "load_faces",
                        lambda *args, **kwargs: zooms.append(args[4]) or load_faces(*args, **kwargs))
    init_args[init_args.index("--epochs") + 1] = "1"
    assert main([*init_args, "--out", str(tmp_path / "zoomed"), "--init", str(out / "hsunet.pt"),
                 "--train-zoom", "1.08"]) == 0
    assert zooms == [1.08, 1.08]
    assert json.loads((tmp_path / "zoomed" / "record.json").read_text())["settings"]["train_zoom"] == 1.08
    assert main([*init_args, "--out", str(tmp_path / "zoomed"), "--train-zoom", "0"]) == 1
    assert main([*args[:args.index("--epochs") + 1], "0", *args[args.index("--epochs") + 2:]]) == 1  # no --init
    widths = init_args.index("--widths") + 1
    wider = [*init_args[:widths], "4", "8", "8", "16", "24", *init_args[widths + 5:]]
    assert main([*wider, "--out", str(tmp_path / "wide"), "--init", str(out / "hsunet.pt")]) == 0
    assert DafiEstimator.from_file(tmp_path / "wide" / "hsunet.pt").config.widths == (4, 8, 8, 16, 24)
    narrower = [*init_args[:widths], "4", "8", "8", "16", "8", *init_args[widths + 5:]]
    capsys.readouterr()
    assert main([*narrower, "--out", str(tmp_path / "narrow"), "--init", str(out / "hsunet.pt")]) == 1
    assert "cannot start" in capsys.readouterr().err


def test_calibration_measures_and_removes_consistent_errors(small_build, face_model, monkeypatch):
    """A stand-in for the network whose DAFI is the ground truth moved 2 px right (and its landmarks 1 px up):
    the calibration finds those offsets, and with them applied the mean errors vanish."""
    from cprfa.dafi.evaluate import observe
    from cprfa.dafi.network import HSUNet, HSUNetConfig
    from cprfa.dafi.predict import DafiPrediction
    from cprfa.data.augment import PNCC_SCALE

    faces = load_faces(small_build, ("helen_test",), 48)
    index = {image.tobytes(): k for k, image in enumerate(faces.images)}

    def shifted(self, crops, batch_size=32, detail=None):
        rows = [index[crop.tobytes()] for crop in crops]
        codes = np.roll(faces.pncc[rows].astype(np.float32) / PNCC_SCALE, 2, axis=2)
        mask = np.roll(faces.mask[rows], 2, axis=2)
        landmarks = faces.landmarks[rows] + np.float32([0, -1]) - self.landmark_offset[int(self.flip)].numpy()
        return DafiPrediction(codes, mask.astype(np.float32), mask, landmarks, np.ones(landmarks.shape[:2], np.float32))

    monkeypatch.setattr(DafiEstimator, "predict", shifted)
    config = HSUNetConfig(input_size=48, widths=(4, 8, 8, 16, 16))
    network = HSUNet(config)
    landmark_offset, vertex_offset = calibration_offsets(network, config, faces, model=face_model, min_faces=1)
    assert np.allclose(landmark_offset.numpy(), [0, -1], atol=1e-5)
    seen = vertex_offset[0].any(dim=-1)
    # (the shards' PNCC is resized to 48 px by nearest neighbour, which moves it by a fraction of a pixel too)
    assert seen.sum() > 500 and np.allclose(vertex_offset[0, seen].mean(dim=0).numpy(), [2, 0], atol=0.5)
    network.vertex_offset = vertex_offset
    total, count = 0.0, 0
    for batch in observe(DafiEstimator(network, config), faces, face_model):
        detected = batch.observed.detected[..., None]
        total = total + ((batch.observed.positions - batch.truth) * detected).sum(axis=0)
        count = count + detected.sum(axis=0)
    assert np.abs(total[seen.numpy()] / count[seen.numpy()]).max() < 1e-3


def test_zoomed_faces_are_the_crops_cut_smaller_about_their_centre(small_build, face_model):
    plain = load_faces(small_build, ("helen_test",), 48)
    zoomed = load_faces(small_build, ("helen_test",), 48, zoom=1.25)
    centre = 24.0
    assert np.allclose((plain.landmarks - centre) * 1.25 + centre, zoomed.landmarks, atol=1e-4)
    moved = landmarks_3d(face_model, torch.from_numpy(zoomed.params).double())[..., :2].numpy()
    expected = (landmarks_3d(face_model, torch.from_numpy(plain.params).double())[..., :2].numpy() - centre) * 1.25
    assert np.allclose(moved, expected + centre, atol=1e-3)
    assert zoomed.mask.mean() > plain.mask.mean()  # the face fills more of the crop
    assert zoomed.images.shape == plain.images.shape and zoomed.pncc.dtype == plain.pncc.dtype
