from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cprfa.align import FaceAligner
from cprfa.cli.main import main
from cprfa.cpr import onnx as cpr_onnx
from cprfa.cpr.onnx import FUSED_NAMES, OnnxStepNetworks, cache_folder
from cprfa.cpr.regressor import GROUPS, align_point_sets, load_aligner
from cprfa.dafi.onnx import OnnxNetwork
from cprfa.dafi.predict import DafiEstimator
from cprfa.dafi.refine import load_refiner
from cprfa.data.images import load_image
from cprfa.data.point_sets import synthetic_point_sets
from cprfa.errors import InvalidInputError
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import landmarks_3d

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
EXAMPLE_BOX = (178.0, 80.0, 262.0, 180.0)


def test_onnx_and_torch_agree_on_the_bundled_example():
    image = load_image(EXAMPLE)
    torch_estimator, onnx_estimator = DafiEstimator.from_file(), DafiEstimator.from_file(runtime="onnx")
    crop, box = torch_estimator.crop(image, EXAMPLE_BOX)
    crops = np.stack([crop, crop[:, ::-1]])  # a batch of two
    detail = torch_estimator.detail_crop(image, box)
    details = np.stack([detail, detail[:, ::-1]])  # the landmark refiner runs by torch in both
    expected, actual = torch_estimator.predict(crops, detail=details), onnx_estimator.predict(crops, detail=details)
    assert np.abs(actual.dafi - expected.dafi).max() < 1e-3
    assert np.abs(actual.foreground - expected.foreground).max() < 1e-3
    assert np.abs(actual.landmarks - expected.landmarks).max() < 0.05  # crop pixels
    assert (actual.mask != expected.mask).mean() < 1e-3
    face = FaceAligner(runtime="onnx").align(image, [EXAMPLE_BOX])[0]
    reference = FaceAligner().align(image, [EXAMPLE_BOX])[0]
    assert np.linalg.norm(face.landmarks_2d - reference.landmarks_2d, axis=1).max() < 0.5  # pixels
    with pytest.raises(InvalidInputError):
        DafiEstimator.from_file(runtime="tensorrt")


def test_export_onnx_writes_graphs_onnxruntime_runs(tmp_path, capsys):
    assert main(["export-onnx", "--out", str(tmp_path)]) == 0
    session = ort.InferenceSession(str(tmp_path / "hsunet.onnx"), providers=["CPUExecutionProvider"])
    size = DafiEstimator.from_file().input_size
    full, heatmaps = session.run(None, {"image": np.zeros((3, 3, size, size), np.float32)})
    assert full.shape == (3, 4, size, size) and heatmaps.shape[:2] == (3, 68)
    session = ort.InferenceSession(str(tmp_path / "refiner.onnx"), providers=["CPUExecutionProvider"])
    points = np.full((2, 68, 2), size, np.float32)
    (refined,) = session.run(None, {"image": np.zeros((2, 3, 2 * size, 2 * size), np.float32), "points": points})
    expected = load_refiner()(torch.zeros(2, 3, 2 * size, 2 * size), torch.from_numpy(points)).detach().numpy()
    assert refined.shape == (2, 68, 2) and np.abs(refined - expected).max() < 1e-3
    aligner = load_aligner()
    assert sorted(path.stem for path in (tmp_path / "cpr").glob("*.onnx")) == sorted(GROUPS)
    session = ort.InferenceSession(str(tmp_path / "cpr" / "scale.onnx"), providers=["CPUExecutionProvider"])
    inputs = [torch.rand(3, *aligner.channels.shape, aligner.channels.shape[1]), torch.rand(3, 256),
              torch.rand(3, 3, 68, 68), torch.rand(3, 256), torch.tensor([1.0, 0.0, 1.0])]
    feed = {name: value.numpy() for name, value in zip(FUSED_NAMES, inputs, strict=True)}
    for stage in (0, 4):  # each stage its own batch-norm statistics
        outputs = session.run(None, {"stage": np.array(stage), **feed})
        with torch.inference_mode():
            expected = aligner.step_networks("scale", stage, *inputs)
        for actual, wanted in zip(outputs, expected, strict=True):
            assert np.abs(actual - wanted.numpy()).max() < 1e-4
        assert not outputs[2][1].any()  # a face without a sparse source gets no sparse step


def test_onnx_and_torch_aligners_agree_on_synthetic_faces(face_model):
    aligner = load_aligner(model=face_model)
    sets = synthetic_point_sets(face_model, 8, 123)
    landmarks = landmarks_2d(face_model, sets.params)[..., :2].float()
    expected = [align_point_sets(aligner, sets.points, sets.detected, landmarks),
                align_point_sets(aligner, sets.points, sets.detected)]  # the sparse branch off
    aligner.runtime = OnnxStepNetworks(aligner)
    actual = [align_point_sets(aligner, sets.points, sets.detected, landmarks),
              align_point_sets(aligner, sets.points, sets.detected)]
    for got, wanted in zip(actual, expected, strict=True):
        truth = landmarks_3d(face_model, wanted)[..., :2]
        assert (torch.linalg.vector_norm(landmarks_3d(face_model, got)[..., :2] - truth, dim=-1).mean(dim=1)
                < 0.005 * wanted[:, 3] * 15).all()


def test_the_aligner_graphs_are_cached_checked_and_exported_again_when_bad(tmp_path, monkeypatch):
    monkeypatch.setenv(cpr_onnx.CACHE_VARIABLE, str(tmp_path))
    assert cache_folder() == tmp_path
    aligner = load_aligner().fused()
    inputs = [torch.rand(2, *aligner.channels.shape, aligner.channels.shape[1]), torch.rand(2, 256),
              torch.rand(2, 3, 68, 68), torch.rand(2, 256), torch.tensor([1.0, 1.0])]
    with torch.inference_mode():
        expected = aligner.step_networks("rotation_z", 1, *inputs)
    OnnxStepNetworks(aligner)
    graphs = {path.name.rsplit("-", 1)[1]: path for path in tmp_path.glob("cpr-*.onnx")}
    assert sorted(graphs) == sorted(f"{group}.onnx" for group in GROUPS)

    def no_export(*_args):
        raise AssertionError("exported although cached")

    with monkeypatch.context() as patch:  # a second aligner reads the cache
        patch.setattr(cpr_onnx, "export_group", no_export)
        cached = OnnxStepNetworks(aligner)
    for got, wanted in zip(cached("rotation_z", 1, *inputs), expected, strict=True):
        assert (got - wanted).abs().max() < 1e-4
    graphs["alpha.onnx"].write_bytes(b"not a graph")  # damaged
    graphs["scale.onnx"].write_bytes(graphs["rotation_z.onnx"].read_bytes())  # another group's, same shapes
    exported, export = [], cpr_onnx.export_group

    def counted_export(aligner, group, target):
        exported.append(group)
        export(aligner, group, target)

    monkeypatch.setattr(cpr_onnx, "export_group", counted_export)
    OnnxStepNetworks(aligner)
    assert sorted(exported) == ["alpha", "scale"]
    assert graphs["alpha.onnx"].stat().st_size > 10**6


def test_a_cache_folder_that_cannot_be_used_costs_only_the_export(tmp_path, monkeypatch):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(cpr_onnx.CACHE_VARIABLE, str(blocked / "cache"))
    aligner = load_aligner().fused()
    inputs = [torch.rand(1, *aligner.channels.shape, aligner.channels.shape[1]), torch.rand(1, 256),
              torch.rand(1, 3, 68, 68), torch.rand(1, 256), torch.ones(1)]
    with torch.inference_mode():
        expected = aligner.step_networks("scale", 0, *inputs)
    for got, wanted in zip(OnnxStepNetworks(aligner)("scale", 0, *inputs), expected, strict=True):
        assert (got - wanted).abs().max() < 1e-4
    assert blocked.read_text() == "not a folder" and list(tmp_path.iterdir()) == [blocked]


def test_the_default_runtime_runs_the_aligner_networks_with_onnxruntime():
    assert isinstance(FaceAligner().cpr.runtime, OnnxStepNetworks)
    assert FaceAligner(runtime="torch").cpr.runtime is None
    assert isinstance(FaceAligner(runtime="onnx").estimator.network, OnnxNetwork)
    with pytest.raises(InvalidInputError, match="runtime"):
        FaceAligner(runtime="tensorrt")
