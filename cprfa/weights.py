"""Reading cprfa's weights files: the checks every loader makes, in one place.

A weights file is a ``torch.save`` dict with ``format`` and ``version`` keys, read with ``weights_only=True``
(a weights file can never run code). A JSON record beside it (``<name>.record.json`` unless stated) may carry
the file's ``sha256``; when it does, the file must match it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from cprfa.errors import ModelFileError


def read_weights(path: str | Path, file_format: str, version: int | tuple[int, ...], what: str, record: str | Path | None = None,
                 record_required: bool = False) -> dict:
    """The content of a weights file after checking that it exists, that it matches the sha256 of its record,
    that torch reads it safely, and its format and version (one, or a tuple of those the reader accepts). ``what`` names the network in messages."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} weights not found: {path}")
    record = Path(record) if record is not None else path.with_suffix(".record.json")
    if record_required and not record.is_file():
        raise ModelFileError(f"{what} weights {path} need their record {record.name} beside them")
    _check_recorded_sha256(path, record)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path} is not a cprfa {what} weights file ({type(error).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != file_format:
        raise ModelFileError(f"{path} is not a cprfa {what} weights file (format {file_format!r})")
    versions = version if isinstance(version, tuple) else (version,)
    if content.get("version") not in versions:
        raise ModelFileError(f"{path} has {what} weights format version {content.get('version')}; "
                             f"this cprfa reads version {' or '.join(map(str, versions))}")
    return content


def _check_recorded_sha256(path: Path, record: Path) -> None:
    if not record.is_file():
        return
    try:
        expected = json.loads(record.read_text()).get("sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ModelFileError(f"{record} is not a readable weights record ({type(error).__name__})") from None
    if expected is None:
        return
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ModelFileError(f"{path} has sha256 {actual}, but {record.name} records {expected}: the file is "
                             "corrupt or not the one recorded")
