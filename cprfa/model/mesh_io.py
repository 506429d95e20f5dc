"""Write triangle meshes as Wavefront OBJ or binary PLY (for MeshLab, Blender), and read them back.

Writers take numpy arrays or torch tensors: vertices (N, 3), triangles (T, 3) of 0-based vertex ids, optional
per-vertex colours (N, 3) as floats in [0, 1] (or uint8 0-255). Bad meshes raise InvalidInputError.

- OBJ: ``v x y z [r g b]`` (the common vertex-colour extension), optional ``vt u v`` per vertex, faces
  ``f a b c`` (or ``f a/a b/b c/c`` with uvs), 1-based. Floats are written with 9 significant digits, which
  round-trips float32 exactly.
- PLY: binary little-endian, ``float`` x, y, z, optional ``uchar`` red, green, blue (colours are rounded to
  1/255), faces as ``list uchar int vertex_indices``.

The readers are minimal: they read what the writers write, plus the usual variants (OBJ polygons are split
into fans, ``a/b/c`` and negative ids; PLY with extra scalar properties or big-endian data). They return a
``Mesh`` and raise InvalidInputError for files they cannot read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cprfa.errors import InvalidInputError

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass(frozen=True)
class Mesh:
    """A mesh read from a file.

    Attributes:
        vertices: (N, 3) float32.
        triangles: (T, 3) int64, 0-based vertex ids.
        colors: (N, 3) float32 in [0, 1], or None.
        uvs: (N, 2) float32 texture coordinates per vertex (OBJ only), or None.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None


def write_obj(path: str | os.PathLike, vertices, triangles, colors=None, uvs=None) -> Path:
    """Write a Wavefront OBJ file; return its path (parent folders are created).

    Shape: vertices (N, 3), triangles (T, 3) 0-based, colors (N, 3) in [0, 1] or None, uvs (N, 2) or None."""
    vertices, triangles, colors = _check_mesh(vertices, triangles, colors)
    if uvs is not None:
        uvs = _numpy(uvs).astype(np.float64)
        if uvs.shape != (len(vertices), 2):
            raise InvalidInputError(f"uvs must have shape ({len(vertices)}, 2), got {uvs.shape}")
        if not np.isfinite(uvs).all():
            raise InvalidInputError("uvs contain NaN or infinite values")
    path = _prepare(path)
    faces = triangles + 1
    with open(path, "w") as file:
        file.write(f"# written by cprfa: {len(vertices)} vertices, {len(triangles)} triangles\n")
        if colors is None:
            np.savetxt(file, vertices, fmt="v %.9g %.9g %.9g")
        else:
            np.savetxt(file, np.hstack([vertices, colors]), fmt="v %.9g %.9g %.9g %.9g %.9g %.9g")
        if uvs is None:
            np.savetxt(file, faces, fmt="f %d %d %d")
        else:
            np.savetxt(file, uvs, fmt="vt %.9g %.9g")
            np.savetxt(file, np.repeat(faces, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    return path


def write_ply(path: str | os.PathLike, vertices, triangles, colors=None) -> Path:
    """Write a binary little-endian PLY file; return its path (parent folders are created).

    Shape: vertices (N, 3), triangles (T, 3) 0-based, colors (N, 3) in [0, 1] or None."""
    vertices, triangles, colors = _check_mesh(vertices, triangles, colors)
    if len(vertices) >= 2**31:
        raise InvalidInputError(f"PLY stores vertex ids as int32: {len(vertices)} vertices are too many")
    vertex_fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        vertex_fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    records = np.empty(len(vertices), dtype=vertex_fields)
    for axis, name in enumerate("xyz"):
        records[name] = vertices[:, axis]
    if colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            records[name] = np.rint(colors[:, channel] * 255)
    faces = np.empty(len(triangles), dtype=[("count", "u1"), ("ids", "<i4", (3,))])
    faces["count"] = 3
    faces["ids"] = triangles
    header = ["ply", "format binary_little_endian 1.0", "comment written by cprfa",
              f"element vertex {len(vertices)}"]
    header += [f"property {'float' if kind == '<f4' else 'uchar'} {name}" for name, kind in vertex_fields]
    header += [f"element face {len(triangles)}", "property list uchar int vertex_indices", "end_header"]
    path = _prepare(path)
    with open(path, "wb") as file:
        file.write(("\n".join(header) + "\n").encode("ascii"))
        file.write(records.tobytes())
        file.write(faces.tobytes())
    return path


def read_obj(path: str | os.PathLike) -> Mesh:
    """Read vertices (with optional colours) and faces of an OBJ file; polygons become fans.

    ``vt`` lines are returned as per-vertex uvs only when there are as many as vertices (as ``write_obj``
    writes them); face texture ids are otherwise ignored."""
    path = Path(path)
    text = _read(path).decode("utf-8", errors="replace")
    vertices, uvs, triangles = [], [], []
    try:
        for line in text.splitlines():
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "v":
                vertices.append([float(x) for x in fields[1:7]])
            elif fields[0] == "vt":
                uvs.append([float(x) for x in fields[1:3]])
            elif fields[0] == "f":
                ids = [int(corner.split("/")[0]) for corner in fields[1:]]
                ids = [i - 1 if i > 0 else len(vertices) + i for i in ids]  # 1-based, or relative if negative
                triangles += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    except ValueError as error:
        raise InvalidInputError(f"{path} is not a readable OBJ file: {error}") from None
    if not vertices or len({len(v) for v in vertices}) != 1 or len(vertices[0]) not in (3, 6):
        raise InvalidInputError(f"{path}: OBJ vertices must all be 'v x y z' or all 'v x y z r g b'")
    vertices = np.array(vertices, dtype=np.float32)
    colors = vertices[:, 3:] if vertices.shape[1] == 6 else None
    uv_array = np.array(uvs, dtype=np.float32) if len(uvs) == len(vertices) else None
    return _checked_mesh(path, vertices[:, :3], np.array(triangles, dtype=np.int64).reshape(-1, 3), colors,
                         uv_array)


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a binary PLY triangle mesh: x, y, z, optional red, green, blue (uchar) and triangle faces."""
    path = Path(path)
    data = _read(path)
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise InvalidInputError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header)")
    lines = [line.split() for line in data[:end].decode("ascii", errors="replace").splitlines()]
    byte_order = None
    elements: list[tuple[str, int, list[list[str]]]] = []  # (name, count, properties)
    try:
        for fields in lines:
            if fields[:1] == ["format"]:
                byte_order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fields[1])
                if byte_order is None:
                    raise InvalidInputError(f"{path}: only binary PLY files are read, not '{fields[1]}'")
            elif fields[:1] == ["element"]:
                elements.append((fields[1], int(fields[2]), []))
            elif fields[:1] == ["property"]:
                elements[-1][2].append(fields[1:])
    except (IndexError, ValueError):
        raise InvalidInputError(f"{path}: malformed PLY header line {' '.join(fields)!r}") from None
    if byte_order is None:
        raise InvalidInputError(f"{path}: the PLY header has no format line")
    offset = end + len(b"end_header\n")
    arrays = {}
    try:
        for name, count, properties in elements:
            dtype = _ply_dtype(path, name, properties, byte_order)
            arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += dtype.itemsize * count
    except ValueError as error:  # raised by frombuffer when the file is too short
        raise InvalidInputError(f"{path} is truncated or corrupt: {error}") from None
    if "vertex" not in arrays or "face" not in arrays:
        raise InvalidInputError(f"{path}: a PLY mesh needs 'vertex' and 'face' elements")
    vertex, face = arrays["vertex"], arrays["face"]
    vertices = np.stack([vertex[axis] for axis in "xyz"], axis=1).astype(np.float32)
    colors = None
    if all(name in vertex.dtype.names for name in ("red", "green", "blue")):
        colors = np.stack([vertex[name] for name in ("red", "green", "blue")], axis=1) / np.float32(255)
    if (face["count"] != 3).any():
        raise InvalidInputError(f"{path}: only triangle faces are read")
    return _checked_mesh(path, vertices, face["ids"].astype(np.int64), colors, None)


def _ply_dtype(path: Path, element: str, properties: list[list[str]], byte_order: str) -> np.dtype:
    """The record dtype of a PLY element; the only list property allowed is a face's triangle ids."""
    fields = []
    for prop in properties:
        if prop[0] == "list":
            if element != "face" or len(properties) != 1 or len(prop) != 4:
                raise InvalidInputError(f"{path}: list property {prop} of element '{element}' is unsupported")
            count, item = _PLY_TYPES.get(prop[1]), _PLY_TYPES.get(prop[2])
            if count is None or item is None:
                raise InvalidInputError(f"{path}: unknown PLY types in {prop}")
            # Faces are read as triangles; read_ply checks that every count is 3.
            fields += [("count", byte_order + count), ("ids", byte_order + item, (3,))]
        else:
            kind = _PLY_TYPES.get(prop[0])
            if kind is None or len(prop) != 2:
                raise InvalidInputError(f"{path}: unknown PLY property {prop}")
            fields.append((prop[1], byte_order + kind))
    if element == "vertex" and not {"x", "y", "z"} <= {name for name, *_ in fields}:
        raise InvalidInputError(f"{path}: PLY vertices need x, y and z properties")
    if element == "face" and not fields:
        raise InvalidInputError(f"{path}: the PLY face element has no vertex_indices list")
    return np.dtype(fields)


def _checked_mesh(path: Path, vertices, triangles, colors, uvs) -> Mesh:
    try:
        vertices, triangles, colors = _check_mesh(vertices, triangles, colors)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None
    return Mesh(vertices.astype(np.float32), triangles,
                None if colors is None else colors.astype(np.float32), uvs)


def _check_mesh(vertices, triangles, colors) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert: vertices float64 (N, 3), triangles int64 (T, 3), colors float64 or None."""
    vertices, triangles = _numpy(vertices), _numpy(triangles)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.number):
        raise InvalidInputError(
            f"vertices must be numeric of shape (N, 3), got {vertices.dtype} {vertices.shape}"
        )
    if len(vertices) == 0:
        raise InvalidInputError("the mesh is empty: it has no vertices")
    if not np.isfinite(vertices).all():
        bad_rows = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
        raise InvalidInputError(f"vertices contain NaN or infinite values (rows {bad_rows[:5].tolist()}...)")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or not np.issubdtype(triangles.dtype, np.integer):
        raise InvalidInputError(
            f"triangles must be integer of shape (T, 3), got {triangles.dtype} {triangles.shape}"
        )
    if len(triangles) == 0:
        raise InvalidInputError("the mesh is empty: it has no triangles")
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise InvalidInputError(
            f"triangles hold vertex ids in [{triangles.min()}, {triangles.max()}], "
            f"outside [0, {len(vertices)}) for {len(vertices)} vertices"
        )
    if colors is not None:
        colors = _numpy(colors)
        if colors.shape != vertices.shape:
            raise InvalidInputError(f"colors must have shape {vertices.shape}, got {colors.shape}")
        if colors.dtype == np.uint8:
            colors = colors / 255.0
        colors = colors.astype(np.float64)
        if not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
            raise InvalidInputError("colors must be floats in [0, 1] (or uint8 in 0-255)")
    return vertices.astype(np.float64), triangles.astype(np.int64), colors


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise InvalidInputError(f"mesh file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error}") from None
