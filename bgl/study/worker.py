"""One trial's training, as a Ray Train worker (one rank) or inside the Tune trial itself.

Builds task, models, data (sharded by rank) and solver from the trial's run config; every
gradient goes through an all-reduce mean (`reduce`), since DDP's reducer does not see the
solvers' `torch.autograd.grad`. Every rank reports at each evaluation (rank 0 with a
checkpoint), and a restarted worker group (or trial) resumes from the last checkpoint.

`api` selects the reporting module: `ray.train` inside a TorchTrainer worker, `ray.tune` when a
single-worker trial trains in the trial process (`resources.launcher: in_trial`), which skips
Ray Train's controller and worker-group start-up.

A trial whose loop config names `export_checkpoint` (a transfer study's stage 1) saves its final
checkpoint there when it completes, for stage 2 to load and freeze.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bgl.config import from_dict
from bgl.results.report import END_REPORT_NAME, FINAL_KEY, flatten_summary
from bgl.study import faults
from bgl.train.checkpoint import CHECKPOINT_NAME
from bgl.train.loop import Callbacks, DivergedError, Trainer

EXPORT_KEY = "export_checkpoint"  # loop config: where a completed run saves its checkpoint
TRIAL_START_KEY = "trial_started_unix"  # loop config: the trial's start, on the wall clock
#: a trial row's start-up breakdown (seconds; see `StartupClock`)
STARTUP_COLUMNS = ("startup_workers_s", "startup_build_s", "startup_first_report_s")


def _api(name: str) -> Any:
    import ray.train
    import ray.tune

    return {"train": ray.train, "tune": ray.tune}[name]


def report_with_checkpoint(trainer: Trainer, metrics: dict[str, Any], api: str = "train") -> None:
    """Every rank reports; rank 0 attaches the checkpoint (V2 keeps metrics with checkpoints).
    The final report is also written into its checkpoint (`END_REPORT_NAME`), so a resume can
    recover it when the driver died before it arrived (`bgl.study.tune_state`)."""
    module = _api(api)
    if trainer.rank != 0:
        module.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save(Path(tmp) / CHECKPOINT_NAME)
        if metrics.get(FINAL_KEY):
            text = json.dumps(metrics, default=_plain)
            (Path(tmp) / END_REPORT_NAME).write_text(text)
        module.report(metrics, checkpoint=module.Checkpoint.from_directory(tmp))


def _plain(value: Any) -> Any:
    """JSON for the odd report value (NumPy scalars, paths)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class StartupClock:
    """Where a trial's start-up goes, on the wall clock shared by the trial and its workers:
    reaching the training function (Ray Train: controller, worker group, process group, the
    worker's imports), building task, data and models, and the step-0 evaluation with its first
    checkpoint report. Rank 0's figures go into the final report."""

    def __init__(self, trial_started: float | None, entered: float | None = None) -> None:
        self.trial_started = trial_started
        self.entered = entered if entered is not None else time.time()
        self.built: float | None = None
        self.first_report: float | None = None

    def columns(self) -> dict[str, float]:
        marks = (self.trial_started, self.entered, self.built, self.first_report)
        if any(m is None for m in marks):
            return {}
        return {
            name: float(b - a)
            for name, a, b in zip(STARTUP_COLUMNS, marks[:-1], marks[1:], strict=True)
        }


class _RayReporter(Callbacks):
    def __init__(self, api: str, clock: StartupClock | None = None) -> None:
        self.api = api
        self.clock = clock

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        from bgl.train.device import peak_memory_bytes

        row = {
            **metrics,
            "step": trainer.step,
            "phase": trainer.phase,
            "peak_memory_mib": peak_memory_bytes(trainer.device) / 2**20,
        }
        report_with_checkpoint(trainer, row, self.api)
        if self.clock is not None and self.clock.first_report is None:
            self.clock.first_report = time.time()
        if trainer.rank == 0:
            faults.mark("report", trainer.cfg.name)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The TorchTrainer's per-worker function."""
    import ray.train
    import ray.train.torch

    from bgl.train.distributed import default_reduce

    clock = StartupClock(config.get(TRIAL_START_KEY))
    ctx = ray.train.get_context()
    trainer = Trainer(
        from_dict(config["run"]),
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        reduce=default_reduce(),
        device=ray.train.torch.get_device(),
    )
    clock.built = time.time()
    run_and_report(trainer, config, "train", clock=clock)


def run_and_report(
    trainer: Trainer,
    config: dict[str, Any],
    api: str,
    extra: dict[str, Any] | None = None,
    started: float | None = None,
    clock: StartupClock | None = None,
) -> None:
    """Resume from the last checkpoint if any, train, report evaluations and the summary.
    With `clock`, the final report carries the start-up breakdown (a resumed run's is its
    restart's)."""
    checkpoint = _api(api).get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.resume(Path(folder) / CHECKPOINT_NAME)
    if trainer.rank == 0:
        faults.mark("start", trainer.cfg.name)
    try:
        summary = trainer.fit(callbacks=_RayReporter(api, clock))
    except DivergedError as exc:
        summary = trainer.summary(status="diverged", error=str(exc))
    export = config.get(EXPORT_KEY)
    if export and trainer.rank == 0 and summary["status"] == "completed":
        trainer.save(export)  # before the final report: a completed trial implies the file
    final = final_report(summary, trainer.history, config["objectives"])
    final.update(extra or {})
    final.update(clock.columns() if clock is not None else {})
    if api == "train":  # the trial process measures the rest (`teardown_s`)
        final["final_report_unix"] = time.time()
    if started is not None:  # in-trial: this process's clock is the trial's
        final["trial_wall_s"] = time.perf_counter() - started
    report_with_checkpoint(trainer, final, api)


def final_report(
    summary: dict[str, Any], history: list[dict[str, Any]], objectives: list[str]
) -> dict[str, Any]:
    """The run summary as a flat report; objectives are NaN unless the run completed."""
    report: dict[str, Any] = {FINAL_KEY: True, **flatten_summary(summary)}
    report.update(summary["final"])
    report["peak_memory_mib"] = summary["peak_memory_bytes"] / 2**20
    for metric in objectives:
        if summary["status"] != "completed" or metric not in report:
            report[metric] = math.nan  # Optuna records the trial as failed, not as a value
    report["history_json"] = json.dumps(history, default=float)
    return report
