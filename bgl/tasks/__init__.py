"""Downstream tasks and their registry: a study names a task and options; `build_task` builds it.

`TASKS` maps a task name to the `module:Class` that implements it; a task's module is imported
only when the task is used, so a study of one task never pays for (or breaks on) another's
models. Options are the class's keyword arguments and are checked here so a typo in a study file
fails with the offending name instead of a bare TypeError.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from bgl.tasks.base import Batch, Task

TASKS: dict[str, str] = {
    "enhance": "bgl.tasks.enhance:EnhanceTask",
    "detect": "bgl.tasks.detect:DetectTask",
    "segment": "bgl.tasks.segment:SegmentTask",
    "control": "bgl.tasks.control:ControlTask",  # the positive control (closed-form answers)
}


def task_class(name: str) -> type[Task]:
    """The Task subclass registered as `name`; unknown names raise ValueError."""
    try:
        target = TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def task_options(name: str) -> dict[str, Any]:
    """The options a task accepts, with their defaults (inspect.Parameter.empty if required)."""
    params = inspect.signature(task_class(name).__init__).parameters
    return {key: p.default for key, p in params.items() if key != "self"}


def build_task(name: str, **options: Any) -> Task:
    """Build task `name` with options; unknown names raise ValueError, unknown options TypeError."""
    cls = task_class(name)
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task {name!r}; "
            f"known options: {', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**options)


def __getattr__(name: str) -> Any:
    if name == "EnhanceTask":  # kept importable from here; loaded lazily like the others
        return task_class("enhance")
    raise AttributeError(name)


__all__ = ["TASKS", "Batch", "Task", "build_task", "task_class", "task_options"]
