"""Trial rows: statuses, typed conditional parameters (nulls keep their type), history files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from bgl.results.tables import trial_row, write_trial
from bgl.study.worker import final_report


def _summary(status="completed", error=None):
    return {
        "name": "t",
        "status": status,
        "error": error,
        "task": "enhance",
        "solver": "naive",
        "seed": 0,
        "steps": 4,
        "final": {"psnr": 12.5},
        "best": {"metric": "psnr", "value": 12.5, "step": 4},
        "wall_time_s": 1.0,
        "peak_memory_bytes": 2**20,
        "device": "cpu:x",
        "workers": 1,
        "versions": {"torch": "2.13.0"},
    }


def test_final_report_becomes_a_typed_row(tmp_path):
    history = [{"step": 0, "kind": "eval", "psnr": 5.0}, {"step": 4, "kind": "eval", "psnr": 12.5}]
    result = final_report(_summary(), history, ["psnr"])
    types = {"solver.name": "categorical", "solver.k": "int", "solver.delta": "float"}
    params = {"solver.name": "naive"}
    row = trial_row("s", "abc", result, params=params)
    assert row["status"] == "completed" and row["psnr"] == 12.5 and row["best_value"] == 12.5
    assert row["peak_memory_mib"] == 1.0 and row["versions_torch"] == "2.13.0"
    write_trial(tmp_path, "abc", row, json.loads(result["history_json"]), types)
    table = pq.read_table(tmp_path / "trials" / "abc.parquet")
    assert table.schema.field("param.solver.k").type == pa.int64()
    assert table.schema.field("param.solver.delta").type == pa.float64()
    assert table.schema.field("error").type == pa.string()
    assert table.to_pylist()[0]["param.solver.k"] is None
    assert [r["psnr"] for r in pq.read_table(tmp_path / "history" / "abc.parquet").to_pylist()] == [
        5.0,
        12.5,
    ]


def test_diverged_report_has_nan_objectives_and_the_reason():
    result = final_report(_summary("diverged", "lower loss L_G is nan at step 3"), [], ["psnr"])
    assert result["psnr"] != result["psnr"]  # NaN: Optuna records a failed trial
    row = trial_row("s", "x", result)
    assert row["status"] == "diverged" and "nan at step 3" in row["error"]


def test_intermediate_result_is_a_stopped_trial():
    row = trial_row("s", "x", {"psnr": 9.0, "step": 2}, params={"solver.name": "ibgl"})
    assert row["status"] == "stopped" and row["last_psnr"] == 9.0
    assert row["param.solver.name"] == "ibgl"
