"""Run, resume or extend a study: pre-flight, the driver lock, the plan, the searcher, and as
many Tune experiments (`bgl.study.experiment`) as it takes to finish the plan."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bgl.config import ConfigError
from bgl.study.experiment import TUNE_DIR, Live, fit_experiment, ray_session
from bgl.study.journal import driver_lock
from bgl.study.plan import Plan, read_plan, write_plan
from bgl.study.preflight import preflight
from bgl.study.reconcile import reconcile
from bgl.study.schema import StudyConfig

log = logging.getLogger(__name__)


def build_searcher(study: StudyConfig, target: int) -> Any:
    """The study's searcher: Optuna on the study's journal, `target` trials in all."""
    import optuna

    from bgl.study.journal import load_trials, open_journal
    from bgl.study.searcher import StudySearch
    from bgl.study.space import define_by_run

    storage = open_journal(study.study_dir)
    sampler = (
        optuna.samplers.RandomSampler(seed=study.sampler_seed)
        if study.sampler == "random"
        else optuna.samplers.TPESampler(seed=study.sampler_seed)
    )
    metrics = [o.metric for o in study.objectives]
    modes = [o.mode for o in study.objectives]
    fresh = not load_trials(storage, study.name)  # initial points were queued at the start
    return StudySearch(
        space=define_by_run(study),
        metric=metrics if study.multi_objective else metrics[0],
        mode=modes if study.multi_objective else modes[0],
        sampler=sampler,
        points_to_evaluate=(study.initial or None) if fresh else None,
        storage=storage,
        study_name=study.name,
        target=target,
        max_concurrent=study.resources.max_concurrent_trials,
    )


def run_study(
    study: StudyConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    extend: int | None = None,
    live: Live = True,
    dashboard: bool = False,
) -> Path:
    """Run, resume, or extend (`extend` more trials) a study; returns the study folder.

    Extending starts a new Tune experiment in the same folder on the same Optuna study (the
    journal), so the sampler learns from every earlier trial and rows join the same tables.
    A transfer study (`type: transfer`) runs its two stages (`bgl.study.transfer`).
    """
    if address and not Path(study.output_dir).is_absolute():
        log.warning(
            "output_dir %r is relative: on a cluster it must be a shared folder every node "
            "sees (e.g. --set output_dir=/mnt/bgl-results)",
            study.output_dir,
        )
    if resume and extend:
        raise ConfigError("--resume and --extend: choose one")
    preflight(study, address)
    if study.transfer is not None:
        if extend:
            raise ConfigError(
                "--extend: a transfer study is a fixed design (every source x target once); "
                "add tasks or solvers under a new --set name=..."
            )
        from bgl.study.transfer import run_transfer

        return run_transfer(study, address=address, resume=resume, live=live, dashboard=dashboard)
    tune_dir = study.study_dir / TUNE_DIR
    if (resume or extend) and not tune_dir.exists():
        raise ConfigError(f"--{'resume' if resume else 'extend'}: no study at {tune_dir}")
    if extend and study.sampler == "grid":
        raise ConfigError("--extend: a grid study has no sampler to draw more trials from")
    if not (resume or extend) and tune_dir.exists():
        raise ConfigError(
            f"{study.study_dir} already holds a study: pass --resume to finish it, or remove "
            "the folder (or choose another name with --set name=...) to start again"
        )
    with driver_lock(study.study_dir), ray_session(address, dashboard, study):
        if resume:
            _resume(study, live)
        elif extend:
            _extend(study, extend, live)
        else:
            target = None if study.sampler == "grid" else study.num_samples
            write_plan(study.study_dir, Plan(target, [TUNE_DIR]))
            _fit_new(study, TUNE_DIR, study.num_samples, target, live)
    return study.study_dir


def _resume(study: StudyConfig, live: Live) -> None:
    """Restore the study's last Tune experiment, then run what it could not (see reconcile)."""
    plan = read_plan(study)
    last = study.study_dir / plan.experiments[-1]
    restored = fit_experiment(
        study, last, resume=True, tune_config=None, param_space=None, live=live
    )
    if plan.target is None:  # a grid
        if not restored:  # Tune's state is unusable: the rows say which points are left
            _resume_grid(study, plan, live)
        return
    rec = reconcile(study, last if restored else None)  # None: Tune's state is not used
    remaining = plan.target - len(rec.rows)
    if remaining > 0:
        name = _next_name(study, plan, "resume")
        log.info("%s: %d trials left to run, in %s", study.name, remaining, name)
        _fit_new(study, name, remaining, plan.target, live)


def _resume_grid(study: StudyConfig, plan: Plan, live: Live) -> None:
    """Run the grid points no row holds, in a new experiment: a driver killed while Tune copied
    its state leaves that state torn (Tune writes it in place), and the grid is the study's
    design, so the rows alone say what is left. A trial that was running restarts from scratch
    (its checkpoints belong to the torn experiment)."""
    from bgl.results.tables import finished_trials, read_row
    from bgl.study.space import missing_grid_points

    done = []  # the restore attempt has reconciled the records already
    for trial_id in sorted(finished_trials(study.study_dir)):
        row = read_row(study.study_dir, trial_id)
        done.append({k[len("param.") :]: v for k, v in row.items() if k.startswith("param.")})
    missing = missing_grid_points(study, done)
    log.warning(
        "%s: Tune's state is unreadable; %d of the grid's points have no row and run now "
        "(any that was running restarts from scratch)",
        study.name,
        len(missing),
    )
    if not missing:
        return
    name = _next_name(study, plan, "resume")
    fit_experiment(
        study,
        study.study_dir / name,
        resume=False,
        tune_config=_points_config(study, missing),
        param_space=_points_space(missing),
        live=live,
    )


def _points_config(study: StudyConfig, points: list[dict[str, Any]]) -> Any:
    """A Tune config that runs exactly `points` (trial configs), each once."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.TuneConfig(
        search_alg=BasicVariantGenerator(
            points_to_evaluate=points, max_concurrent=study.resources.max_concurrent_trials
        ),
        num_samples=len(points),
        reuse_actors=True,
    )


def _points_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Tune only accepts preset points whose keys its space has, with values in their domain."""
    from ray import tune

    space: dict[str, Any] = {}
    for point in points:
        for key, value in point.items():
            values = space.setdefault(key, [])
            if value not in values:
                values.append(value)
    return {key: tune.choice(values) for key, values in space.items()}


def _extend(study: StudyConfig, extra: int, live: Live) -> None:
    """More trials on the same Optuna study (the sampler learns from every earlier trial)."""
    plan = read_plan(study)
    rec = reconcile(study, study.study_dir / plan.experiments[-1])
    if plan.target is not None and len(rec.rows) < plan.target:
        raise ConfigError(
            f"--extend: {study.name} has {len(rec.rows)} of its {plan.target} trials; "
            "finish it with --resume first"
        )
    plan.target = len(rec.rows) + extra
    _fit_new(study, _next_name(study, plan, "ext"), extra, plan.target, live)


def _next_name(study: StudyConfig, plan: Plan, kind: str) -> str:
    n = 1
    while (
        f"{TUNE_DIR}-{kind}{n}" in plan.experiments
        or (study.study_dir / f"{TUNE_DIR}-{kind}{n}").exists()
    ):
        n += 1
    name = f"{TUNE_DIR}-{kind}{n}"
    plan.experiments.append(name)
    write_plan(study.study_dir, plan)
    return name


def _fit_new(
    study: StudyConfig, name: str, num_samples: int, target: int | None, live: Live
) -> None:
    fit_experiment(
        study,
        study.study_dir / name,
        resume=False,
        tune_config=_tune_config(study, num_samples, target),
        param_space=_param_space(study),
        live=live,
    )


def _tune_config(study: StudyConfig, num_samples: int, target: int | None) -> Any:
    from ray import tune

    single = None if study.multi_objective else study.objectives[0]
    scheduler = None
    if study.scheduler is not None:
        from ray.tune.schedulers import ASHAScheduler

        s = study.scheduler
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            max_t=s.max_t or 10**6,
        )
    grid = study.sampler == "grid"
    return tune.TuneConfig(
        search_alg=None if grid else build_searcher(study, target or num_samples),
        scheduler=scheduler,
        metric=single.metric if single and scheduler else None,
        mode=single.mode if single and scheduler else None,
        num_samples=num_samples,
        # a searcher limits concurrency itself (StudySearch: resume-safe)
        max_concurrent_trials=study.resources.max_concurrent_trials if grid else None,
        # a trial process that ended hosts the next trial: no new process, no second import of
        # torch, torchmetrics and torchvision (seconds per trial; every trial asks the same
        # resources, and each seeds and builds everything it uses anew)
        reuse_actors=True,
    )


def _param_space(study: StudyConfig) -> dict[str, Any] | None:
    if study.sampler == "grid":
        from bgl.study.space import grid_space

        return grid_space(study)
    return None
