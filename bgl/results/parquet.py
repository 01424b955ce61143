"""Atomic Parquet writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows (dicts) to `path` via a temporary file and an atomic rename."""
    return write_table(rows_to_table(rows), path)


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    data = {k: [_plain(r.get(k)) for r in rows] for k in columns}
    arrays = {}
    for key, values in data.items():
        array = pa.array(values)
        if pa.types.is_null(array.type):  # an all-null column still needs a concrete type
            array = pa.array(values, type=pa.float64())
        arrays[key] = array
    return pa.table(arrays)


class ResultsWriteError(RuntimeError):
    """A results folder that cannot be written (read-only, full, gone); names the folder."""


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` atomically: the file is whole or absent, never half-written,
    and an existing file at `path` stays as it was when the write fails."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are for sharing
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        reason = exc.strerror or str(exc)
        raise ResultsWriteError(
            f"{path.parent}: cannot write results ({reason}); nothing was written there, "
            "and rows already written are intact"
        ) from exc
    except BaseException:
        _discard(tmp)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file atomically (a temporary name, then a rename), readable like any result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:  # a read-only folder: nothing could have been created there anyway
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain(value: Any) -> Any:
    """Values Arrow can type consistently: containers become JSON text."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value
