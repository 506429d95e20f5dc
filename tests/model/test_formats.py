"""Tests for cprfa.model.formats: each test writes a small synthetic file in the real on-disk layout, loads it
and checks the numbers against what the file encodes after the documented conversion."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io

from cprfa.errors import ModelFileError
from cprfa.model.face_model import FaceModel
from cprfa.model.formats import (
    load_3ddfa_bfm,
    load_bfm2009,
    load_face_model,
    load_surrey_model,
    read_eos_landmark_mapping,
    read_eos_model_contours,
)

# A 9 x 9 grid bent into a dome, in cm: x in [-7, 7], y in [-9, 9], nose (z max) in the middle.
NX = NY = 9
_x, _y = np.meshgrid(np.linspace(-7.0, 7.0, NX), np.linspace(-9.0, 9.0, NY))
MEAN_CM = np.stack([_x.ravel(), _y.ravel(), 4.0 - 0.03 * (_x.ravel() ** 2 + _y.ravel() ** 2)], axis=1)
N = len(MEAN_CM)
_quads = [
    (j * NX + i, j * NX + i + 1, (j + 1) * NX + i + 1, (j + 1) * NX + i)
    for j in range(NY - 1)
    for i in range(NX - 1)
]
# Counter-clockwise seen from the front (normals towards +z), as cprfa wants them.
TRI = np.array([t for a, b, c, d in _quads for t in ((a, b, c), (a, c, d))])
LANDMARKS = np.random.default_rng(0).choice(N, 68, replace=False)


def _rng(seed=1):
    return np.random.default_rng(seed)


def _normals_z(model: FaceModel) -> np.ndarray:
    a, b, c = (model.mean[model.triangles[:, k]] for k in range(3))
    return np.cross(b - a, c - a)[:, 2]


def _same_triangles(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal as sets of triangles, each up to a rotation of its corners (which keeps the winding)."""

    def canonical(tri):
        rolled = np.stack([np.roll(tri, -k, axis=1) for k in range(3)], axis=1)
        first = np.argmin(rolled[:, :, 0], axis=1)
        return sorted(map(tuple, rolled[np.arange(len(tri)), first]))

    return canonical(np.asarray(got)) == canonical(np.asarray(want))


def _mapping_toml(mapping: dict[int, int]) -> str:
    """An eos TOML landmark mapping (share/ibug_to_sfm.txt layout)."""
    lines = [
        "# Mapping from the 68-point ibug annotations to the model (3DMM vertex indices).",
        "# This file uses TOML syntax.",
        "",
        "[landmark_mappings]",
    ]
    for k in range(1, 69):
        lines.append(
            f"{k:2d} = {mapping[k]:5d}  # point {k}" if k in mapping else f"            # {k} not defined"
        )
    lines += ["", "[contour_landmarks]", "right = [ 1,", "          2 ]", "left = [ 10,", "        11 ]", ""]
    return "\n".join(lines)


def _mapping_boost(mapping: dict[int, int]) -> str:
    """The older eos boost-info landmark mapping layout."""
    lines = ["; Mapping from the 68-point ibug annotations", "", "landmarkMappings ; ibug -> vertex", "{"]
    lines += [f"\t{k:2d} {v:5d} ; point {k}" for k, v in mapping.items()]
    lines += ["}", "contour_landmarks", "{", "\tright {", "\t\t1", "\t}", "}"]
    return "\n".join(lines)


# --- 3DDFA pickles ------------------------------------------------------------------------------------------


def _ddfa_dict(k_shp=4, k_exp=3, seed=1) -> dict:
    rng = _rng(seed)
    keypoints = np.stack([3 * LANDMARKS, 3 * LANDMARKS + 1, 3 * LANDMARKS + 2], axis=1).reshape(-1)
    return {
        "u": (MEAN_CM * 1e4).reshape(-1, 1).astype(np.float32),  # micrometres, x0 y0 z0 x1 ...
        "w_shp": rng.normal(0, 500, (3 * N, k_shp)).astype(np.float32),
        "w_exp": rng.normal(0, 300, (3 * N, k_exp)).astype(np.float32),
        "tri": TRI.T.astype(np.int32),  # 3DDFA_V2 stores (3, T), 0-based
        "keypoints": keypoints.astype(np.int64),
    }


def _write_pickle(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_3ddfa_layout_is_read_and_converted_to_cm(tmp_path, protocol):
    data = _ddfa_dict()
    model = load_3ddfa_bfm(_write_pickle(tmp_path / "bfm_noneck_v3.pkl", data, protocol))

    np.testing.assert_allclose(model.mean, data["u"].reshape(N, 3) * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(model.mean, MEAN_CM, rtol=1e-5, atol=1e-5)
    for k in range(4):
        np.testing.assert_allclose(
            model.identity_basis[k], data["w_shp"][:, k].reshape(N, 3) * 1e-4, rtol=1e-6
        )
    for k in range(3):
        np.testing.assert_allclose(
            model.expression_basis[k], data["w_exp"][:, k].reshape(N, 3) * 1e-4, rtol=1e-6
        )
    assert model.expression_prior == "gaussian" and len(model.expression_names) == 3
    np.testing.assert_array_equal(model.landmarks68, LANDMARKS)
    np.testing.assert_array_equal(model.contour_right, LANDMARKS[0:8])
    np.testing.assert_array_equal(model.contour_left, LANDMARKS[9:17])
    np.testing.assert_array_equal(model.triangles, TRI)
    np.testing.assert_array_equal(model.face_area, np.arange(N))
    assert "not N(0, 1)" in model.source and "micrometres -> cm" in model.source


def test_3ddfa_param_std_scales_the_bases(tmp_path):
    data = _ddfa_dict(k_shp=4, k_exp=3)
    path = _write_pickle(tmp_path / "bfm.pkl", data)
    std = np.arange(1, 20, dtype=np.float32) * 0.5  # 3DDFA layout: 12 pose values, 4 shape, 3 expression
    for given in (
        std,
        std[12:],
        _write_pickle(tmp_path / "param_mean_std.pkl", {"mean": std * 0, "std": std}),
        _write_pickle(tmp_path / "param_whitening.pkl", {"param_mean": std * 0, "param_std": std}),
    ):
        model = load_3ddfa_bfm(path, param_std=given)
        for k in range(4):
            np.testing.assert_allclose(
                model.identity_basis[k], data["w_shp"][:, k].reshape(N, 3) * 1e-4 * std[12 + k], rtol=1e-6
            )
        for k in range(3):
            np.testing.assert_allclose(
                model.expression_basis[k], data["w_exp"][:, k].reshape(N, 3) * 1e-4 * std[16 + k], rtol=1e-6
            )
        assert "scaled by param_std" in model.source

    # 3DDFA_V2's BFMModel keeps the first shape_dim / exp_dim columns; param_std then has to match those.
    model = load_3ddfa_bfm(path, shape_dim=2, exp_dim=1, param_std=np.array([2.0, 3.0, 5.0]))
    assert (model.n_identity, model.n_expression) == (2, 1)
    np.testing.assert_allclose(model.identity_basis[1], data["w_shp"][:, 1].reshape(N, 3) * 3e-4, rtol=1e-6)
    np.testing.assert_allclose(model.expression_basis[0], data["w_exp"][:, 0].reshape(N, 3) * 5e-4, rtol=1e-6)
    with pytest.raises(ModelFileError, match="param_std has 5 values"):
        load_3ddfa_bfm(path, param_std=np.ones(5))
    with pytest.raises(ModelFileError, match="positive"):
        load_3ddfa_bfm(path, param_std=-np.ones(7))
    with pytest.raises(ModelFileError, match="shape_dim=9"):
        load_3ddfa_bfm(path, shape_dim=9)


def test_3ddfa_separate_triangles_pickle_and_numpy1_pickles(tmp_path):
    data = _ddfa_dict()
    data["tri"] = np.zeros((3, 1), np.int32)  # stale triangles in the model pickle, replaced by tri.pkl
    raw = pickle.dumps(data, protocol=2)
    # A pickle written by NumPy 1 names numpy.core.*, which NumPy 2 renamed to numpy._core.
    old = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old != raw
    (tmp_path / "bfm_noneck_v3.pkl").write_bytes(old)
    # 3DDFA_V2's configs/tri.pkl is a bare (3, T) array; these triangles are clockwise seen from the front.
    tri_path = _write_pickle(tmp_path / "tri.pkl", TRI[:, [0, 2, 1]].T.copy(), protocol=2)

    model = load_3ddfa_bfm(tmp_path / "bfm_noneck_v3.pkl", triangles_path=tri_path)
    np.testing.assert_array_equal(model.triangles, TRI)  # clockwise triangles are flipped to face outward
    assert (_normals_z(model) > 0).all()
    np.testing.assert_allclose(model.mean, MEAN_CM, atol=1e-5)

    del data["tri"]
    path = _write_pickle(tmp_path / "no_tri.pkl", data)
    with pytest.raises(ModelFileError, match="triangles_path"):
        load_3ddfa_bfm(path)
    tri_dict = _write_pickle(tmp_path / "tri_dict.pkl", {"tri": TRI})  # (T, 3) in a dict works too
    np.testing.assert_array_equal(load_3ddfa_bfm(path, triangles_path=tri_dict).triangles, TRI)


class _Hostile:
    """Unpickling this runs a shell command, if the unpickler lets it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.target}",)


class _HostileEval:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return eval, (f"open({str(self.target)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("hostile", [_Hostile, _HostileEval])
def test_3ddfa_hostile_pickles_are_refused_without_running(tmp_path, hostile):
    marker = tmp_path / "pwned.txt"
    data = _ddfa_dict()
    data["u"] = hostile(marker)
    path = _write_pickle(tmp_path / "evil.pkl", data)
    with pytest.raises(
        ModelFileError, match=r"refused to unpickle the global '(posix|nt|os)\.system'|'builtins\.eval'"
    ) as error:
        load_3ddfa_bfm(path)
    assert str(path) in str(error.value)
    assert not marker.exists()

    # The side pickles go through the same unpickler.
    good = _write_pickle(tmp_path / "good.pkl", _ddfa_dict())
    with pytest.raises(ModelFileError, match="refused"):
        load_3ddfa_bfm(good, triangles_path=_write_pickle(tmp_path / "tri.pkl", hostile(marker)))
    with pytest.raises(ModelFileError, match="refused"):
        load_3ddfa_bfm(good, param_std=_write_pickle(tmp_path / "std.pkl", {"std": hostile(marker)}))
    assert not marker.exists()


def test_3ddfa_bad_files_raise_model_file_error(tmp_path):
    good = pickle.dumps(_ddfa_dict(), protocol=4)
    for cut in list(range(40)) + list(range(40, len(good), 997)):
        (tmp_path / "cut.pkl").write_bytes(good[:cut])
        with pytest.raises(ModelFileError, match="cut.pkl"):
            load_3ddfa_bfm(tmp_path / "cut.pkl")
    rng = _rng(5)
    for k in range(20):
        (tmp_path / "noise.pkl").write_bytes(rng.integers(0, 256, 200 + k, dtype=np.uint8).tobytes())
        with pytest.raises(ModelFileError, match="noise.pkl"):
            load_3ddfa_bfm(tmp_path / "noise.pkl")

    with pytest.raises(ModelFileError, match="not found"):
        load_3ddfa_bfm(tmp_path / "missing.pkl")
    with pytest.raises(ModelFileError, match="expected a pickled dict"):
        load_3ddfa_bfm(_write_pickle(tmp_path / "list.pkl", [1, 2, 3]))
    scipy.io.savemat(tmp_path / "other.pkl", {"u": np.zeros(3)})  # another format under a .pkl name
    with pytest.raises(ModelFileError, match="not a readable pickle"):
        load_3ddfa_bfm(tmp_path / "other.pkl")

    def broken(**changes):
        data = _ddfa_dict()
        data.update(changes)
        kept = {k: v for k, v in data.items() if v is not None}
        return _write_pickle(tmp_path / f"broken{len(list(tmp_path.glob('broken*')))}.pkl", kept)

    cases = {
        "lacks \\['w_exp'\\]": broken(w_exp=None),
        "w_shp must have shape": broken(w_shp=np.zeros((3 * N - 3, 4), np.float32)),
        "not a multiple of 3": broken(u=np.zeros((3 * N + 1, 1), np.float32)),
        "u contains NaN": broken(u=np.full((3 * N, 1), np.nan, np.float32)),
        "keypoints must be 204": broken(keypoints=np.arange(68)),
        "keypoints must be 204 indices": broken(keypoints=np.repeat(3 * LANDMARKS, 3)),  # x, x, x
        "keypoints must be whole": broken(keypoints=np.full(204, 0.5)),
        "look 1-based": broken(tri=(TRI + 1).T),
        "tri must have shape": broken(tri=np.zeros((4, 5), np.int32)),
        "micrometres": broken(u=MEAN_CM.reshape(-1, 1).astype(np.float32)),  # stored in cm, not um
        "w_exp contains NaN": broken(w_exp=np.full((3 * N, 2), np.nan, np.float32)),
    }
    for message, path in cases.items():
        with pytest.raises(ModelFileError, match=message) as error:
            load_3ddfa_bfm(path)
        assert str(path) in str(error.value)
    with pytest.raises(ModelFileError, match="contour_right holds vertex ids outside"):
        load_3ddfa_bfm(_write_pickle(tmp_path / "ok.pkl", _ddfa_dict()), contour_right=[0, N])


# --- Basel Face Model 2009 ----------------------------------------------------------------------------------


def _bfm_dict(k=5, seed=2) -> dict:
    rng = _rng(seed)
    pc, _ = np.linalg.qr(rng.normal(size=(3 * N, k)))  # orthonormal columns, as in the BFM
    return {
        "shapeMU": (MEAN_CM * 1e4).reshape(-1, 1).astype(np.float32),
        "shapePC": pc.astype(np.float32),
        "shapeEV": np.linspace(9e4, 1e4, k).reshape(-1, 1).astype(np.float32),  # standard deviations, um
        "tl": (TRI[:, [0, 2, 1]] + 1).astype(np.float64),  # 1-based; BFM winds front faces clockwise
        "texMU": np.zeros((3 * N, 1), np.float32),
    }


# Deep3DFaceRecon's BFM_exp_idx.mat layout: trimIndex, 1-based BFM ids of the cropped model, in crop order.
TRIM = np.array([j * NX + i for j in range(NY) for i in range(NX) if i < 7][::-1]) + 1


def _expected_cropped_triangles(trim0: np.ndarray) -> np.ndarray:
    new = {int(v): k for k, v in enumerate(trim0)}
    return np.array([[new[v] for v in t] for t in TRI if all(int(v) in new for v in t)])


def test_bfm2009_layout_is_read_and_converted_to_cm(tmp_path):
    bfm = _bfm_dict()
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", bfm)
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=LANDMARKS)

    np.testing.assert_allclose(model.mean, bfm["shapeMU"].reshape(N, 3) * 1e-4, rtol=1e-6)
    for k in range(5):
        want = bfm["shapePC"][:, k].reshape(N, 3) * bfm["shapeEV"][k, 0] * 1e-4
        np.testing.assert_allclose(model.identity_basis[k], want, rtol=1e-5, atol=1e-9)
    assert model.expression_basis.shape == (0, N, 3) and model.expression_prior == "gaussian"
    np.testing.assert_array_equal(model.triangles, TRI)
    assert (_normals_z(model) > 0).all()
    np.testing.assert_array_equal(model.landmarks68, LANDMARKS)
    np.testing.assert_array_equal(model.contour_left, LANDMARKS[9:17])

    with pytest.raises(ModelFileError, match="landmarks68"):
        load_bfm2009(tmp_path / "01_MorphableModel.mat")
    right = np.array([1, 2, 3])
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=LANDMARKS, contour_right=right)
    np.testing.assert_array_equal(model.contour_right, right)


def test_bfm2009_with_3ddfa_expressions_and_crop(tmp_path):
    rng = _rng(3)
    bfm = _bfm_dict()
    nt = len(TRIM)
    exp = {
        "mu_exp": rng.normal(0, 200, (3 * nt, 1)).astype(np.float32),
        "w_exp": rng.normal(0, 1e-2, (3 * nt, 3)).astype(np.float32),
        "sigma_exp": np.array([[3e4], [2e4], [1e4]], np.float32),
    }
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", bfm)
    scipy.io.savemat(tmp_path / "Model_Expression.mat", exp)
    scipy.io.savemat(tmp_path / "BFM_exp_idx.mat", {"trimIndex": TRIM.reshape(-1, 1).astype(np.float64)})
    trim0 = TRIM - 1
    crop_landmarks = np.arange(68) % nt

    model = load_bfm2009(
        tmp_path / "01_MorphableModel.mat",
        expression_path=tmp_path / "Model_Expression.mat",
        trim_path=tmp_path / "BFM_exp_idx.mat",
        landmarks68=crop_landmarks,
    )
    assert model.n_vertices == nt
    want_mean = (bfm["shapeMU"].reshape(N, 3)[trim0] + exp["mu_exp"].reshape(nt, 3)) * 1e-4
    np.testing.assert_allclose(model.mean, want_mean, rtol=1e-5)
    for k in range(5):
        want = bfm["shapePC"][:, k].reshape(N, 3)[trim0] * bfm["shapeEV"][k, 0] * 1e-4
        np.testing.assert_allclose(model.identity_basis[k], want, rtol=1e-5, atol=1e-9)
    for k in range(3):
        want = exp["w_exp"][:, k].reshape(nt, 3) * exp["sigma_exp"][k, 0] * 1e-4
        np.testing.assert_allclose(model.expression_basis[k], want, rtol=1e-5, atol=1e-9)
    assert model.expression_prior == "gaussian" and model.n_expression == 3
    assert _same_triangles(model.triangles, _expected_cropped_triangles(trim0))
    assert (_normals_z(model) > 0).all()
    np.testing.assert_array_equal(model.landmarks68, crop_landmarks)

    # 3DDFA's model_info.mat carries the 68 keypoints (1-based, into the crop) next to trimIndex.
    scipy.io.savemat(
        tmp_path / "model_info.mat",
        {
            "trimIndex": TRIM.reshape(-1, 1).astype(np.float64),
            "keypoints": (crop_landmarks + 1).reshape(1, -1).astype(float),
        },
    )
    model = load_bfm2009(
        tmp_path / "01_MorphableModel.mat",
        expression_path=tmp_path / "Model_Expression.mat",
        trim_path=tmp_path / "model_info.mat",
    )
    np.testing.assert_array_equal(model.landmarks68, crop_landmarks)

    # Without mu_exp the mean is the cropped BFM mean.
    del exp["mu_exp"]
    scipy.io.savemat(tmp_path / "Model_Expression.mat", exp)
    model = load_bfm2009(
        tmp_path / "01_MorphableModel.mat",
        expression_path=tmp_path / "Model_Expression.mat",
        trim_path=tmp_path / "model_info.mat",
    )
    np.testing.assert_allclose(model.mean, bfm["shapeMU"].reshape(N, 3)[trim0] * 1e-4, rtol=1e-6)

    with pytest.raises(ModelFileError, match="trim_path"):
        load_bfm2009(
            tmp_path / "01_MorphableModel.mat",
            expression_path=tmp_path / "Model_Expression.mat",
            landmarks68=LANDMARKS,
        )
    scipy.io.savemat(tmp_path / "short_idx.mat", {"trimIndex": TRIM[:-1].reshape(-1, 1)})
    with pytest.raises(ModelFileError, match="expected 3 x"):
        load_bfm2009(
            tmp_path / "01_MorphableModel.mat",
            expression_path=tmp_path / "Model_Expression.mat",
            trim_path=tmp_path / "short_idx.mat",
            landmarks68=crop_landmarks % (nt - 1),
        )
    scipy.io.savemat(tmp_path / "bad_idx.mat", {"trimIndex": np.array([[0], [1], [2]])})
    with pytest.raises(ModelFileError, match="bad_idx.mat.*trimIndex must hold distinct 1-based"):
        load_bfm2009(
            tmp_path / "01_MorphableModel.mat",
            trim_path=tmp_path / "bad_idx.mat",
            landmarks68=np.zeros(68, int),
        )


def test_bfm2009_landmarks_from_an_eos_mapping_file(tmp_path):
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", _bfm_dict())
    full = {k: int(v) for k, v in enumerate(LANDMARKS, start=1)}
    (tmp_path / "ibug_to_bfm_full.txt").write_text(_mapping_toml(full))
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=tmp_path / "ibug_to_bfm_full.txt")
    np.testing.assert_array_equal(model.landmarks68, LANDMARKS)
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=full)
    np.testing.assert_array_equal(model.landmarks68, LANDMARKS)

    # eos' ibug_to_bfm.txt maps only some points: the error names the missing ones.
    partial = {k: v for k, v in full.items() if k in (18, 20, 22, 23, 25, 27, 31, 34, 37, 40)}
    (tmp_path / "ibug_to_bfm.txt").write_text(_mapping_toml(partial))
    with pytest.raises(
        ModelFileError, match=r"ibug_to_bfm.txt.*lacks ibug points 1-17, 19, 21, 24, 26, 28-30"
    ):
        load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=tmp_path / "ibug_to_bfm.txt")
    with pytest.raises(ModelFileError, match="outside"):
        load_bfm2009(tmp_path / "01_MorphableModel.mat", landmarks68=np.full(68, N))


def test_bfm2009_bad_files_raise_model_file_error(tmp_path):
    scipy.io.savemat(tmp_path / "good.mat", _bfm_dict())
    good = (tmp_path / "good.mat").read_bytes()
    for cut in list(range(0, 300, 7)) + list(range(300, len(good), 1501)):
        (tmp_path / "cut.mat").write_bytes(good[:cut])
        with pytest.raises(ModelFileError, match="cut.mat"):
            load_bfm2009(tmp_path / "cut.mat", landmarks68=LANDMARKS)
    rng = _rng(6)
    noisy = bytearray(good)
    noisy[200:260] = rng.integers(0, 256, 60, dtype=np.uint8).tobytes()
    (tmp_path / "noisy.mat").write_bytes(bytes(noisy))
    try:
        load_bfm2009(tmp_path / "noisy.mat", landmarks68=LANDMARKS)
    except ModelFileError as error:
        assert "noisy.mat" in str(error)
    _write_pickle(tmp_path / "pickle.mat", _ddfa_dict())
    with pytest.raises(ModelFileError, match="not a readable MATLAB"):
        load_bfm2009(tmp_path / "pickle.mat", landmarks68=LANDMARKS)
    with pytest.raises(ModelFileError, match="not found"):
        load_bfm2009(tmp_path / "missing.mat", landmarks68=LANDMARKS)

    def broken(**changes):
        bfm = _bfm_dict()
        bfm.update(changes)
        path = tmp_path / f"broken{len(list(tmp_path.glob('broken*')))}.mat"
        scipy.io.savemat(path, {k: v for k, v in bfm.items() if v is not None})
        return path

    cases = {
        "lacks \\['tl'\\]": broken(tl=None),
        "shapePC must have shape": broken(shapePC=np.zeros((3 * N - 3, 5), np.float32)),
        "shapeEV must hold 5 positive": broken(shapeEV=np.ones((4, 1))),
        "shapeEV contains NaN": broken(shapeEV=np.full((5, 1), np.nan)),
        "shapeMU contains NaN": broken(shapeMU=np.full((3 * N, 1), np.inf, np.float32)),
        "tl hold vertex ids outside": broken(tl=TRI.astype(float)),  # 0-based where 1-based is expected
        "micrometres": broken(shapeMU=(MEAN_CM * 1e-4).reshape(-1, 1)),
    }
    for message, path in cases.items():
        with pytest.raises(ModelFileError, match=message) as error:
            load_bfm2009(path, landmarks68=LANDMARKS)
        assert str(path) in str(error.value)
    scipy.io.savemat(tmp_path / "exp.mat", {"w_exp": np.zeros((3 * N, 2)), "sigma_exp": np.array([[1.0]])})
    with pytest.raises(ModelFileError, match="exp.mat.*sigma_exp must hold 2 positive"):
        load_bfm2009(tmp_path / "good.mat", expression_path=tmp_path / "exp.mat", landmarks68=LANDMARKS)


# --- Surrey Face Model / eos --------------------------------------------------------------------------------


def _eigen(matrix) -> bytes:
    """eos' Eigen cerealisation: int32 rows, int32 cols, float32 data in column-major order."""
    matrix = np.asarray(matrix, np.float32)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    return struct.pack("<ii", *matrix.shape) + matrix.astype("<f4").tobytes(order="F")


def _triangle_list(tri) -> bytes:
    tri = np.asarray(tri, "<i4").reshape(-1, 3)
    return struct.pack("<Q", len(tri)) + tri.tobytes()


def _pca(mean, basis, eigenvalues, tri) -> bytes:
    return _eigen(mean) + _eigen(basis) + _eigen(eigenvalues) + _triangle_list(tri)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


EMPTY_PCA = (
    _eigen(np.zeros((0, 1))) + _eigen(np.zeros((0, 0))) + _eigen(np.zeros((0, 1))) + _triangle_list([])
)


def _sfm_shape(k=4, seed=4):
    rng = _rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(3 * N, k)))
    return {
        "mean": (MEAN_CM * 10).reshape(-1),
        "basis": basis,
        "eigenvalues": np.linspace(400.0, 25.0, k),
        "tri": TRI,
    }


def _sfm_archive(version=4, shape=None, expression=None, landmarks=None, n_texcoords=N) -> bytes:
    """A cereal binary archive of eos::morphablemodel::MorphableModel, as eos::morphablemodel::save_model
    writes it (class version first, then the fields that version serialises)."""
    shape = shape or _sfm_shape()
    out = struct.pack("<I", version) + _pca(shape["mean"], shape["basis"], shape["eigenvalues"], shape["tri"])
    out += EMPTY_PCA  # shape-only model: empty colour PcaModel
    if version >= 2:
        if expression is None:
            out += b"\x01"  # optional: nullopt
        elif expression[0] == "pca":
            out += b"\x00" + struct.pack("<i", 0) + _pca(*expression[1])
        else:
            out += b"\x00" + struct.pack("<i", 1) + struct.pack("<Q", len(expression[1]))
            out += b"".join(_string(name) + _eigen(d) for name, d in expression[1])
    if version >= 3:
        if landmarks is None:
            out += b"\x01"
        else:
            out += b"\x00" + struct.pack("<Q", len(landmarks))
            out += b"".join(_string(key) + struct.pack("<i", value) for key, value in landmarks.items())
    out += struct.pack("<Q", n_texcoords) + np.linspace(0, 1, 2 * n_texcoords).astype("<f8").tobytes()
    if version >= 4:
        out += _triangle_list(TRI)
    return out


def _blendshapes(seed=5):
    rng = _rng(seed)
    return [(name, rng.normal(0, 5, 3 * N)) for name in ("anger", "disgust", "fear", "happiness", "sadness")]


def test_surrey_model_with_blendshapes_is_read_and_converted_to_cm(tmp_path):
    shape, shapes = _sfm_shape(), _blendshapes()
    path = tmp_path / "sfm_shape_3448.bin"
    path.write_bytes(_sfm_archive(4, shape, ("blendshapes", shapes), landmarks={"eye.right.outer_corner": 3}))
    model = load_surrey_model(path, landmarks68=LANDMARKS)

    np.testing.assert_allclose(model.mean, shape["mean"].reshape(N, 3) * 0.1, rtol=1e-6)
    np.testing.assert_allclose(model.mean, MEAN_CM, rtol=1e-5, atol=1e-6)
    for k in range(4):
        want = shape["basis"][:, k].reshape(N, 3) * np.sqrt(shape["eigenvalues"][k]) * 0.1
        np.testing.assert_allclose(model.identity_basis[k], want, rtol=1e-5, atol=1e-9)
    assert model.expression_names == ("anger", "disgust", "fear", "happiness", "sadness")
    assert model.expression_prior == "blendshape"
    for k, (_, deformation) in enumerate(shapes):
        np.testing.assert_allclose(model.expression_basis[k], deformation.reshape(N, 3) * 0.1, rtol=1e-5)
    np.testing.assert_array_equal(model.triangles, TRI)
    np.testing.assert_array_equal(model.landmarks68, LANDMARKS)
    np.testing.assert_array_equal(model.contour_right, LANDMARKS[0:8])
    assert "millimetres -> cm" in model.source


def test_surrey_model_versions_and_pca_expressions(tmp_path):
    rng = _rng(7)
    shape = _sfm_shape()
    exp_mean = rng.normal(0, 0.5, 3 * N)
    exp_basis, _ = np.linalg.qr(rng.normal(size=(3 * N, 2)))
    exp_ev = np.array([9.0, 4.0])
    (tmp_path / "pca.bin").write_bytes(_sfm_archive(2, shape, ("pca", (exp_mean, exp_basis, exp_ev, TRI))))
    model = load_surrey_model(tmp_path / "pca.bin", landmarks68=LANDMARKS)
    np.testing.assert_allclose(
        model.mean, (shape["mean"] + exp_mean).reshape(N, 3) * 0.1, rtol=1e-5, atol=1e-6
    )
    for k in range(2):
        np.testing.assert_allclose(
            model.expression_basis[k],
            exp_basis[:, k].reshape(N, 3) * np.sqrt(exp_ev[k]) * 0.1,
            rtol=1e-5,
            atol=1e-9,
        )
    assert model.expression_prior == "gaussian" and model.n_expression == 2

    for version in (1, 3, 4):
        (tmp_path / "plain.bin").write_bytes(_sfm_archive(version, shape))
        model = load_surrey_model(tmp_path / "plain.bin", landmarks68=LANDMARKS)
        assert model.expression_basis.shape == (0, N, 3)
        np.testing.assert_allclose(model.mean, shape["mean"].reshape(N, 3) * 0.1, rtol=1e-6)
        assert f"class version {version}" in model.source


def test_surrey_landmark_and_contour_side_files(tmp_path):
    (tmp_path / "sfm.bin").write_bytes(_sfm_archive())
    full = {k: int(v) for k, v in enumerate(LANDMARKS, start=1)}
    # The stock ibug_to_sfm.txt layout leaves out the contour (1-8, 10-17) and the inner mouth corners.
    stock = {k: v for k, v in full.items() if not (1 <= k <= 8 or 10 <= k <= 17 or k in (61, 65))}
    for writer in (_mapping_toml, _mapping_boost):
        (tmp_path / "ibug_to_sfm.txt").write_text(writer(stock))
        assert read_eos_landmark_mapping(tmp_path / "ibug_to_sfm.txt") == stock
        with pytest.raises(ModelFileError, match=r"lacks ibug points 1-8, 10-17, 61, 65"):
            load_surrey_model(tmp_path / "sfm.bin", landmarks68=tmp_path / "ibug_to_sfm.txt")
        (tmp_path / "full.txt").write_text(writer(full))
        model = load_surrey_model(tmp_path / "sfm.bin", landmarks68=str(tmp_path / "full.txt"))
        np.testing.assert_array_equal(model.landmarks68, LANDMARKS)
    completed = {
        **read_eos_landmark_mapping(tmp_path / "ibug_to_sfm.txt"),
        **{k: full[k] for k in (*range(1, 9), *range(10, 18), 61, 65)},
    }
    np.testing.assert_array_equal(
        load_surrey_model(tmp_path / "sfm.bin", landmarks68=completed).landmarks68, LANDMARKS
    )
    with pytest.raises(ModelFileError, match="landmarks68"):
        load_surrey_model(tmp_path / "sfm.bin")

    contours = {"model_contour": {"right_contour": [10, 11, 12, 13], "left_contour": [60, 61, 62]}}
    (tmp_path / "sfm_model_contours.json").write_text(json.dumps(contours, indent=4))
    right, left = read_eos_model_contours(tmp_path / "sfm_model_contours.json")
    np.testing.assert_array_equal(right, [10, 11, 12, 13])
    np.testing.assert_array_equal(left, [60, 61, 62])
    model = load_surrey_model(
        tmp_path / "sfm.bin", landmarks68=LANDMARKS, contours_path=tmp_path / "sfm_model_contours.json"
    )
    np.testing.assert_array_equal(model.contour_right, [10, 11, 12, 13])
    np.testing.assert_array_equal(model.contour_left, [60, 61, 62])

    (tmp_path / "bad.json").write_text('{"contour": []}')
    with pytest.raises(ModelFileError, match="bad.json.*not an eos model contour file"):
        read_eos_model_contours(tmp_path / "bad.json")
    (tmp_path / "bad.txt").write_text("[landmark_mappings]\n9 = chin\n")
    with pytest.raises(ModelFileError, match=r"bad.txt:2: cannot read"):
        read_eos_landmark_mapping(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ModelFileError, match="no landmark mappings"):
        read_eos_landmark_mapping(tmp_path / "empty.txt")


def test_surrey_bad_files_raise_model_file_error(tmp_path):
    good = _sfm_archive(4, expression=("blendshapes", _blendshapes()), landmarks={"a": 1})
    path = tmp_path / "cut.bin"
    for cut in list(range(64)) + list(range(64, len(good), 97)):
        path.write_bytes(good[:cut])
        with pytest.raises(ModelFileError, match="cut.bin.*truncated"):
            load_surrey_model(path, landmarks68=LANDMARKS)
    rng = _rng(8)
    for k in range(30):
        (tmp_path / "noise.bin").write_bytes(rng.integers(0, 256, 100 + 50 * k, dtype=np.uint8).tobytes())
        with pytest.raises(ModelFileError, match="noise.bin"):
            load_surrey_model(tmp_path / "noise.bin", landmarks68=LANDMARKS)

    def expect(data: bytes, message: str):
        (tmp_path / "bad.bin").write_bytes(data)
        with pytest.raises(ModelFileError, match=message) as error:
            load_surrey_model(tmp_path / "bad.bin", landmarks68=LANDMARKS)
        assert "bad.bin" in str(error.value)

    expect(struct.pack("<I", 0) + good[4:], "old cv::Mat format")
    expect(struct.pack("<I", 7) + good[4:], "class version 7")
    expect(good + b"\x00", "1 unexpected bytes")
    expect(_sfm_archive(1) + b"junk", "unexpected bytes")
    expect(pickle.dumps(_ddfa_dict()), "bad.bin")
    shape = _sfm_shape()
    expect(_sfm_archive(shape={**shape, "basis": shape["basis"][:-3]}), "inconsistent shape model")
    expect(_sfm_archive(shape={**shape, "eigenvalues": -shape["eigenvalues"]}), "negative eigenvalues")
    expect(_sfm_archive(shape={**shape, "mean": np.full(3 * N, np.nan)}), "shape model mean contains NaN")
    expect(_sfm_archive(shape={**shape, "tri": TRI + N}), "triangles hold vertex ids outside")
    expect(_sfm_archive(shape={**shape, "mean": shape["mean"] * 1000}), "millimetres")
    expect(_sfm_archive(expression=("blendshapes", [("x", np.zeros(3 * N - 3))])), "do not have")
    expect(
        _sfm_archive(expression=("blendshapes", [("x", np.full(3 * N, np.nan))])),
        "expression basis contains NaN",
    )
    tampered = bytearray(_sfm_archive(2, expression=("blendshapes", _blendshapes())))
    flag_at = len(_sfm_archive(1)) - 8 - 16 * N  # the expression flag sits where version 1 puts texcoords
    assert tampered[flag_at] == 0
    tampered[flag_at + 1 : flag_at + 5] = struct.pack("<i", 5)
    expect(bytes(tampered), "expression model type 5")
    tampered[flag_at] = 7
    expect(bytes(tampered), "not a bool")
    with pytest.raises(ModelFileError, match="not found"):
        load_surrey_model(tmp_path / "missing.bin", landmarks68=LANDMARKS)


# --- dispatch -----------------------------------------------------------------------------------------------


def test_load_face_model_dispatches_by_suffix(tmp_path):
    _write_pickle(tmp_path / "m.pkl", _ddfa_dict())
    scipy.io.savemat(tmp_path / "m.mat", _bfm_dict())
    (tmp_path / "m.bin").write_bytes(_sfm_archive())

    ddfa = load_face_model(tmp_path / "m.pkl", param_std=np.ones(7))
    np.testing.assert_array_equal(ddfa.landmarks68, LANDMARKS)
    np.testing.assert_allclose(
        load_face_model(tmp_path / "m.mat", landmarks68=LANDMARKS).mean, MEAN_CM, atol=1e-5
    )
    np.testing.assert_allclose(
        load_face_model(str(tmp_path / "m.bin"), landmarks68=LANDMARKS).mean, MEAN_CM, atol=1e-5
    )

    ddfa.save(tmp_path / "m.npz")
    again = load_face_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(again.identity_basis, ddfa.identity_basis)
    np.testing.assert_array_equal(again.triangles, ddfa.triangles)
    assert again.source == ddfa.source

    with pytest.raises(ModelFileError, match="takes no options"):
        load_face_model(tmp_path / "m.npz", landmarks68=LANDMARKS)
    with pytest.raises(ModelFileError, match="unknown face model format '.obj'"):
        load_face_model(tmp_path / "m.obj")
    with pytest.raises(ModelFileError, match="not found"):
        load_face_model(tmp_path / "nothing.bin", landmarks68=LANDMARKS)
