"""The fidelity benchmark runs at a tiny size, writes well-formed rows and a PNG; its limits hold:
with the lower level solved (k large) naive and IBGL both reduce to ∇_ω L_F(ω, θ*)."""

from __future__ import annotations

import pyarrow.parquet as pq

from bgl.bench.fidelity import FidelityConfig, run_fidelity_bench
from bgl.bench.report import _fidelity


def test_fidelity_bench_rows_plot_and_limits(tmp_path):
    cfg = FidelityConfig(width=2, batch_size=1, ks=(1, 150), deltas=(1e-3, 1.0), delta_ks=(1,))
    rows = run_fidelity_bench(cfg, out_dir=tmp_path)
    (path,) = tmp_path.glob("fidelity-*.parquet")
    (png,) = tmp_path.glob("fidelity-*.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    table = pq.read_table(path).to_pylist()
    assert len(table) == len(rows) == 2 * 3 + 2
    for r in table:
        assert -1.0 <= r["cosine"] <= 1.0 + 1e-12 and r["rel_error"] >= 0
        assert r["ref_lower_grad_norm"] < 1e-9 and r["ref_cg_residual"] < 1e-10
        assert r["benchmark"] == "fidelity" and r["plot"] == str(png)
    by = {(r["solver"], r["k"]): r for r in table if r["sweep"] == "k"}
    # θ_150 ≈ θ*: ∇_θ L_G ≈ 0, so IBGL's eps-guarded coefficient vanishes and it equals naive
    assert by[("naive", 150)]["theta_gap"] < 1e-12
    assert abs(by[("ibgl", 150)]["rel_error"] - by[("naive", 150)]["rel_error"]) < 1e-4
    # naive misses the implicit term: its error does not vanish at θ*
    assert by[("naive", 150)]["rel_error"] > 1e-2
    text = _fidelity(table)
    assert "### Hypergradient fidelity" in text and "| 150 |" in text
