from pathlib import Path

import numpy as np
import pytest

from cprfa.align import FaceAligner
from cprfa.cli.main import main
from cprfa.dafi.predict import DafiEstimator
from cprfa.data.images import load_image
from cprfa.errors import InvalidInputError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
EXAMPLE_BOX = (178.0, 80.0, 262.0, 180.0)


def test_onnx_and_torch_agree_on_the_bundled_example():
    image = load_image(EXAMPLE)
    torch_estimator, onnx_estimator = DafiEstimator.from_file(), DafiEstimator.from_file(runtime="onnx")
    crop, _ = torch_estimator.crop(image, EXAMPLE_BOX)
    crops = np.stack([crop, crop[:, ::-1]])  # a batch of two
    expected, actual = torch_estimator.predict(crops), onnx_estimator.predict(crops)
    assert np.abs(actual.dafi - expected.dafi).max() < 1e-3
    assert np.abs(actual.foreground - expected.foreground).max() < 1e-3
    assert np.abs(actual.landmarks - expected.landmarks).max() < 0.05  # crop pixels
    assert (actual.mask != expected.mask).mean() < 1e-3
    face = FaceAligner(runtime="onnx").align(image, [EXAMPLE_BOX])[0]
    reference = FaceAligner().align(image, [EXAMPLE_BOX])[0]
    assert np.linalg.norm(face.landmarks_2d - reference.landmarks_2d, axis=1).max() < 0.5  # pixels
    with pytest.raises(InvalidInputError):
        DafiEstimator.from_file(runtime="tensorrt")


def test_export_onnx_writes_a_graph_onnxruntime_runs(tmp_path, capsys):
    assert main(["export-onnx", "--out", str(tmp_path)]) == 0
    session = ort.InferenceSession(str(tmp_path / "hsunet.onnx"), providers=["CPUExecutionProvider"])
    size = DafiEstimator.from_file().input_size
    full, heatmaps = session.run(None, {"image": np.zeros((3, 3, size, size), np.float32)})
    assert full.shape == (3, 4, size, size) and heatmaps.shape[:2] == (3, 68)
