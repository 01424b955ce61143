"""Ray Train worker: one rank of one trial's training.

Builds task, models, data (sharded by rank) and solver from the trial's run config; every
gradient goes through an all-reduce mean (`reduce`), since DDP's reducer does not see the
solvers' `torch.autograd.grad`. Every rank reports at each evaluation (rank 0 with a
checkpoint), and a restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from bgl.config import from_dict
from bgl.train.checkpoint import CHECKPOINT_NAME
from bgl.train.loop import Callbacks, DivergedError, Trainer

FINAL_KEY = "bgl_final"  # marks the last report of a trial (the run summary)


def report_with_checkpoint(trainer: Trainer, metrics: dict[str, Any]) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (V2 keeps metrics with checkpoints)."""
    import ray.train

    if trainer.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save(Path(tmp) / CHECKPOINT_NAME)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _RayReporter(Callbacks):
    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        from bgl.results.provenance import peak_memory_bytes

        report_with_checkpoint(
            trainer,
            {
                **metrics,
                "step": trainer.step,
                "phase": trainer.phase,
                "peak_memory_mib": peak_memory_bytes(trainer.device) / 2**20,
            },
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from bgl.train.distributed import default_reduce

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = from_dict(config["run"])
    trainer = Trainer(
        cfg, rank=rank, world=world, reduce=default_reduce(), device=ray.train.torch.get_device()
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.resume(Path(folder) / CHECKPOINT_NAME)
    try:
        summary = trainer.fit(callbacks=_RayReporter())
    except DivergedError as exc:
        summary = trainer.summary(status="diverged", error=str(exc))
    report_with_checkpoint(trainer, final_report(summary, trainer.history, config["objectives"]))


def final_report(
    summary: dict[str, Any], history: list[dict[str, Any]], objectives: list[str]
) -> dict[str, Any]:
    """The run summary as a flat report; objectives are NaN unless the run completed."""
    report: dict[str, Any] = {FINAL_KEY: True}
    for key, value in summary.items():
        if isinstance(value, dict):
            report.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            report[key] = value
    report.update(summary["final"])
    report["peak_memory_mib"] = summary["peak_memory_bytes"] / 2**20
    for metric in objectives:
        if summary["status"] != "completed" or metric not in report:
            report[metric] = math.nan  # Optuna records the trial as failed, not as a value
    report["history_json"] = json.dumps(history, default=float)
    return report
