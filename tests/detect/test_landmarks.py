"""MediaPipe's face mesh as a 68-point landmark source (cprfa.detect.landmarks)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cprfa.detect.landmarks import MEDIAPIPE_68, MESH_POINTS, MediaPipeLandmarks, _mapping
from cprfa.errors import InvalidInputError, ModelFileError

EXAMPLE = Path(__file__).parents[2] / "examples" / "astronaut.jpg"


def test_the_shipped_map_was_fitted_on_the_training_photos():
    indices = _mapping(MEDIAPIPE_68)
    record = json.loads(MEDIAPIPE_68.read_text())
    assert indices.shape == (68,) and ((indices >= 0) & (indices < MESH_POINTS)).all()
    assert len(np.unique(indices)) >= 60  # nearly every landmark has its own mesh point
    assert "helen_test" not in record["splits"] and record["mesh_found"] > 0.95 * record["faces"]


@pytest.mark.parametrize("content", ['{"indices": [1, 2, 3]}', '{"indices": [' + ", ".join(["500"] * 68) + "]}",
                                     "not json"])
def test_a_bad_map_file_is_refused(tmp_path, content):
    path = tmp_path / "map.json"
    path.write_text(content)
    with pytest.raises(ModelFileError):
        _mapping(path)


def test_without_mediapipe_the_source_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # as if not installed
    with pytest.raises(InvalidInputError, match="mediapipe"):
        MediaPipeLandmarks()


def test_the_mesh_lands_on_the_face_and_the_aligner_fits_it():
    pytest.importorskip("mediapipe")
    from cprfa.align import FaceAligner
    from cprfa.data.images import load_image

    image = load_image(EXAMPLE)
    source = MediaPipeLandmarks()
    aligner = FaceAligner(landmark_source=source)
    result = aligner.align(image)[0]
    points = source(image, [result.box])[0]
    size = np.sqrt(np.prod(np.subtract(result.box[2:], result.box[:2])))
    assert points.shape == (68, 2) and np.isfinite(points).all()
    assert np.linalg.norm(points - result.head_landmarks, axis=1).mean() < 0.06 * size  # the same face
    assert np.linalg.norm(result.landmarks_2d - points, axis=1).mean() < 0.06 * size  # the fit follows them
    assert np.isnan(source(np.zeros((200, 200, 3), np.uint8), [(60, 60, 140, 140)])).all()  # no face: missing
