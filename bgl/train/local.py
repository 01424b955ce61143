"""One training run on this machine (`bgl train`): progress display, outputs under results/.

Outputs in `<output_dir>/runs/<name>/`: checkpoint.pt, history.parquet (one row per log/eval
point), summary.parquet (one row: status, metrics, provenance, flattened config), config.yaml.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bgl.config import RunConfig, flatten
from bgl.results.parquet import write_rows
from bgl.results.report import flatten_summary
from bgl.train.checkpoint import CHECKPOINT_NAME
from bgl.train.loop import Callbacks, DivergedError, Trainer

log = logging.getLogger(__name__)


class RunExistsError(RuntimeError):
    """The run folder already holds a checkpoint and neither resume nor overwrite was asked."""


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "runs" / cfg.name


class _RichProgress(Callbacks):
    def __init__(self, progress: Progress, task_id: Any, console: Console) -> None:
        self.progress, self.task_id, self.console = progress, task_id, console

    def on_step(self, trainer: Trainer, info: dict[str, float]) -> None:
        loss = info.get("warm_loss", info.get("lower_loss", float("nan")))
        self.progress.update(
            self.task_id, completed=trainer.step, description=f"{trainer.phase:7s} L={loss:.4f}"
        )

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self.console.log(f"step {trainer.step:>6}  {shown}")


def train_local(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) one training; returns the summary, also written to Parquet."""
    console = console or Console()
    run_dir = run_dir_for(cfg)
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not (resume or overwrite):
        raise RunExistsError(
            f"{run_dir} already holds a checkpoint: pass --resume to continue it or "
            "--overwrite to start again"
        )
    trainer = Trainer(cfg)
    if resume:
        if not checkpoint.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        trainer.resume(checkpoint)
        console.log(f"resumed {cfg.name} at step {trainer.step}/{trainer.total_steps}")
    if trainer.frozen:
        console.log(
            f"generator frozen ({cfg.model.generator_checkpoint}): training the task network only"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        task_id = progress.add_task("start", total=trainer.total_steps, completed=trainer.step)
        try:
            summary = trainer.fit(
                run_dir=run_dir, callbacks=_RichProgress(progress, task_id, console)
            )
        except DivergedError as exc:
            log.error("run %s diverged: %s", cfg.name, exc)
            summary = trainer.summary(status="diverged", error=str(exc))
    write_outputs(run_dir, trainer, summary)
    summary["run_dir"] = str(run_dir)
    return summary


def write_outputs(run_dir: Path, trainer: Trainer, summary: dict[str, Any]) -> None:
    write_rows(trainer.history or [{"step": 0}], run_dir / "history.parquet")
    row = flatten_summary(summary)
    row.update({f"config.{k}": v for k, v in flatten(trainer.cfg.to_dict()).items()})
    write_rows([row], run_dir / "summary.parquet")
