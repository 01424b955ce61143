"""The solver benchmark runs at a tiny size and writes well-formed rows (no timing asserts)."""

from __future__ import annotations

import json
import statistics

import pyarrow.parquet as pq
import pytest

from bgl.bench.solvers import (
    SolverBenchConfig,
    _measure_in_child,
    bench_run_config,
    run_solver_bench,
    variants,
)
from bgl.config import from_dict
from bgl.solvers import BILEVEL_SOLVER_NAMES, get_solver


def test_every_registered_solver_gets_rows_and_aid_one_per_iterations():
    cfg = SolverBenchConfig(k=3, iterations=(5, 10))
    rows = variants(cfg)
    assert rows[0] == ("naive", {})  # the ratios' baseline comes first
    assert {name for name, _ in rows} == set(BILEVEL_SOLVER_NAMES)  # joint: only when asked
    assert ("aid", {"iterations": 5}) in rows and ("aid", {"iterations": 10}) in rows
    assert (
        ("tbgl", {}) in rows and ("ibgl", {}) in rows and len(rows) == len(BILEVEL_SOLVER_NAMES) + 1
    )
    # a subset still measures the baseline; unknown names fail
    assert variants(SolverBenchConfig(solvers=("aid",), iterations=(7,))) == [
        ("naive", {}),
        ("aid", {"iterations": 7}),
    ]
    with pytest.raises(ValueError, match="unknown solver"):
        variants(SolverBenchConfig(solvers=("nope",)))
    # k lower steps only where the registry says the solver takes them
    cfg = SolverBenchConfig(k=3, iterations=(5, 10), curvature="gauss_newton", delta=0.5)
    for name, settings in rows:
        section = bench_run_config(cfg, name, settings)["solver"]
        run = from_dict(bench_run_config(cfg, name, settings))
        # the baseline (naive) at one lower step, the others at k where they take k
        assert run.solver.k == (3 if get_solver(name).takes_k and name != "naive" else 1)
        assert run.solver.iterations == settings.get("iterations", run.solver.iterations)
        # shared settings only where the solver reads them
        assert ("curvature" in section) == ("curvature" in get_solver(name).keys)
        assert ("delta" in section) == ("delta" in get_solver(name).keys)
    aid = from_dict(bench_run_config(cfg, "aid", {"iterations": 10})).solver
    assert (aid.curvature, aid.iterations, aid.k) == ("gauss_newton", 10, 3)
    assert from_dict(bench_run_config(cfg, "tbgl")).solver.delta == 0.5


def _tiny(**kw) -> SolverBenchConfig:
    return SolverBenchConfig(
        crop=32,
        batch_size=1,
        width=4,
        lower_width=4,
        repeats=1,
        warmup=1,
        device="cpu",
        k=2,
        threads=1,  # tiny tensors on a shared machine: a 2nd OpenMP thread only stalls
        iterations=(5,),
        **kw,
    )


def test_solver_bench_writes_rows(tmp_path):
    """Every variant in this process (a fresh process each costs ~10 s of imports)."""
    # Gauss-Newton curvature is PSD: CG takes every iteration (the exact Hessian of this
    # non-convex G can stop it at the first direction of negative curvature)
    cfg = _tiny(isolate=False, curvature="gauss_newton", rounds=2)
    rows = run_solver_bench(cfg, out_dir=tmp_path)
    assert [r["variant"] for r in rows] == ["naive", "tbgl", "ibgl", "aid-5"]
    (path,) = tmp_path.glob("solvers-*.parquet")
    table = pq.read_table(path).to_pylist()
    assert len(table) == 4
    for row in table:
        assert row["time_s"] > 0 and row["peak_bytes"] > 0
        assert row["config_crop"] == 32 and row["benchmark"] == "solvers"
        assert row["time_ratio"] == pytest.approx(row["time_s"] / table[0]["time_s"])
        assert row["cpu_s"] > 0 and row["cpu_ratio"] == row["cpu_s"] / table[0]["cpu_s"]
        rounds = json.loads(row["time_s_rounds"])  # a median over the two rounds
        assert row["rounds"] == len(rounds) == 2 and row["time_s"] == statistics.median(rounds)
    naive, tbgl, ibgl, aid = table
    assert naive["time_ratio"] == 1.0 and naive["iterations"] is None
    assert (naive["k"], tbgl["k"], ibgl["k"], aid["k"]) == (1, 1, 2, 2)
    assert aid["solver"] == "aid" and aid["iterations"] == 5
    assert aid["products"] == 5 and ibgl["products"] is None
    assert "curvature=gauss_newton" in aid["settings"] and "iterations=5" in aid["settings"]
    assert tbgl["settings"] == "delta=0.01 unroll=optimizer" and naive["settings"] == ""


@pytest.mark.slow  # two fresh child processes (memory, then timing): ~25 s on 2 shared CPUs
def test_solver_bench_child_process():
    """The path `bgl bench solvers` takes: the row comes back from `python -m bgl.bench.solvers`
    with the swept setting applied there."""
    row = _measure_in_child(_tiny(), "aid", {"iterations": 1})
    assert row["variant"] == "aid-1" and row["iterations"] == 1 and row["products"] == 1
    assert row["k"] == 2 and row["time_s"] > 0 and row["cpu_s"] > 0
    assert row["tensor_peak_bytes"] > 0 and row["load_avg"] >= 0
