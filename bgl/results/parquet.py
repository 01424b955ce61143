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


def write_table(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain(value: Any) -> Any:
    """Values Arrow can type consistently: containers become JSON text."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value
