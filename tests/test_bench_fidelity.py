"""The fidelity benchmark runs at a tiny size, writes well-formed rows and a PNG; its limits hold:
with the lower level solved (k large) naive and IBGL both reduce to ∇_ω L_F(ω, θ*), AID to the
reference; Neumann's error falls with its terms; the seed summaries are medians and extremes."""

from __future__ import annotations

import statistics

import pyarrow.parquet as pq
import pytest
import torch

from bgl.bench.fidelity import (
    README_HEADING,
    FidelityConfig,
    fidelity_problem,
    gradient_steps,
    initial_theta,
    render_markdown,
    replace_section,
    run_fidelity_bench,
    summarise,
)
from bgl.bench.report import _fidelity
from bgl.solvers import BILEVEL_SOLVER_NAMES, get_solver

SEEDS = (0, 1)
BIG_K = 150
CFG = FidelityConfig(
    width=2,
    batch_size=1,
    ks=(1, 5, BIG_K),
    deltas=(1e-3, 1.0),
    delta_ks=(1,),
    theta_seeds=SEEDS,
    aid_iteration_sweep=(1, 2, 5),
    aid_iteration_ks=(BIG_K,),
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    return out, run_fidelity_bench(CFG, out_dir=out)


def test_fidelity_bench_rows_plot_and_limits(bench):
    out, rows = bench
    (path,) = out.glob("fidelity-*.parquet")
    (png,) = out.glob("fidelity-*.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    table = pq.read_table(path).to_pylist()
    # per seed: 3 k x 5 variants (naive, tbgl, ibgl, aid-cg, aid-neumann), 2 δ, 2 methods x 3
    assert len(table) == len(rows) == len(SEEDS) * (3 * 5 + 2 + 2 * 3)
    assert {r["solver"] for r in table} == set(BILEVEL_SOLVER_NAMES)  # every bilevel solver
    assert {r["variant"] for r in table if r["solver"] == "aid"} == {"aid-cg", "aid-neumann"}
    for r in table:
        assert -1.0 <= r["cosine"] <= 1.0 + 1e-12 and r["rel_error"] >= 0
        assert r["ref_lower_grad_norm"] < 1e-9 and r["ref_cg_residual"] < 1e-10
        assert r["benchmark"] == "fidelity" and r["plot"] == str(png)
    neumann = {r["neumann_step"] for r in table if r["method"] == "neumann"}
    assert neumann == {1.0 / table[0]["lower_hessian_max_eig"]}
    for seed in SEEDS:
        by = {
            (r["variant"], r["k"]): r
            for r in table
            if r["sweep"] == "k" and r["theta_seed"] == seed
        }
        # θ_k walks towards θ* (each k resumes from θ_{k'}, k' < k, never from an unrolled state)
        gaps = [by[("naive", k)]["theta_gap"] for k in (1, 5, BIG_K)]
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-12
        # θ_150 ≈ θ*: ∇_θ L_G ≈ 0, so IBGL's eps-guarded coefficient vanishes and it equals naive
        assert abs(by[("ibgl", BIG_K)]["rel_error"] - by[("naive", BIG_K)]["rel_error"]) < 1e-4
        # naive misses the implicit term: its error does not vanish at θ*
        assert by[("naive", BIG_K)]["rel_error"] > 1e-2
        # AID solves the implicit system: at θ* it is the reference, IBGL is not
        aid_cg = by[("aid-cg", BIG_K)]["rel_error"]
        assert aid_cg < 1e-2 and aid_cg < 1e-3 * by[("ibgl", BIG_K)]["rel_error"]
        assert by[("aid-neumann", BIG_K)]["rel_error"] < 1e-2
        # at θ*, more Neumann terms (and more CG iterations) mean a smaller error
        for variant in ("aid-cg", "aid-neumann"):
            sweep = sorted(
                (r["iterations"], r["rel_error"])
                for r in table
                if r["sweep"] == "iterations" and r["variant"] == variant
                and r["theta_seed"] == seed
            )  # fmt: skip
            errors = [e for _, e in sweep]
            assert [n for n, _ in sweep] == [1, 2, 5]
            assert errors[0] > 2 * errors[1] > 4 * errors[2], (variant, errors)
    # θ_5 of the last seed is θ₀ after 5 steps, though the δ sweep at k = 1 (TBGL: θ_0) ran between
    problem, train, _ = fidelity_problem(CFG)
    theta = problem.lower_params()
    for p, v in zip(theta, initial_theta(CFG, SEEDS[-1])):
        p.data.copy_(v)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench: on a shared machine 2 threads are ~20x slower here
    try:
        gradient_steps(problem, train, table[0]["lower_lr"], 5)
        theta_5 = [p.detach().clone() for p in theta]
        gradient_steps(problem, train, table[0]["lower_lr"], BIG_K - 5)  # θ_150 ≈ θ*
    finally:
        torch.set_num_threads(threads)
    star = [p.detach() for p in theta]
    gap = sum((a - b).pow(2).sum() for a, b in zip(theta_5, star)) ** 0.5
    gap = float(gap / sum(b.pow(2).sum() for b in star) ** 0.5)
    (row,) = [r for r in table if r["sweep"] == "k" and r["variant"] == "naive" and r["k"] == 5
              and r["theta_seed"] == SEEDS[-1]]  # fmt: skip
    assert row["theta_gap"] == pytest.approx(gap, rel=1e-6)
    # the seeds give different θ₀ and so different hypergradients away from θ*
    at_1 = [r["rel_error"] for r in table if r["variant"] == "ibgl" and r["k"] == 1]
    assert len(set(at_1)) == len(SEEDS)
    text = _fidelity(table)  # the README block's renderer still reads these rows
    assert "### Hypergradient fidelity" in text and f"| {BIG_K} |" in text


def test_summaries_are_median_and_worst_over_seeds(bench):
    _, rows = bench
    summary = summarise(rows)
    assert len(summary) == len(rows) // len(SEEDS) and {s["seeds"] for s in summary} == {2}
    for s in summary:
        members = [
            r
            for r in rows
            if (r["sweep"], r["variant"], r["k"], r["delta"], r["iterations"])
            == (s["sweep"], s["variant"], s["k"], s["delta"], s["iterations"])
        ]
        err, cos = [r["rel_error"] for r in members], [r["cosine"] for r in members]
        assert s["rel_error_median"] == pytest.approx(statistics.median(err))
        assert s["rel_error_worst"] == max(err) and s["cosine_worst"] == min(cos)
    # odd and even counts, and worst is the extreme, not the last row seen
    fake = [
        {"sweep": "k", "variant": "v", "solver": "naive", "k": 1, "delta": None,
         "iterations": None, "theta_seed": seed, "theta_gap": 1.0, "rel_error": e, "cosine": c}
        for seed, e, c in ((0, 1.0, 0.5), (1, 3.0, -1.0), (2, 2.0, 1.0), (3, 10.0, 0.9))
    ]  # fmt: skip
    (three,) = summarise(fake[:3])
    assert (three["rel_error_median"], three["rel_error_worst"]) == (2.0, 3.0)
    assert (three["cosine_median"], three["cosine_worst"], three["worst_seed"]) == (0.5, -1.0, 1)
    (four,) = summarise(fake)
    assert (four["rel_error_median"], four["rel_error_worst"], four["worst_seed"]) == (2.5, 10, 3)
    assert four["cosine_median"] == pytest.approx(0.7)


def test_markdown_section_and_readme_rewrite(bench, tmp_path):
    _, rows = bench
    text = render_markdown(rows)
    labels = [get_solver(n).label for n in BILEVEL_SOLVER_NAMES if n != "aid"] + [
        "AID-CG",
        "AID-Neumann",
    ]
    assert text.startswith(README_HEADING) and all(f" {label} |" in text for label in labels)
    assert f"| {BIG_K} | " in text and "median / worst" in text
    assert "Target for AID: relative error ≤ 0.01 at every k ≥ 10. AID-CG meets it" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_HEADING}\n\nold table\n\n### Scaling\n\nkeep\n")
    replace_section(readme, text)
    new = readme.read_text()
    assert "old table" not in new and text in new
    assert new.startswith("# x\n\n") and new.endswith("\n### Scaling\n\nkeep\n")
    with pytest.raises(ValueError, match="has no '### missing'"):
        replace_section(tmp_path / "README.md", text, heading="### missing")
