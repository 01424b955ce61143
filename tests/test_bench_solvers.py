"""The solver benchmark runs at a tiny size and writes well-formed rows (no timing asserts)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from bgl.bench.solvers import SolverBenchConfig, run_solver_bench


@pytest.mark.slow  # three fresh child processes: ~30 s on 2 shared CPUs
def test_solver_bench_writes_rows(tmp_path):
    cfg = SolverBenchConfig(
        crop=32,
        batch_size=1,
        width=4,
        lower_width=4,
        repeats=1,
        warmup=1,
        device="cpu",
        k=2,
        threads=1,  # tiny tensors on a shared machine: a 2nd OpenMP thread only stalls
    )
    rows = run_solver_bench(cfg, out_dir=tmp_path)
    assert [r["solver"] for r in rows] == ["naive", "tbgl", "ibgl"]
    (path,) = tmp_path.glob("solvers-*.parquet")
    table = pq.read_table(path).to_pylist()
    assert len(table) == 3
    for row in table:
        assert row["time_s"] > 0 and row["peak_bytes"] > 0
        assert row["config_crop"] == 32 and row["benchmark"] == "solvers"
    assert table[0]["time_ratio"] == 1.0 and table[2]["k"] == 2
