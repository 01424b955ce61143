"""`bgl bench study`: what Ray adds to a trial, 1 vs 2 workers, and how far bgl is from Ray's
own floor.

The same tiny training runs in-process (`Trainer.fit`) and as a one-trial study with 1 and with
2 Ray Train workers (gloo on CPU). Overhead = the trial's wall time minus its own training loop's;
its breakdown comes from the trial row's start-up columns (`bgl.study.worker.StartupClock`).
Beside it, a bare TorchTrainer whose loop only reports, launched from a Tune trial as bgl
launches its own: `vs bare` is what bgl adds over Ray. Rows go to Parquet; nothing is asserted.
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
        "select_size": 8,
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


#: the bgl setups measured: (launcher, workers)
SETUPS: tuple[tuple[str, int], ...] = (("in_trial", 1), ("ray_train", 1), ("ray_train", 2))
#: a trial row's start-up breakdown, in the order it happens
PHASES = ("startup_workers_s", "startup_build_s", "startup_first_report_s", "teardown_s")


def run_study_bench(
    out_dir: str | Path = "results/bench",
    console: Console | None = None,
    setups: tuple[tuple[str, int], ...] = SETUPS,
    base: dict[str, Any] | None = None,
    bare: tuple[int, ...] = (1, 2),
) -> list[dict[str, Any]]:
    """In-process training, each setup as a one-trial study, and a bare TorchTrainer (its loop
    only reports) launched from a Tune trial as bgl launches its own, with `bare` workers; all
    on one Ray instance. Rows: wall, training, overhead and the start-up breakdown."""
    from bgl.config import from_dict
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions
    from bgl.study.experiment import ray_session
    from bgl.study.runner import run_study
    from bgl.study.schema import parse_study
    from bgl.train.loop import Trainer

    base = copy.deepcopy(base or BASE)
    console = console or Console()
    Trainer(from_dict(base))  # imports done: the baseline pays none, a trial's own are overhead
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
    with tempfile.TemporaryDirectory(prefix="bgl-bench-") as tmp, ray_session(None):
        for n in bare:
            console.log(f"bare TorchTrainer in a Tune trial, {n} worker(s) ...")
            wall = bare_torch_trainer_trial(n, Path(tmp) / "bare")
            rows.append(
                {"mode": "bare TorchTrainer", "workers": n, "wall_s": wall, "overhead_s": wall}
            )
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
                    # everything but the trial's own training loop
                    "overhead_s": trial["trial_wall_s"] - trial["wall_time_s"],
                    "status": trial["status"],
                    **{k: trial.get(k) for k in PHASES},
                }
            )
    bare_wall = {r["workers"]: r["wall_s"] for r in rows if r["mode"] == "bare TorchTrainer"}
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        if row["mode"] == "study/ray_train" and row["workers"] in bare_wall:
            row["over_bare_s"] = row["overhead_s"] - bare_wall[row["workers"]]
        row.update(
            benchmark="study_overhead",
            timestamp=stamp,
            git_commit=git_commit(),
            ray=library_versions().get("ray"),
        )
    write_rows(rows, Path(out_dir) / f"study-{stamp.replace(':', '')}.parquet")
    console.print(_table(rows))
    return rows


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Ray per-trial overhead (same tiny training; seconds)")
    heads = (
        "mode",
        "n",
        "wall",
        "train",
        "overhead",
        "vs bare",
        "reach",
        "build",
        "1st rep",
        "end",
    )
    for col in heads:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [r.get(k) for k in ("wall_s", "train_s", "overhead_s", "over_bare_s", *PHASES)]
        table.add_row(
            r["mode"], str(r["workers"]), *("-" if v is None else f"{v:.1f}" for v in cells)
        )
    table.caption = (
        "reach: trial start -> the training function (Ray Train: controller, worker group, process "
        "group, imports); build: data and models; 1st rep: step-0 evaluation and checkpoint; "
        "end: last report -> fit() returns"
    )
    return table


def bare_torch_trainer_trial(workers: int, storage: Path) -> float:
    """Ray's floor: one Tune trial whose TorchTrainer loop only reports, launched with bgl's
    trial resources, gloo backend and report callback; its trial wall time (s)."""
    from ray import tune

    from bgl.study.schema import Resources

    tuner = tune.Tuner(
        tune.with_resources(_bare_trial, {"cpu": Resources().trial_cpus}),
        param_space={"workers": workers, "storage": str(storage)},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name=f"bare-{workers}w", storage_path=str(storage), verbose=0),
    )
    (result,) = list(tuner.fit())
    return float(result.metrics["trial_wall_s"])


def _bare_trial(config: dict[str, Any]) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    start = time.perf_counter()
    n = config["workers"]
    TorchTrainer(
        _report_only,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=n, resources_per_worker={"CPU": 1.0 / n}
        ),
        run_config=ray.train.RunConfig(
            name=f"bare-train-{n}w",
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
        ),
    ).fit()
    tune.report({"trial_wall_s": time.perf_counter() - start})


def _report_only(config: dict[str, Any]) -> None:
    import ray.train

    ray.train.report({"reported": 1})  # not `done`: Tune would end the trial on it
