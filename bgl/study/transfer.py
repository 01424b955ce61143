"""Transfer studies (the paper's Table 3): train F on a basic task, freeze it, train other tasks.

Stage 1 (`source`): one trial per basic task x strategy, each an ordinary bilevel training
(any registered solver) whose final checkpoint is exported to `<study>/generators/<model>.pt`.
Models are named in that order, M_a, M_b, ... (basic tasks outer, strategies inner), so the
paper's design -- detection or enhancement x end-to-end ("naive" in the paper: bgl's `joint`)
or IBGL -- gives M_a..M_d.
Stage 2 (`target`): one trial per model x target task, F loaded from stage 1 and frozen
(`model.freeze_generator`), a fresh task network trained on the target's own data.

```yaml
name: transfer
type: transfer
base: {...}                         # shared run config: seed, model, solver k/delta, optim, train,
                                    # data sizes; not task, solver.name, data.name/root
transfer:
  source_tasks: [detect, enhance]   # basic tasks
  source_solvers: [joint, ibgl]     # strategies (any registered solver)
  target_tasks: [enhance, detect, segment]
  tasks:                            # per task, run-config keys over base (data.name defaults:
    enhance: {task: {options: {width: 16}}, data: {name: sid, root: /data/SID}}   # synthetic,
    detect: {data: {name: darkface, root: /data/DarkFace}}         # synthetic_faces,
    segment: {data: {name: acdc, root: /data/ACDC}}                # synthetic_street)
  source: {train: {...}}            # stage-1 only keys (optional)
  target: {train: {...}}            # stage-2 only keys (optional)
resources: {...}                    # as in any study
logging: {...}
```
Each trial is a Tune trial of the ordinary trial function; its identity (stage, model,
source_task, strategy, target_task) travels in the Tune config under `transfer` and becomes plain
columns of the trial's Parquet row. A finished stage is marked in `<study>/stages/`; `--resume`
skips it and restores an interrupted one, so finished trials are never run or written again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgl.config import ConfigError, RunConfig
from bgl.study.design import STAGES, TransferSpec, generator_path
from bgl.study.schema import StudyConfig

if TYPE_CHECKING:
    from bgl.study.experiment import Live

log = logging.getLogger(__name__)


def trial_setup(
    study: StudyConfig, identity: dict[str, Any], trial_name: str
) -> tuple[RunConfig, list[str], str | None]:
    """A transfer trial's run config, objective metric and (stage 1) export path."""
    return study.transfer_trial(identity, trial_name)


# -- running ----------------------------------------------------------------------------------


def stage_marker(study: StudyConfig, stage: str) -> Path:
    return study.study_dir / "stages" / f"{stage}.done"


def stage_dir(study: StudyConfig, stage: str) -> Path:
    from bgl.study.experiment import TUNE_DIR

    return study.study_dir / f"{TUNE_DIR}-{stage}"


def run_transfer(
    study: StudyConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    live: Live = True,
    dashboard: bool = False,
) -> Path:
    """Stage 1 then stage 2, each a Tune experiment in the study folder; returns the folder."""
    from bgl.study.experiment import ray_session
    from bgl.study.journal import driver_lock

    spec = study.transfer
    assert spec is not None
    first = stage_dir(study, "source")
    if resume and not first.exists():
        raise ConfigError(f"--resume: no study at {first}")
    if not resume and first.exists():
        raise ConfigError(
            f"{study.study_dir} already holds a study: pass --resume to finish it, or remove "
            "the folder (or choose another name with --set name=...) to start again"
        )
    pending = [s for s in STAGES if not stage_marker(study, s).exists()]
    for stage in STAGES:
        if stage not in pending:
            log.info("transfer %s: stage %s already finished, skipped", study.name, stage)
    if not pending:
        return study.study_dir
    with driver_lock(study.study_dir), ray_session(address, dashboard, study):
        for stage in pending:
            _run_stage(study, spec, stage, resume=resume, live=live)
    return study.study_dir


def _run_stage(
    study: StudyConfig, spec: TransferSpec, stage: str, *, resume: bool, live: Live
) -> None:
    from ray import tune

    from bgl.study.experiment import fit_experiment
    from bgl.study.schema import Objective
    from bgl.tasks import task_class

    trials = spec.trials(stage)
    if stage == "target":
        ready = study.generators_dir
        missing = [t for t in trials if not generator_path(ready, t.model).exists()]
        for model in dict.fromkeys(t.model for t in missing):
            log.warning(
                "transfer %s: %s has no trained generator; its targets are skipped",
                study.name,
                model,
            )
        trials = [t for t in trials if t not in missing]
    if trials:
        first = task_class(trials[0].task)
        shown = dataclasses.replace(  # the live table's metric column
            study, objectives=[Objective(first.primary_metric, first.mode)]
        )
        space = {"transfer": tune.grid_search([t.identity() for t in trials])}
        tune_dir = stage_dir(study, stage)
        restored = fit_experiment(
            shown,
            tune_dir,
            resume=resume and tune_dir.exists(),
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=study.resources.max_concurrent_trials
            ),
            param_space=space,
            live=live,
        )
        if not restored:
            raise ConfigError(
                f"{tune_dir}: the stage's Tune state is unreadable, so its unfinished trials "
                "cannot be found; finished rows are kept. Start again under a new --set name=..."
            )
    marker = stage_marker(study, stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps([t.key for t in trials]) + "\n")
