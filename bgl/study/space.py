"""The search space: Optuna define-by-run (conditional) or a Tune grid, from a StudyConfig.

Trials receive a flat dict of config paths -> values (`{"solver.name": "ibgl", "solver.k": 3,
...}`); conditional parameters are simply absent where they do not apply (the solver registry
says which solver reads which key: k for IBGL and AID, delta for TBGL, ...), and become nulls in
the results table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from bgl.study.schema import ParamSpec, StudyConfig


class DefineByRun:
    """An Optuna define-by-run space for `OptunaSearch(space=...)` (a class: Tune pickles it)."""

    def __init__(self, study: StudyConfig) -> None:
        self.study = study

    def __call__(self, trial: Any) -> dict[str, Any]:
        study = self.study
        constants: dict[str, Any] = {}
        task = _pick(trial, "task.name", study.tasks)
        solver = _pick(trial, "solver.name", study.solvers)
        if len(study.tasks) == 1:
            constants["task.name"] = task
        if len(study.solvers) == 1:
            constants["solver.name"] = solver
        for p in study.params:
            if not p.applies_to(solver):
                continue
            if p.type == "constant":
                constants[p.path] = p.value
            else:
                suggest(trial, p)
        return constants


def define_by_run(study: StudyConfig) -> Callable[[Any], dict[str, Any]]:
    return DefineByRun(study)


def _pick(trial: Any, name: str, options: list[str]) -> str:
    if len(options) == 1:
        return options[0]
    return trial.suggest_categorical(name, options)


def suggest(trial: Any, p: ParamSpec) -> Any:
    if p.type == "int":
        step = int(p.step or 1)
        return trial.suggest_int(p.path, int(p.low), int(p.high), step=step, log=p.log)
    if p.type == "float":
        return trial.suggest_float(p.path, p.low, p.high, log=p.log, step=p.step)
    return trial.suggest_categorical(p.path, p.choices)


def grid_space(study: StudyConfig) -> dict[str, Any]:
    """A Tune param_space of grid_search over tasks x solvers x categorical params.

    Solver-specific parameters are gridded for every solver and ignored by the others' trials
    (`drop_inapplicable`), so a grid should keep them constant.
    """
    from ray import tune

    space: dict[str, Any] = {
        "task.name": tune.grid_search(study.tasks),
        "solver.name": tune.grid_search(study.solvers),
    }
    for p in study.params:
        space[p.path] = p.value if p.type == "constant" else tune.grid_search(p.choices)
    return space


class _Axis(list):
    """A grid_search axis (a list of choices), told apart from a constant that is a list."""


def grid_points(study: StudyConfig) -> list[dict[str, Any]]:
    """Every trial config of a grid study, in the order Tune runs them (`grid_space`, each
    combination `num_samples` times)."""
    space: dict[str, Any] = {"task.name": _Axis(study.tasks), "solver.name": _Axis(study.solvers)}
    for p in study.params:  # as grid_space: a later key replaces an earlier one in place
        space[p.path] = p.value if p.type == "constant" else _Axis(p.choices or [])
    # Tune sorts its grid axes by key and varies the first fastest (an odometer)
    axes = sorted(key for key, value in space.items() if isinstance(value, _Axis))
    points = []
    for _ in range(study.num_samples):
        for values in itertools.product(*(space[key] for key in reversed(axes))):
            points.append({**space, **dict(zip(reversed(axes), values, strict=True))})
    return [{k: list(v) if isinstance(v, _Axis) else v for k, v in p.items()} for p in points]


def missing_grid_points(study: StudyConfig, finished: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid points no finished trial ran: `finished` holds each finished trial's params
    (config paths -> values); a point counts once per trial that ran it."""
    left = [_key(study, p) for p in finished]
    missing = []
    for point in grid_points(study):
        key = _key(study, point)
        if key in left:
            left.remove(key)
        else:
            missing.append(point)
    return missing


def _key(study: StudyConfig, params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A trial's identity in its grid: its applicable values, compared as text (a results
    file may hold 2 where the YAML said 2.0)."""
    applied = drop_inapplicable(study, params)
    return tuple(sorted((k, _text(v)) for k, v in applied.items() if v is not None))


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def drop_inapplicable(study: StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Remove values of parameters that do not apply to the trial's solver."""
    solver = params.get("solver.name", study.solvers[0])
    specs = {p.path: p for p in study.params}
    return {k: v for k, v in params.items() if k not in specs or specs[k].applies_to(solver)}
