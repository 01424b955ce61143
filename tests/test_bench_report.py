"""`bgl bench report` rewrites only the README's marked block, from the newest Parquet rows."""

from __future__ import annotations

import pytest

from bgl.bench.report import END, START, latest_rows, render, update_readme
from bgl.results.parquet import write_rows


def _scaling_rows(time_one: float) -> list[dict]:
    base = {
        "config_solver": "ibgl",
        "k": 1,
        "config_batch_size": 2,
        "config_crop": 128,
        "config_width": 32,
        "config_rounds": 2,
        "load_avg_median": 3.0,
        "cpu_count": 2,
        "benchmark": "scaling",
    }
    return [
        {**base, "workers": 1, "threads_per_worker": 2, "time_s": time_one,
         "samples_per_s": 4 / time_one, "throughput_ratio": 1.0, "scaling_efficiency": 1.0},
        {**base, "workers": 2, "threads_per_worker": 1, "time_s": 3.0,
         "samples_per_s": 8 / 3.0, "throughput_ratio": 8 / 3.0 / (4 / time_one),
         "scaling_efficiency": 0.5},
    ]  # fmt: skip


def _readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(
        f"# x\n\n## Benchmarks\n\nhand-written 1876 ms\n\n{START}\nold\n{END}\n\n## Layout\n"
    )
    return path


def test_report_rewrites_only_the_marked_block(tmp_path):
    results = tmp_path / "bench"
    write_rows(_scaling_rows(9.0), results / "scaling-2026-01-01T000000+0000.parquet")
    write_rows(_scaling_rows(2.0), results / "scaling-2026-02-01T000000+0000.parquet")
    readme = _readme(tmp_path)
    update_readme(readme, results)
    text = readme.read_text()
    assert "hand-written 1876 ms" in text and text.endswith(f"{END}\n\n## Layout\n")
    assert "old" not in text.split(START)[1]
    assert "| 1 | 2 | 2.00 s |" in text  # the newest file wins
    assert "Not measured yet" in text and "bgl bench all --device cuda" in text
    update_readme(readme, results)
    assert readme.read_text() == text  # idempotent
    assert [r["time_s"] for r in latest_rows(results, "scaling")][0] == 2.0


def test_report_shows_gpu_rows_with_the_gpu_name(tmp_path):
    row = {
        "device": "cuda:NVIDIA H100 80GB HBM3",
        "megapixels": 12.1,
        "time_s": 2.0,
        "megapixels_per_s": 6.05,
        "peak_bytes": 2**30,
    }
    write_rows([row], tmp_path / "develop-2026-01-01T000000+0000.parquet")
    text = render(tmp_path)
    assert "NVIDIA H100 80GB HBM3" in text and "Not measured yet" not in text


def test_report_needs_the_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("## Benchmarks\n")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(path, tmp_path)


def test_faults_block_is_rendered_and_replaced(tmp_path):
    from bgl.bench.faults import README_END, README_START, render_markdown
    from bgl.bench.report import replace_block

    row = dict(campaign=0, state_corrupted=True, kills=4, resumes=4, crashes=0,
               trials_run_twice=0, rows_lost=0, rows_rewritten=1, optuna_finished=3,
               optuna_running=0, rows=4, wall_s=99.6, git_commit="0123456789")  # fmt: skip
    second = {**row, "campaign": 1, "rows_rewritten": 0, "optuna_finished": 4}
    table = render_markdown([row, second])
    lines = table.splitlines()
    assert lines[2] == "| 1 | yes | 4 | 4 | 0 | 0 | 0 | 1 | no (3 vs 4) | 100 |"
    assert lines[4] == "| **all** |  | 8 | 8 | 0 | 0 | 0 | 1 | 1/2 |  |"
    assert "commit 0123456" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    replace_block(readme, README_START, README_END, table)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert lines[2] in text


def _fidelity_rows(ibgl_error: float) -> list[dict]:
    base = {"sweep": "k", "theta_gap": 0.5, "ref_lower_grad_norm": 1e-12, "ref_cg_residual": 1e-12,
            "config_width": 4, "omega_numel": 100, "theta_numel": 12, "config_ridge": 0.1,
            "lower_lr": 0.1, "config_lower_lr_scale": 1.0, "config_delta": 0.01}  # fmt: skip
    errors = {"aid": 0.01, "naive": 0.5, "ibgl": ibgl_error, "tbgl": 0.2}  # not registry order
    return [
        {**base, "solver": s, "k": k, "cosine": 0.9, "rel_error": e}
        for s, e in errors.items()
        for k in (1, 5)
    ]


def test_fidelity_columns_follow_the_registry():
    from bgl.bench.report import _fidelity

    text = _fidelity(_fidelity_rows(ibgl_error=0.3))
    assert (
        "| k | ‖θ_k − θ*‖/‖θ*‖ | Naive cos / rel. err | TBGL cos / rel. err | "
        "IBGL cos / rel. err | AID cos / rel. err |" in text
    )
    assert (
        "| 5 | 5.0e-01 | 0.9000 / 5.00e-01 | 0.9000 / 2.00e-01 | 0.9000 / 3.00e-01 | "
        "0.9000 / 1.00e-02 |" in text
    )
    assert "is worst at" not in text  # IBGL's note only where its error exceeds 1
    assert "IBGL is worst at k = 1 (relative error 3" in _fidelity(_fidelity_rows(3.0))
    # rows that name a variant get a column each, beside their solver's
    rows = _fidelity_rows(0.3)
    rows += [
        {**r, "variant": "aid-neumann", "rel_error": 0.04} for r in rows if r["solver"] == "aid"
    ]
    text = _fidelity(rows)
    assert "| AID cos / rel. err | aid-neumann cos / rel. err |" in text
    assert "| 0.9000 / 1.00e-02 | 0.9000 / 4.00e-02 |" in text


def test_gpu_solver_rows_name_the_variant(tmp_path):
    row = {"device": "cuda:NVIDIA H100 80GB HBM3", "config_crop": 512, "config_batch_size": 2,
           "config_width": 32, "time_s": 0.25, "peak_bytes": 2**30, "time_ratio": 2.1,
           "peak_ratio": 1.1}  # fmt: skip
    rows = [{**row, "solver": "naive", "variant": "naive", "time_ratio": 1.0},
            {**row, "solver": "aid", "variant": "aid-5"}]  # fmt: skip
    write_rows(rows, tmp_path / "solvers-2026-01-01T000000+0000.parquet")
    text = render(tmp_path)
    assert "aid-5 250 ms, 1024 MiB (2.10× / 1.10× naive)" in text
    assert "Not measured yet" not in text
