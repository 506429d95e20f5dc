"""The landmark refiner: patch sampling, the network, its weights, the estimator's use of it, its training."""

import json

import numpy as np
import pytest
import torch

import cprfa.dafi.predict as predict_module
from cprfa.cli.main import main
from cprfa.dafi.network import HSUNet, HSUNetConfig
from cprfa.dafi.predict import DafiEstimator, save_weights
from cprfa.dafi.refine import LandmarkRefiner, RefinerConfig, load_refiner, sample_patches, save_refiner
from cprfa.data.images import load_image
from cprfa.data.readers import iter_300w, landmark_box
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.eval.metrics import nme


def test_patches_sample_the_image_at_the_point_and_pitch():
    size = 40
    centres = torch.arange(size, dtype=torch.float64) + 0.5  # a pixel's value is its centre's coordinate
    image = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size),
                         torch.ones(size, size, dtype=torch.float64)])[None]
    points = torch.tensor([[[17.3, 21.8], [2.0, 20.0]]], dtype=torch.float64)
    patches = sample_patches(image, points, 8, (1.0, 3.0))
    assert patches.shape == (1, 2, 6, 8, 8)
    steps = torch.arange(8, dtype=torch.float64) - 3.5
    for pitch_index, pitch in enumerate((1.0, 3.0)):
        u, v, ones = patches[0, 0, 3 * pitch_index:3 * pitch_index + 3]
        assert torch.allclose(u, (17.3 + pitch * steps).expand(8, 8), atol=1e-9)  # bilinear: exact on a ramp
        assert torch.allclose(v, (21.8 + pitch * steps)[:, None].expand(8, 8), atol=1e-9)
        assert torch.equal(ones, torch.ones(8, 8, dtype=torch.float64))
    # outside the image the patch is zero: the second point's coarse patch reaches past the left edge
    assert (patches[0, 1, 5, :, 0] == 0).all() and (patches[0, 1, 5, :, -1] == 1).all()


def test_refiner_starts_as_the_identity_and_its_weights_round_trip(tmp_path):
    refiner = LandmarkRefiner(RefinerConfig(patch_size=16, widths=(4, 4, 8, 8), hidden=8)).eval()
    images = torch.rand(2, 3, 64, 64) - 0.5
    points = torch.rand(2, 68, 2) * 64
    assert torch.equal(refiner(images, points), points)  # the output layers start at zero
    torch.nn.init.normal_(refiner.output_weight, std=0.1)
    save_refiner(refiner, tmp_path / "refiner.pt")
    loaded = load_refiner(tmp_path / "refiner.pt")
    assert loaded.config == refiner.config
    assert torch.allclose(loaded(images, points), refiner(images, points), atol=0.05)  # float16 storage
    with torch.no_grad():
        for module in refiner.modules():  # batch-norm statistics of a trained network, not the identity
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 2)
                module.weight.normal_(1, 0.1)
    fused = refiner.fused()
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
    assert torch.allclose(fused(images, points), refiner(images, points), atol=1e-4)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a cprfa landmark refiner"):
        load_refiner(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not found"):
        load_refiner(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="multiple of 8"):
        RefinerConfig(patch_size=12)


def test_estimator_refines_only_with_detail_crops(monkeypatch):
    config = HSUNetConfig(32, (4, 4, 8, 8, 8))
    refiner = LandmarkRefiner(RefinerConfig(patch_size=8, widths=(4, 4, 4, 4), hidden=4))
    torch.nn.init.normal_(refiner.output_bias, std=1.0)
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    detail = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    network = HSUNet(config).eval()
    plain = DafiEstimator(network, config).predict(crops)
    for flip in (False, True):
        estimator = DafiEstimator(network, config, flip=flip, refiner=refiner)
        assert estimator.detail_size == 64
        refined = estimator.predict(crops, detail=detail)
        assert refined.landmarks.shape == (2, 68, 2) and np.array_equal(refined.dafi, estimator.predict(
            crops, detail=detail).dafi)
        monkeypatch.setattr(predict_module, "REFINER_CHUNK", 1)  # refined face by face: the same points
        assert np.allclose(estimator.predict(crops, detail=detail).landmarks, refined.landmarks, atol=1e-4)
        monkeypatch.undo()
        if not flip:  # the refiner's constant offset, in crop pixels at S (half the detail pixels), taken in the
            # share √(foreground at the head's point)
            offset = 4.0 * refiner.output_bias.detach().numpy() / 2
            trust = np.sqrt(plain.landmark_foreground)[..., None]
            assert np.allclose(refined.landmarks - plain.landmarks, trust * offset, atol=1e-4)
        with pytest.raises(InvalidInputError, match="needs detail crops"):
            estimator.predict(crops)
        with pytest.raises(InvalidInputError, match="detail must be"):
            estimator.predict(crops, detail=detail[:, :32, :32])
    with pytest.raises(InvalidInputError, match="needs detail crops"):
        DafiEstimator(network, config).predict(crops, detail=detail)
    with pytest.raises(InvalidInputError, match="no landmark refiner"):
        DafiEstimator(network, config).detail_crop(detail[0], (0, 0, 10, 10))


def test_shipped_refiner_improves_the_landmark_head_on_helen_test(shared_data):
    faces = list(iter_300w(shared_data / "300w", ("helen_test",)))[:40]
    refined, head = DafiEstimator.from_file(flip=True), DafiEstimator.from_file(flip=True, refine=False)
    crops, details, boxes = [], [], []
    for face in faces:
        crop, box = refined.crop(load_image(face.image), landmark_box(face.landmarks))
        crops.append(crop)
        details.append(refined.detail_crop(load_image(face.image), box))
        boxes.append(box)
    scale = np.array([(b[2] - b[0]) / refined.input_size for b in boxes])[:, None, None]
    origin = np.array([b[:2] for b in boxes])[:, None]
    truth = np.stack([face.landmarks for face in faces])
    errors = {}
    for name, estimator, detail in (("refined", refined, np.stack(details)), ("head", head, None)):
        points = estimator.predict(np.stack(crops), detail=detail).landmarks * scale + origin
        errors[name] = nme(points, truth)
    assert errors["refined"].mean() < 0.97 * errors["head"].mean()
    assert errors["refined"].max() < 8.0


def test_train_refiner_writes_weights_and_record_and_resumes(small_build, tmp_path, capsys):
    torch.manual_seed(0)
    config = HSUNetConfig(32, (4, 4, 8, 8, 8))
    save_weights(HSUNet(config), config, tmp_path / "hsunet.pt")  # untrained: its landmarks are far off
    out = tmp_path / "run"
    args = ["train", "refiner", "--data", str(small_build), "--splits", "helen_test", "--validation",
            str(small_build), "--out", str(out), "--dafi-weights", str(tmp_path / "hsunet.pt"), "--epochs", "6",
            "--batch-size", "3", "--workers", "0", "--lr", "0.03", "--patch-size", "8"]
    assert main(args) == 0
    assert {"refiner.pt", "record.json", "checkpoint.pt", "history.jsonl"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "record.json").read_text())
    assert record["training_faces"] == 6 and record["final"]["epoch"] == 6
    # it learned to move the untrained head's points towards the faces' landmarks
    assert record["final"]["val_refined_nme"] < 0.9 * record["final"]["val_head_nme"]
    assert load_refiner(out / "refiner.pt").config.patch_size == 8
    # the shipped refiner goes with the shipped HS-U-Net only; another network takes its own
    assert DafiEstimator.from_file().refiner is not None and DafiEstimator.from_file(refine=False).refiner is None
    assert DafiEstimator.from_file(tmp_path / "hsunet.pt").refiner is None
    assert DafiEstimator.from_file(tmp_path / "hsunet.pt", refiner_path=out / "refiner.pt").detail_size == 64
    capsys.readouterr()
    assert main(args) == 0  # finished: rerunning resumes after the last epoch and trains nothing more
    assert "resuming" in capsys.readouterr().out
    assert main([*args[:-2], "--patch-size", "16"]) == 1  # other settings: refused, not mixed
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--jitter", "-1"]) == 1
