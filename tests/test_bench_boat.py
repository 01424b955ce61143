"""bgl's TBGL/IBGL agree with BOAT's FD/IGA where the formulas agree (float64), and the BOAT
benchmark runs at a tiny size and writes well-formed rows (no timing asserts)."""

from __future__ import annotations

import sys

import pyarrow.parquet as pq
import pytest
import torch

from bgl.bench.boat import (
    BOAT_INSTALL,
    BoatBenchConfig,
    BoatMissingError,
    agreement,
    bgl_hypergradient,
    boat_hypergradient,
    require_boat,
    run_boat_bench,
)
from bgl.bench.fidelity import compare
from bgl.bench.report import _boat
from tests.bilevel_problems import mlp_problem

try:
    import boat_torch  # noqa: F401
except ImportError:  # the benchmark must say how to install it; the rest needs it
    boat_torch = None
requires_boat = pytest.mark.skipif(boat_torch is None, reason=f"install with: {BOAT_INSTALL}")


pytestmark = pytest.mark.usefixtures("single_thread")


def _problem():
    return mlp_problem(upper_hidden=6)


@requires_boat
@pytest.mark.parametrize(("solver", "k"), [("tbgl", 1), ("ibgl", 1), ("ibgl", 3)])
def test_bgl_matches_boat_where_the_formulas_agree(solver, k):
    problem, train, val = _problem()
    before = [p.detach().clone() for p in problem.lower.parameters()]
    kw = dict(lower_lr=0.3, delta=1e-3, k=k)
    ours = bgl_hypergradient(problem, train, val, solver, **kw)
    theirs = boat_hypergradient(problem, train, val, solver, **kw)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # neither side moved the problem's θ (BOAT ran on copies; bgl restored it)
    for p, b in zip(problem.lower.parameters(), before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
    assert agreement(problem, train, val, solver, **kw)["rel_error"] < 1e-9


@requires_boat
def test_the_comparison_can_tell_solvers_apart():
    """TBGL vs IBGL differ on the same problem: an agreement check on the wrong op would fail."""
    problem, train, val = _problem()
    kw = dict(lower_lr=0.3, delta=1e-3, k=1)
    tbgl = bgl_hypergradient(problem, train, val, "tbgl", **kw)
    iga = boat_hypergradient(problem, train, val, "ibgl", **kw)
    assert compare(tbgl, iga)["rel_error"] > 1e-3


def _bench_rows(
    tmp_path, isolate: bool, solvers: tuple[str, ...] = ("tbgl", "ibgl")
) -> tuple[list[dict], list[dict]]:
    cfg = BoatBenchConfig(
        solvers=solvers,
        crop=32,
        batch_size=1,
        width=4,
        lower_width=4,
        repeats=1,
        warmup=1,
        rounds=1,
        device="cpu",
        threads=1,  # a shared, loaded machine: no OpenMP barriers waiting on descheduled threads
        isolate=isolate,
    )
    rows = run_boat_bench(cfg, out_dir=tmp_path)
    (path,) = tmp_path.glob("boat-*.parquet")
    table = pq.read_table(path).to_pylist()
    assert len(table) == len(rows) == len(solvers) * 2 + len(solvers)
    rounds = [r for r in table if r["kind"] == "round"]
    assert {(r["solver"], r["library"]) for r in rounds} == {
        (s, lib) for s in solvers for lib in ("bgl", "boat")
    }
    for r in rounds:
        assert r["time_s"] > 0 and r["tensor_peak_bytes"] > 0 and r["load_avg"] >= 0
    for s in (r for r in table if r["kind"] == "summary"):
        assert s["speedup"] > 0 and s["memory_ratio"] > 0 and s["boat_torch"] == "1.1.1"
        assert s["agree_cosine"] > 0.999 and s["agree_rel_error"] < 1e-3
    if "tbgl" in solvers:
        assert "| TBGL (FD, k = 1) |" in _boat(table)  # the report renders these rows
    return rows, table


@requires_boat
def test_boat_bench_writes_rows(tmp_path):
    _bench_rows(tmp_path, isolate=False)


@requires_boat
@pytest.mark.slow
def test_boat_bench_in_child_processes(tmp_path):
    """The child-process path for one solver (the in-process test covers both): a bgl child and
    a BOAT child, each timing in a fresh interpreter."""
    _, table = _bench_rows(tmp_path, isolate=True, solvers=("tbgl",))
    assert all(r["config_isolate"] for r in table)


def test_missing_boat_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "boat_torch", None)  # import fails as if not installed
    install = r"--no-deps boat-torch==1\.1\.1 && pip install .*higher"
    with pytest.raises(BoatMissingError, match=install):
        require_boat()
    with pytest.raises(BoatMissingError):
        run_boat_bench(BoatBenchConfig(rounds=1), out_dir=None)
