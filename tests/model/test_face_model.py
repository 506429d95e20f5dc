import hashlib

import numpy as np
import pytest

from cprfa.errors import ModelFileError
from cprfa.model.face_model import DEFAULT_MODEL_PATH, FaceModel
from cprfa.model.ict import build_ict_face_model, quads_to_triangles


def test_default_model_contents(face_model):
    m = face_model
    assert (m.n_vertices, m.n_identity, m.n_expression) == (9409, 100, 53)
    assert m.expression_names[0] == "browDown_L" and "jawOpen" in m.expression_names
    assert m.expression_prior == "blendshape"
    assert m.triangles.shape == (18540, 3) and m.triangles.max() < m.n_vertices
    assert len(np.unique(m.triangles)) == m.n_vertices  # no unreferenced vertex
    assert m.landmarks68.shape == (68,)
    assert len(m.contour_right) == len(m.contour_left) == 17
    assert "MIT" in m.source
    assert (DEFAULT_MODEL_PATH.parent / "LICENSE-ICT-FaceKit.txt").is_file()


def test_conventions_of_default_model(face_model):
    lm = face_model.mean[face_model.landmarks68]
    assert lm[0, 0] < 0 < lm[16, 0]  # landmark 0 on the subject's right: x < 0
    assert lm[8, 1] < lm[27, 1]  # chin below the nose bridge: y up
    assert lm[30, 2] == face_model.mean[:, 2].max() or lm[30, 2] > lm[0, 2] + 5  # nose tip out of the face: z
    a, b, c = (face_model.mean[face_model.triangles[:, k]] for k in range(3))
    assert (np.cross(b - a, c - a)[:, 2] > 0).mean() > 0.8  # counter-clockwise from the front


def test_side_and_pncc(face_model):
    x = face_model.mean[:, 0]
    assert np.all(face_model.side[x > 0.01] == 1) and np.all(face_model.side[x < -0.01] == -1)
    assert set(np.unique(face_model.side)) == {-1, 0, 1}
    pncc = face_model.pncc[face_model.face_area]
    assert np.allclose(pncc.min(axis=0), 0) and np.allclose(pncc.max(axis=0), 1)


def test_save_load_round_trip_and_determinism(face_model, tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    digest = face_model.save(first)
    assert face_model.save(second) == digest == hashlib.sha256(first.read_bytes()).hexdigest()
    loaded = FaceModel.load(first)
    assert np.array_equal(loaded.identity_basis, face_model.identity_basis)
    assert np.array_equal(loaded.triangles, face_model.triangles)
    assert loaded.expression_names == face_model.expression_names


def test_build_from_ict_reproduces_the_committed_model(shared_data, tmp_path):
    built = build_ict_face_model(shared_data / "ict-facekit" / "ict_face_model.npz")
    digest = built.save(tmp_path / "model.npz", compact=True)
    assert digest == hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()


def test_quads_to_triangles_drops_degenerate():
    quads = np.array([[0, 1, 2, 3], [4, 5, 6, 6]])
    assert quads_to_triangles(quads).tolist() == [[0, 1, 2], [4, 5, 6], [0, 2, 3]]


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a readable"), (b"PK\x03\x04garbage", "not a readable"), (b"hello", "not a readable")],
)
def test_corrupt_model_file(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        FaceModel.load(path)


def test_foreign_npz_and_missing_file(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a cprfa face model"):
        FaceModel.load(foreign)
    with pytest.raises(ModelFileError, match="not found"):
        FaceModel.load(tmp_path / "missing.npz")


def test_inconsistent_model_is_refused(face_model):
    fields = {
        "name": "broken", "mean": face_model.mean, "identity_basis": face_model.identity_basis[:2],
        "expression_basis": face_model.expression_basis[:1], "expression_names": ("a",),
        "expression_prior": "blendshape", "triangles": face_model.triangles, "landmarks68": face_model.landmarks68,
        "contour_right": face_model.contour_right, "contour_left": face_model.contour_left,
        "face_area": face_model.face_area,
    }
    FaceModel(**fields)  # consistent: accepted
    with pytest.raises(ModelFileError, match="vertex ids outside"):
        FaceModel(**{**fields, "triangles": face_model.triangles + 10})
    with pytest.raises(ModelFileError, match="NaN"):
        FaceModel(**{**fields, "mean": np.full_like(face_model.mean, np.nan)})
    with pytest.raises(ModelFileError, match="expression names"):
        FaceModel(**{**fields, "expression_names": ("a", "b")})
    with pytest.raises(ModelFileError, match="landmarks68"):
        FaceModel(**{**fields, "landmarks68": face_model.landmarks68[:5]})


def test_eyes_are_closed_and_the_mouth_open(face_model):
    from cprfa.model.ict import boundary_loops

    loops = boundary_loops(face_model.triangles)
    centres = [face_model.mean[loop].mean(axis=0) for loop in loops]
    mouth = face_model.mean[face_model.landmarks68[60:68]].mean(axis=0)
    assert len(loops) == 2  # the outer rim and the mouth
    assert min(np.linalg.norm(c - mouth) for c in centres) < 1.0
