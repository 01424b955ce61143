"""Storage faults: a results folder that cannot be written gives a clear error naming it, and
leaves no partial file behind and every finished row intact. `bgl results query` reads the
study tables and no other file."""

from __future__ import annotations

import errno
import os

import pyarrow.parquet as pq
import pytest

import bgl.results.parquet as parquet
from bgl.analysis.query import QueryError, list_studies, query
from bgl.config import ConfigError
from bgl.results.parquet import ResultsWriteError
from bgl.results.tables import trial_row, write_trial
from bgl.study.preflight import check_writable

TYPES = {"solver.name": "categorical"}


def _write(study_dir, trial_id, psnr):
    result = {"bgl_final": True, "status": "completed", "solver": "naive", "psnr": psnr}
    row = trial_row("s", trial_id, result, params={"solver.name": "naive"})
    write_trial(study_dir, trial_id, row, [{"step": 0, "kind": "eval", "psnr": psnr}], TYPES)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_writer_failing_half_way_leaves_no_partial_file(tmp_path, monkeypatch):
    study = tmp_path / "results" / "s"
    _write(study, "t1", 20.0)
    before = _files(study)
    real = pq.write_table

    def half_then_full(table, where, **kwargs):  # the disk fills up in the middle of a file
        real(table, where, **kwargs)
        with open(where, "r+b") as f:
            f.truncate(os.path.getsize(where) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parquet.pq, "write_table", half_then_full)
    with pytest.raises(ResultsWriteError, match="No space left on device") as info:
        _write(study, "t2", 21.0)
    assert str(study / "history") in str(info.value)  # the folder is named
    assert _files(study) == before  # nothing partial, nothing temporary, t1 untouched
    monkeypatch.setattr(parquet.pq, "write_table", real)
    assert [r["trial_id"] for r in query(tmp_path / "results", "SELECT * FROM trials")
            .to_pylist()] == ["t1"]  # fmt: skip


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    study = tmp_path / "results" / "s"
    _write(study, "t1", 20.0)
    before = _files(study)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(parquet.tempfile, "mkstemp", read_only)
    with pytest.raises(ResultsWriteError, match="Read-only file system"):
        _write(study, "t2", 21.0)
    assert _files(study) == before
    monkeypatch.setattr("bgl.study.preflight.tempfile.NamedTemporaryFile", read_only)
    with pytest.raises(ConfigError, match=r"output_dir: .* cannot be written \(Read-only"):
        check_writable(tmp_path / "results" / "new")


def test_query_cannot_touch_other_files(tmp_path):
    study = tmp_path / "results" / "s"
    _write(study, "t1", 20.0)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    out = tmp_path / "copy.csv"
    attempts = [
        f"COPY trials TO '{out}'",
        f"SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"ATTACH '{tmp_path / 'x.db'}'",
    ]
    for sql in attempts:
        for study_name in ("s", None):
            with pytest.raises(QueryError, match="read-only"):
                query(tmp_path / "results", sql, study=study_name)
    assert not out.exists() and not (tmp_path / "x.db").exists()
    with pytest.raises(QueryError, match="configuration"):  # the lock cannot be lifted
        query(tmp_path / "results", "SET enable_external_access = true", study="s")
    (row,) = query(tmp_path / "results", "SELECT trial_id, psnr FROM trials", "s").to_pylist()
    assert row == {"trial_id": "t1", "psnr": 20.0}
    history = query(tmp_path / "results", "SELECT count(*) AS n FROM history").to_pylist()
    assert history == [{"n": 1}]


def test_list_reports_disk_use(tmp_path):
    study = tmp_path / "results" / "s"
    _write(study, "t1", 20.0)
    (study / "tune").mkdir()
    (study / "tune" / "checkpoint.pt").write_bytes(b"x" * 5000)
    (study / "tune" / "link").symlink_to(study / "tune" / "checkpoint.pt")  # not counted twice
    (entry,) = list_studies(tmp_path / "results")
    expected = sum(p.stat().st_size for p in study.rglob("*") if p.is_file() and not p.is_symlink())
    assert entry["disk_bytes"] == expected > 5000
