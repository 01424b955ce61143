"""The scaling and develop benchmarks run at a tiny size and write well-formed rows."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from bgl.bench.report import _scaling
from bgl.bench.scaling import (
    DevelopBenchConfig,
    ScalingConfig,
    run_develop_bench,
    run_scaling_bench,
)


@pytest.mark.slow  # process start-up of the gloo workers dominates: ~20-50 s on 2 busy CPUs
def test_scaling_bench_one_and_two_gloo_workers(tmp_path):
    cfg = ScalingConfig(
        crop=32, batch_size=1, width=4, lower_width=4, repeats=1, warmup=1, rounds=1
    )
    rows = run_scaling_bench(cfg, out_dir=tmp_path)
    (path,) = tmp_path.glob("scaling-*.parquet")
    table = pq.read_table(path).to_pylist()
    assert [r["workers"] for r in table] == [r["workers"] for r in rows] == [1, 2]
    one, two = table
    assert one["threads_per_worker"] == 2 and two["threads_per_worker"] == 1
    assert two["samples_per_step"] == 2 * one["samples_per_step"] == 4
    assert one["throughput_ratio"] == 1.0 and two["time_s"] > 0 and two["samples_per_s"] > 0
    assert table[0]["benchmark"] == "scaling" and table[0]["load_avg_before"] >= 0
    assert "| 2 | 1 |" in _scaling(table)  # the report renders these rows


def test_develop_bench_row(tmp_path):
    cfg = DevelopBenchConfig(height=64, width_px=96, width=4, lower_width=4, tile=16, overlap=4)
    (row,) = run_develop_bench(cfg, out_dir=tmp_path)
    (path,) = tmp_path.glob("develop-*.parquet")
    (stored,) = pq.read_table(path).to_pylist()
    assert stored["megapixels"] == row["megapixels"] == 64 * 96 / 1e6
    assert stored["time_s"] > 0 and stored["device"].startswith("cpu")
