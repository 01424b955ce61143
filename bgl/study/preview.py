"""`bgl study plan`: the trials a study will run, worked out without Ray (nor Optuna).

`plan_trials(study)` mirrors what `bgl.study.runner` hands to Tune:

- a grid study (`sampler: grid`): Tune's grid over tasks x solvers x each categorical parameter,
  in Tune's order (axes sorted by key, the first varying fastest), the whole grid `num_samples`
  times; each
  trial's parameters are then trimmed to its solver (`drop_inapplicable`);
- a tpe or random study: the `search.initial` points first (Optuna's enqueued trials: a point's
  value is used where the define-by-run space asks for that key, any other key is ignored), then
  the sampler's draws up to `num_samples`;
- a transfer study: stage 1's sources (M_a, M_b, ...), then stage 2's model x target task.

Every row carries its run settings as `study.trial_config` (or the transfer design) builds them:
solver.k as it will be (naive and TBGL take one lower step), the steps and the dataset. The result
is plain JSON (lists, dicts, strings, numbers, None).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bgl.config import ConfigError, RunConfig
from bgl.solvers import get_solver
from bgl.study.schema import ParamSpec, StudyConfig
from bgl.study.space import drop_inapplicable, grid_points

#: the run settings each row shows, besides its task and solver
SETTINGS = ("data.name", "solver.k", "train.warm_steps", "train.steps")
SAMPLED = "sampled"  # the value of a setting the sampler draws per trial, when no range says more


def plan_trials(study: StudyConfig) -> dict[str, Any]:
    """The study's header and one row per trial, in the order they are started."""
    if study.transfer is not None:
        trials = _transfer_rows(study)
        objectives = list({row["objective"]["metric"]: row["objective"] for row in trials}.values())
        kind, sampler, space = "transfer", "design", []
    else:
        trials = _grid_rows(study) if study.sampler == "grid" else _sampler_rows(study)
        objectives = [asdict(o) for o in study.objectives]
        kind, sampler = "search", study.sampler
        space = [] if study.sampler == "grid" else _space(study)
    r = study.resources
    return {
        "study": study.name,
        "type": kind,
        "source": study.source,
        "study_dir": str(study.study_dir),
        "sampler": sampler,
        "sampler_seed": study.sampler_seed if kind == "search" else None,
        "objectives": objectives,
        "num_samples": study.num_samples if kind == "search" else None,
        "num_trials": len(trials),
        "scheduler": study.scheduler.name if study.scheduler else None,
        "resources": {
            "workers_per_trial": r.workers_per_trial,
            "cpus_per_worker": r.cpus_per_worker,
            "gpus_per_worker": r.gpus_per_worker,
            "launcher": r.launcher,
            "max_concurrent_trials": r.max_concurrent_trials,
        },
        "space": space,
        "trials": trials,
    }


def range_text(p: ParamSpec) -> str:
    """A parameter's search range in a few characters: `1..4`, `0.001..0.1 log`, `[0, 1, 2]`."""
    if p.type == "constant":
        return repr(p.value)
    if p.type == "categorical":
        return "[" + ", ".join(map(str, p.choices or [])) + "]"
    low, high = (int(p.low), int(p.high)) if p.type == "int" else (p.low, p.high)  # type: ignore[arg-type]
    text = f"{low:g}..{high:g}"
    if p.step is not None:
        text += f" step {p.step:g}"
    return text + (" log" if p.log else "")


# -- grid -------------------------------------------------------------------------------------


def _grid_rows(study: StudyConfig) -> list[dict[str, Any]]:
    points = grid_points(study)
    per_sample = len(points) // max(study.num_samples, 1)
    rows = []
    for i, config in enumerate(points):
        params = drop_inapplicable(study, config)
        rows.append(
            {
                "index": i + 1,
                "kind": "grid",
                "sample": i // per_sample + 1,
                "task": params["task.name"],
                "solver": params["solver.name"],
                "params": params,
                "sampled": [],
                "settings": _settings(study.trial_config(params)),
            }
        )
    return rows


# -- tpe / random -----------------------------------------------------------------------------


def _space(study: StudyConfig) -> list[dict[str, Any]]:
    """What the sampler draws: task and solver (when there is a choice), then the ranges."""
    out = []
    for path, options in (("task.name", study.tasks), ("solver.name", study.solvers)):
        if len(options) > 1:
            out.append(
                {"path": path, "type": "categorical", "range": range_text(_choice(path, options))}
            )
    for p in study.params:
        if p.type != "constant":
            out.append(
                {"path": p.path, "type": p.type, "range": range_text(p), "solvers": p.solvers}
            )
    return out


def _choice(path: str, options: list[str]) -> ParamSpec:
    return ParamSpec(path, "categorical", choices=list(options))


def _sampler_rows(study: StudyConfig) -> list[dict[str, Any]]:
    rows = []
    initial = study.initial[: study.num_samples]  # the searcher stops at num_samples trials
    for i, point in enumerate(initial):
        rows.append(_sampler_row(study, len(rows) + 1, "initial", point, f"search.initial[{i}]"))
    for _ in range(study.num_samples - len(initial)):
        rows.append(_sampler_row(study, len(rows) + 1, "sampled", {}, "search"))
    return rows


def _sampler_row(
    study: StudyConfig, index: int, kind: str, point: dict[str, Any], key: str
) -> dict[str, Any]:
    """One trial of the define-by-run space (`bgl.study.space.DefineByRun`), `point` enqueued."""
    picked: dict[str, str | None] = {}
    for path, options in (("task.name", study.tasks), ("solver.name", study.solvers)):
        if len(options) == 1:
            picked[path] = options[0]  # a constant: never asked, so a point cannot change it
        elif path in point:
            if point[path] not in options:
                raise ConfigError(
                    f"{key}.{path}: {point[path]!r} is not one of the study's "
                    f"{path.split('.')[0]}s ({', '.join(options)})"
                )
            picked[path] = point[path]
        else:
            picked[path] = None  # drawn by the sampler
    task, solver = picked["task.name"], picked["solver.name"]
    fixed = {path: value for path, value in picked.items() if value is not None}
    sampled = [path for path, value in picked.items() if value is None]
    asked = {path for path in picked if len(_options(study, path)) > 1}  # suggested by the space
    candidates = [solver] if solver is not None else list(study.solvers)
    for p in study.params:
        if not any(p.applies_to(s) for s in candidates):
            continue
        if p.type == "constant":
            if all(p.applies_to(s) for s in candidates):  # else: set where the solver takes it
                fixed[p.path] = p.value
            continue
        asked.add(p.path)
        if p.path in point:  # the enqueued value, wherever it is asked for
            fixed[p.path] = point[p.path]
        else:
            sampled.append(p.path)
    row: dict[str, Any] = {
        "index": index,
        "kind": kind,
        "task": task,
        "solver": solver,
        "params": fixed,
        "sampled": sampled,
        "settings": _sampled_settings(study, fixed, candidates),
    }
    ignored = sorted(set(point) - asked)
    if ignored:
        row["ignored"] = ignored  # keys of the point the space never asks for: Optuna drops them
    return row


def _options(study: StudyConfig, path: str) -> list[str]:
    return study.tasks if path == "task.name" else study.solvers


def _sampled_settings(
    study: StudyConfig, fixed: dict[str, Any], solvers: list[str]
) -> dict[str, Any]:
    """Each setting as it will be; a sampled one as its range; one that differs by solver (the
    solver itself drawn) as {solver: value}."""
    specs = {p.path: p for p in study.params}
    per_solver = {}
    for solver in solvers:
        constants = {  # a constant that applies to this solver only (`solvers:`) is set for it
            p.path: p.value
            for p in study.params
            if p.type == "constant" and p.applies_to(solver) and p.path not in fixed
        }
        settings = _settings(study.trial_config({**constants, **fixed, "solver.name": solver}))
        for path in SETTINGS:
            p = specs.get(path)
            drawn = p is not None and p.type != "constant" and p.applies_to(solver)
            if path == "solver.k" and not get_solver(solver).takes_k:
                drawn = False  # trial_config sets k = 1 whatever was drawn
            if drawn and path not in fixed:
                settings[path] = range_text(p)  # type: ignore[arg-type]
        if not all(isinstance(settings[k], int) for k in ("train.warm_steps", "train.steps")):
            settings["total_steps"] = SAMPLED
        per_solver[solver] = settings
    merged = {}
    for key in per_solver[solvers[0]]:
        values = {solver: s[key] for solver, s in per_solver.items()}
        distinct = {repr(v) for v in values.values()}
        merged[key] = next(iter(values.values())) if len(distinct) == 1 else values
    return merged


# -- transfer ---------------------------------------------------------------------------------


def _transfer_rows(study: StudyConfig) -> list[dict[str, Any]]:
    from bgl.tasks import task_class

    assert study.transfer is not None
    rows = []
    for trial in [*study.transfer.sources(), *study.transfer.targets()]:
        cfg, _, _ = study.transfer_trial(trial.identity(), trial.key.replace("/", "-"))
        task = task_class(trial.task)
        rows.append(
            {
                "index": len(rows) + 1,
                "kind": trial.stage,
                "stage": 1 if trial.stage == "source" else 2,
                "model": trial.model,
                "source_task": trial.source_task,
                "strategy": trial.strategy,
                "target_task": trial.target_task,
                "task": trial.task,
                "solver": cfg.solver.name,
                "objective": {"metric": task.primary_metric, "mode": task.mode},
                "params": trial.identity(),
                "sampled": [],
                "settings": _settings(cfg),
            }
        )
    return rows


# -- settings ---------------------------------------------------------------------------------


def _settings(cfg: RunConfig) -> dict[str, Any]:
    return {
        "data.name": cfg.data.name,
        "solver.k": cfg.solver.k,
        "train.warm_steps": cfg.train.warm_steps,
        "train.steps": cfg.train.steps,
        "total_steps": cfg.train.warm_steps + cfg.train.steps,
    }
