"""`bgl bench coupling`: rows from real (tiny) runs, the summary over seeds, the README table."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from bgl.bench.coupling import (
    SETTINGS,
    Setting,
    base_config,
    render_markdown,
    run_coupling_bench,
    summarise,
)
from tests.conftest import tiny_config_dict


def test_tiny_runs_record_coupling_per_solver(tmp_path: Path) -> None:
    run_yaml = tmp_path / "tiny.yaml"
    config = tiny_config_dict(tmp_path, task={"options": {"width": 4, "input_gain": 30}})
    run_yaml.write_text(yaml.safe_dump(config))
    setting = Setting("tiny enhance", str(run_yaml), ("train.steps=3",), "", ("psnr_generator",))
    rows = run_coupling_bench(
        settings=[setting], solvers=["naive", "ibgl"], seeds=[0, 1], jobs=1, out_dir=tmp_path
    )
    assert [(r["solver"], r["seed"]) for r in rows] == [
        ("naive", 0), ("naive", 1), ("ibgl", 0), ("ibgl", 1)
    ]  # fmt: skip
    assert all(r["status"] == "completed" for r in rows)
    assert all(r["coupling_mean"] == 0 for r in rows if r["solver"] == "naive")
    assert all(r["coupling_mean"] > 0 and r["k"] == 2 for r in rows if r["solver"] == "ibgl")
    assert all(r["metric"] == "psnr" and r["psnr_generator"] < r["value"] + 50 for r in rows)
    # the reported numbers are the test split's: the same run, scored on its test split alone
    from bgl.config import from_dict
    from bgl.train.loop import Trainer

    again = Trainer(from_dict({**config, "seed": 0, "solver": {"name": "naive", "k": 2}}))
    again.cfg.train.steps = 3
    again.fit()
    test = again._score(again.test_set)
    naive0 = rows[0]
    assert naive0["value"] == pytest.approx(test["psnr"], abs=1e-6)
    assert naive0["psnr_input"] == pytest.approx(test["psnr_input"], abs=1e-6)
    (written,) = tmp_path.glob("coupling-*.parquet")
    assert pq.read_table(written).num_rows == 4
    lines = summarise(rows)
    ibgl = next(line for line in lines if line["solver"] == "ibgl")
    values = [r["value"] for r in rows if r["solver"] == "ibgl"]
    assert ibgl["value_mean"] == pytest.approx(sum(values) / 2)
    assert ibgl["coupling_min"] <= ibgl["coupling_mean"] <= ibgl["coupling_max"]
    table = render_markdown(rows)
    assert table.count("| tiny enhance |") == 2 and "| IBGL | 2 |" in table


def test_a_failed_run_is_counted_not_fatal() -> None:
    rows = [
        {"setting": "s", "solver": "tbgl", "seed": 0, "metric": "psnr", "status": "failed"},
        {"setting": "s", "solver": "tbgl", "seed": 1, "metric": "psnr", "status": "completed",
         "value": 12.0, "coupling_mean": 0.2},
    ]  # fmt: skip
    (line,) = summarise(rows)
    assert line["failed"] == 1 and line["value_mean"] == 12.0 and line["value_std"] is None
    assert "2 (1 failed)" in render_markdown(rows)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.label for s in SETTINGS])
def test_every_setting_builds_a_valid_config(setting: Setting) -> None:
    from bgl.config import apply_overrides, from_dict

    data = base_config(setting.source)
    apply_overrides(data, list(setting.overrides))
    from_dict(data)


def test_merged_rows_keep_the_newest_run_per_setting_solver_seed(tmp_path: Path) -> None:
    from bgl.bench.coupling import merged_rows
    from bgl.results.parquet import write_rows

    def row(setting: str, seed: int, value: float) -> dict:
        return {"setting": setting, "solver": "naive", "seed": seed, "metric": "psnr",
                "status": "completed", "value": value, "coupling_mean": 0.0}  # fmt: skip

    label = SETTINGS[0].label
    write_rows([row("other", 0, 1.0), row(label, 0, 2.0)], tmp_path / "coupling-20260101T0.parquet")
    write_rows([row(label, 0, 3.0)], tmp_path / "coupling-20260102T0.parquet")
    merged = merged_rows(tmp_path)
    assert [(r["setting"], r["value"]) for r in merged] == [(label, 3.0), ("other", 1.0)]
    assert f"{label}: {SETTINGS[0].note}" in render_markdown(merged)  # the setting's note shown
