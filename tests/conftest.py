"""Shared fixtures: the bundled face model and the data folder beside the repository (skipped when absent)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def face_model():
    from cprfa.model.face_model import default_face_model

    return default_face_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the data folder {SHARED_DATA}")
    return SHARED_DATA
