"""`bgl bench study`: what Ray adds to a trial, and 1 vs 2 workers.

The same tiny training runs in-process (`Trainer.fit`) and as a one-trial study with 1 and
with 2 Ray Train workers (gloo on CPU). Overhead = the trial's wall time minus the in-process
run's. Rows go to Parquet; nothing here is asserted.
"""

from __future__ import annotations

import copy
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

BASE: dict[str, Any] = {
    "task": {"name": "enhance", "options": {"width": 8}},
    "model": {"generator_width": 8},
    "data": {
        "train_size": 32,
        "val_size": 8,
        "test_size": 8,
        "crop": 64,
        "batch_size": 4,
        "val_batch_size": 4,
        "eval_batch_size": 8,
    },
    "solver": {"name": "ibgl", "k": 1},
    "train": {
        "warm_steps": 20,
        "steps": 20,
        "eval_every": 20,
        "log_every": 10,
        "checkpoint_every": 40,
        "device": "cpu",
    },
}


def run_study_bench(
    out_dir: str | Path = "results/bench",
    console: Console | None = None,
    setups: tuple[tuple[str, int], ...] = (("in_trial", 1), ("ray_train", 1), ("ray_train", 2)),
    base: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    from bgl.config import from_dict
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions
    from bgl.study.runner import run_study
    from bgl.study.schema import parse_study
    from bgl.train.loop import Trainer

    base = copy.deepcopy(base or BASE)
    console = console or Console()
    start = time.perf_counter()
    Trainer(from_dict(base)).fit()
    in_process = time.perf_counter() - start
    rows = [
        {
            "mode": "in-process",
            "workers": 1,
            "wall_s": in_process,
            "train_s": in_process,
            "overhead_s": 0.0,
        }
    ]
    with tempfile.TemporaryDirectory(prefix="bgl-bench-") as tmp:
        for launcher, n in setups:
            study = parse_study(
                {
                    "name": f"overhead-{launcher}-{n}w",
                    "output_dir": tmp,
                    "base": base,
                    "search": {"solvers": [base["solver"]["name"]], "num_samples": 1},
                    "resources": {
                        "workers_per_trial": n,
                        "cpus_per_worker": 1.0 / n,
                        "max_concurrent_trials": 1,
                        "launcher": launcher,
                    },
                    "logging": {"tensorboard": False},
                }
            )
            console.log(f"one-trial study, {launcher}, {n} worker(s) ...")
            folder = run_study(study, live=False)
            (trial,) = [pq.read_table(p).to_pylist()[0] for p in (folder / "trials").glob("*")]
            rows.append(
                {
                    "mode": f"study/{launcher}",
                    "workers": n,
                    "wall_s": trial["trial_wall_s"],
                    "train_s": trial["wall_time_s"],
                    "overhead_s": trial["trial_wall_s"] - in_process,
                    "status": trial["status"],
                }
            )
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        row.update(
            benchmark="study_overhead",
            timestamp=stamp,
            git_commit=git_commit(),
            ray=library_versions().get("ray"),
        )
    write_rows(rows, Path(out_dir) / f"study-{stamp.replace(':', '')}.parquet")
    table = Table(title="Ray per-trial overhead (same tiny training)")
    for col in ("mode", "workers", "trial wall (s)", "training (s)", "overhead (s)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["mode"],
            str(r["workers"]),
            f"{r['wall_s']:.1f}",
            f"{r['train_s']:.1f}",
            f"{r['overhead_s']:.1f}",
        )
    console.print(table)
    return rows
