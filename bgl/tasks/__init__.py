"""Downstream tasks and their registry: a study names a task and options; `build_task` builds it.

Each task module registers its class in `TASKS`; options are the class's keyword arguments and are
checked here so a typo in a study file fails with the offending name instead of a bare TypeError.
"""

from __future__ import annotations

import inspect
from typing import Any

from bgl.tasks.base import Batch, Task
from bgl.tasks.enhance import EnhanceTask

TASKS: dict[str, type[Task]] = {
    EnhanceTask.name: EnhanceTask,
}


def task_options(name: str) -> dict[str, Any]:
    """The options a task accepts, with their defaults (inspect.Parameter.empty if required)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {key: p.default for key, p in params.items() if key != "self"}


def build_task(name: str, **options: Any) -> Task:
    """Build task `name` with options; unknown names raise ValueError, unknown options TypeError."""
    cls = _lookup(name)
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task {name!r}; "
            f"known options: {', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**options)


def _lookup(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


__all__ = ["TASKS", "Batch", "EnhanceTask", "Task", "build_task", "task_options"]
