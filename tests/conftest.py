"""Shared fixtures: the bundled face model and the data folder beside the repository (skipped when absent);
exported ONNX graphs are cached in a folder of the test session, not the user's cache."""

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CACHE_VARIABLE = "CPRFA_CACHE_DIR"  # cprfa.cpr.onnx.CACHE_VARIABLE


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory):
    before = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(tmp_path_factory.mktemp("graph_cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_VARIABLE)
    else:
        os.environ[CACHE_VARIABLE] = before


@pytest.fixture(scope="session")
def face_model():
    from cprfa.model.face_model import default_face_model

    return default_face_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the data folder {SHARED_DATA}")
    return SHARED_DATA


def copy_faces(shared_data: Path, tmp_path: Path, count: int):
    """A small 300-W folder in ``tmp_path`` with the first ``count`` helen_test faces; returns its split folder
    and the face names."""
    source = tmp_path / "300w" / "helen_test"
    source.mkdir(parents=True)
    names = sorted(p.stem for p in (shared_data / "300w" / "helen_test").glob("*.pts"))[:count]
    for name in names:
        for suffix in (".jpg", ".pts"):
            shutil.copy(shared_data / "300w" / "helen_test" / (name + suffix), source)
    return source, names


@pytest.fixture
def copy_300w(shared_data):
    """copy_faces with the shared data folder filled in: ``copy_300w(tmp_path, count)``."""
    return lambda tmp_path, count: copy_faces(shared_data, tmp_path, count)


@pytest.fixture(scope="session")
def small_build(shared_data, tmp_path_factory) -> Path:
    """A `cprfa data build` of three helen_test faces at 64 px with one profiled view each (9 samples)."""
    from cprfa.cli.main import main

    root = tmp_path_factory.mktemp("small_build")
    copy_faces(shared_data, root, 3)
    out = root / "built"
    assert main(["data", "build", "--data", str(root / "300w"), "--splits", "helen_test", "--size", "64",
                 "--profile", "1", "--out", str(out)]) == 0
    return out
