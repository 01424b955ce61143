"""The search space: Optuna define-by-run (conditional) or a Tune grid, from a StudyConfig.

Trials receive a flat dict of config paths -> values (`{"solver.name": "ibgl", "solver.k": 3,
...}`); conditional parameters are simply absent where they do not apply (the solver registry
says which solver reads which key: k for IBGL and AID, delta for TBGL, ...), and become nulls in
the results table.
"""

from __future__ import annotations

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


def drop_inapplicable(study: StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Remove values of parameters that do not apply to the trial's solver."""
    solver = params.get("solver.name", study.solvers[0])
    specs = {p.path: p for p in study.params}
    return {k: v for k, v in params.items() if k not in specs or specs[k].applies_to(solver)}
