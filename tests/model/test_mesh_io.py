"""OBJ and PLY writers: exact round trips, colours, uvs, torch input, and refusal of bad meshes."""

import numpy as np
import pytest
import torch

from cprfa.errors import InvalidInputError
from cprfa.model.mesh_io import read_obj, read_ply, write_obj, write_ply


def _mesh(seed=0):
    rng = np.random.default_rng(seed)
    vertices = (rng.normal(size=(50, 3)) * 7).astype(np.float32)
    triangles = rng.integers(0, 50, size=(80, 3))
    colors = rng.uniform(0, 1, size=(50, 3))
    return vertices, triangles, colors


def test_obj_round_trip_is_exact(tmp_path):
    vertices, triangles, _ = _mesh()
    path = write_obj(tmp_path / "a" / "mesh.obj", vertices, triangles)  # creates the folder
    mesh = read_obj(path)
    np.testing.assert_array_equal(mesh.vertices, vertices)  # float32 survives 9 digits exactly
    np.testing.assert_array_equal(mesh.triangles, triangles)
    assert mesh.colors is None and mesh.uvs is None


def test_obj_is_one_based_text(tmp_path):
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    path = write_obj(tmp_path / "tri.obj", vertices, np.array([[0, 1, 2]]), colors=np.eye(3))
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["v 0 0 0 1 0 0", "v 1 0 0 0 1 0", "v 0 1 0 0 0 1", "f 1 2 3"]


def test_obj_colors_and_uvs(tmp_path):
    vertices, triangles, colors = _mesh()
    uvs = np.random.default_rng(1).uniform(size=(50, 2))
    mesh = read_obj(write_obj(tmp_path / "mesh.obj", vertices, triangles, colors=colors, uvs=uvs))
    np.testing.assert_allclose(mesh.colors, colors, atol=1e-7)
    np.testing.assert_allclose(mesh.uvs, uvs, atol=1e-7)
    np.testing.assert_array_equal(mesh.triangles, triangles)
    lines = (tmp_path / "mesh.obj").read_text().splitlines()
    first_face = next(line for line in lines if line.startswith("f "))
    a, b, c = triangles[0] + 1
    assert first_face == f"f {a}/{a} {b}/{b} {c}/{c}"


def test_read_obj_variants(tmp_path):
    (tmp_path / "quad.obj").write_text("o quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\n"
                                       "f 1//1 2//1 3//1 4//1\nf -4 -3 -1\n")
    mesh = read_obj(tmp_path / "quad.obj")
    np.testing.assert_array_equal(mesh.triangles, [[0, 1, 2], [0, 2, 3], [0, 1, 3]])


def test_ply_round_trip_is_exact(tmp_path):
    vertices, triangles, _ = _mesh()
    mesh = read_ply(write_ply(tmp_path / "mesh.ply", vertices, triangles))
    np.testing.assert_array_equal(mesh.vertices, vertices)
    np.testing.assert_array_equal(mesh.triangles, triangles)
    assert mesh.colors is None


def test_ply_colors_are_rounded_to_bytes(tmp_path):
    vertices, triangles, colors = _mesh()
    path = write_ply(tmp_path / "mesh.ply", vertices, triangles, colors=colors)
    mesh = read_ply(path)
    np.testing.assert_allclose(mesh.colors, colors, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(mesh.colors * 255, np.rint(colors * 255))


def test_ply_layout(tmp_path):
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    path = write_ply(tmp_path / "tri.ply", vertices, np.array([[0, 1, 2]]), colors=np.eye(3))
    data = path.read_bytes()
    header, body = data.split(b"end_header\n")
    assert b"format binary_little_endian 1.0" in header
    assert b"property float x" in header and b"property uchar red" in header
    assert b"property list uchar int vertex_indices" in header
    assert len(body) == 3 * (3 * 4 + 3) + (1 + 3 * 4)  # 3 vertices of 15 bytes, 1 face of 13 bytes
    assert body[-13:] == bytes([3]) + np.array([0, 1, 2], "<i4").tobytes()
    assert body[12:15] == bytes([255, 0, 0])  # first vertex red


def test_torch_and_uint8_inputs(tmp_path):
    vertices, triangles, colors = _mesh()
    colors8 = np.rint(colors * 255).astype(np.uint8)
    path = write_ply(tmp_path / "t.ply", torch.from_numpy(vertices), torch.from_numpy(triangles),
                     torch.from_numpy(colors8))
    mesh = read_ply(path)
    np.testing.assert_array_equal(mesh.vertices, vertices)
    np.testing.assert_array_equal(np.rint(mesh.colors * 255), colors8)
    assert read_obj(write_obj(tmp_path / "t.obj", torch.from_numpy(vertices), torch.from_numpy(triangles))) \
        .vertices.shape == (50, 3)


def test_face_model_round_trip(tmp_path, face_model):
    write_ply(tmp_path / "face.ply", face_model.mean, face_model.triangles, colors=face_model.pncc.clip(0, 1))
    mesh = read_ply(tmp_path / "face.ply")
    np.testing.assert_array_equal(mesh.vertices, face_model.mean)
    np.testing.assert_array_equal(mesh.triangles, face_model.triangles)


@pytest.mark.parametrize("writer", [write_obj, write_ply])
@pytest.mark.parametrize("vertices, triangles, colors, message", [
    (np.zeros((0, 3)), np.zeros((0, 3), int), None, "empty"),
    (np.zeros((3, 3)), np.zeros((0, 3), int), None, "empty"),
    (np.array([[0.0, 0, 0], [np.nan, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), None, "NaN"),
    (np.zeros((3, 3)), np.array([[0, 1, 3]]), None, "outside"),
    (np.zeros((3, 3)), np.array([[-1, 1, 2]]), None, "outside"),
    (np.zeros((3, 2)), np.array([[0, 1, 2]]), None, "shape"),
    (np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]]), None, "integer"),
    (np.zeros((3, 3)), np.array([[0, 1, 2]]), np.full((3, 3), 2.0), "colors"),
    (np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((2, 3)), "colors"),
])
def test_bad_meshes_are_refused(tmp_path, writer, vertices, triangles, colors, message):
    with pytest.raises(InvalidInputError, match=message):
        writer(tmp_path / "bad.mesh", vertices, triangles, colors=colors)
    assert not (tmp_path / "bad.mesh").exists()


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        read_ply(tmp_path / "missing.ply")
    (tmp_path / "text.ply").write_text("hello\n")
    with pytest.raises(InvalidInputError, match="not a PLY"):
        read_ply(tmp_path / "text.ply")
    vertices, triangles, _ = _mesh()
    data = write_ply(tmp_path / "mesh.ply", vertices, triangles).read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-20])
    with pytest.raises(InvalidInputError, match="truncated"):
        read_ply(tmp_path / "cut.ply")
    (tmp_path / "bad.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    with pytest.raises(InvalidInputError, match="outside"):
        read_obj(tmp_path / "bad.obj")
