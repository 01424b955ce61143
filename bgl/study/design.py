"""The transfer design (the paper's Table 3): its YAML block, its trials and their run configs.

Parsed and checked when a study YAML is read (`bgl.study.schema`); run by `bgl.study.transfer`.
A trial's run config is the study's base, the task's own keys and the stage's keys, layered,
with F loaded from stage 1 and frozen in stage 2 (see `layered_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgl.config import ConfigError, RunConfig, choices, from_dict, reject_unknown
from bgl.solvers import SOLVER_NAMES, get_solver

log = logging.getLogger(__name__)

STAGES = ("source", "target")
#: each task's dataset when its block names none: the procedural set with its batch keys
DEFAULT_DATASETS = {
    "enhance": "synthetic",
    "detect": "synthetic_faces",
    "segment": "synthetic_street",
}
#: metrics the enhancement target reports for Table 3 (psnr/ssim besides NIQE and LOE)
ENHANCE_TARGET_METRICS = ("psnr", "ssim", "niqe", "loe")
GENERATORS = "generators"
_KEYS = {"source_tasks", "source_solvers", "target_tasks", "tasks", "source", "target"}
# run-config keys the design sets per trial: a block that sets them contradicts the design
_GENERATOR_KEYS = ("model.generator_checkpoint", "model.freeze_generator")
_DESIGNED = {
    "base": ("task", "solver.name", "data.name", "data.root", *_GENERATOR_KEYS),
    "task": ("task.name", "solver.name", *_GENERATOR_KEYS),
    "stage": ("task", "solver.name", "data.name", *_GENERATOR_KEYS),
}


@dataclass(frozen=True)
class TransferTrial:
    """One trial of the design; `target_task` is None in stage 1."""

    stage: str
    model: str
    source_task: str
    strategy: str
    target_task: str | None = None

    @property
    def task(self) -> str:
        return self.target_task or self.source_task

    @property
    def key(self) -> str:
        return self.model if self.target_task is None else f"{self.model}/{self.target_task}"

    def identity(self) -> dict[str, Any]:
        """The trial's Tune config (and Parquet columns)."""
        return dataclasses.asdict(self)


@dataclass
class TransferSpec:
    source_tasks: list[str]
    source_solvers: list[str]
    target_tasks: list[str]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)

    def sources(self) -> list[TransferTrial]:
        pairs = [(t, s) for t in self.source_tasks for s in self.source_solvers]
        return [TransferTrial("source", model_id(i), t, s) for i, (t, s) in enumerate(pairs)]

    def targets(self) -> list[TransferTrial]:
        return [
            dataclasses.replace(src, stage="target", target_task=task)
            for src in self.sources()
            for task in self.target_tasks
        ]

    def trials(self, stage: str) -> list[TransferTrial]:
        return self.sources() if stage == "source" else self.targets()


def model_id(index: int) -> str:
    """M_a, M_b, ... (the paper's names), then M_27, M_28, ... past z."""
    letters = string.ascii_lowercase
    return f"M_{letters[index]}" if index < len(letters) else f"M_{index + 1}"


# -- parsing ----------------------------------------------------------------------------------


def parse_transfer(data: Any, base: dict[str, Any]) -> TransferSpec:
    """Validate the `transfer` block against `base`; every error names its key."""
    from bgl.tasks import TASKS

    if not isinstance(data, dict):
        raise ConfigError("transfer: a study of type transfer needs a transfer mapping")
    reject_unknown(data, _KEYS, "transfer.")
    tasks = tuple(TASKS)
    for key in ("source_tasks", "source_solvers", "target_tasks"):
        if key not in data:
            raise ConfigError(f"transfer.{key}: required")
    spec = TransferSpec(
        source_tasks=choices(data["source_tasks"], tasks, "transfer.source_tasks"),
        source_solvers=choices(data["source_solvers"], SOLVER_NAMES, "transfer.source_solvers"),
        target_tasks=choices(data["target_tasks"], tasks, "transfer.target_tasks"),
    )
    blocks = data.get("tasks") or {}
    if not isinstance(blocks, dict):
        raise ConfigError("transfer.tasks: expected a mapping of task name -> run-config keys")
    for name, block in blocks.items():
        if name not in tasks:
            raise ConfigError(f"transfer.tasks.{name}: unknown task; known: {', '.join(tasks)}")
        spec.tasks[name] = _mapping(block, f"transfer.tasks.{name}")
    spec.source = _mapping(data.get("source"), "transfer.source")
    spec.target = _mapping(data.get("target"), "transfer.target")
    _refuse_designed(base, _DESIGNED["base"], "base.")
    for name, block in spec.tasks.items():
        _refuse_designed(block, _DESIGNED["task"], f"transfer.tasks.{name}.")
    for stage in STAGES:
        _refuse_designed(getattr(spec, stage), _DESIGNED["stage"], f"transfer.{stage}.")
    used = dict.fromkeys([*spec.source_tasks, *spec.target_tasks])
    for name in used:
        _check_task_options(name, spec.tasks.get(name, {}))
    notes: set[str] = set()
    for stage in STAGES:  # every trial's config, built now: errors before Ray starts
        for trial in spec.trials(stage):
            layered_config(base, spec, trial, Path(GENERATORS), notes=notes)
    for note in sorted(notes):
        log.warning("%s", note)
    return spec


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of run-config keys")
    return copy.deepcopy(value)


def _refuse_designed(block: dict[str, Any], paths: tuple[str, ...], prefix: str) -> None:
    for path in paths:
        node: Any = block
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise ConfigError(
                f"{prefix}{path}: set per trial by the transfer design (task names and solvers "
                "come from transfer.source_tasks/source_solvers/target_tasks, datasets and task "
                "options from transfer.tasks.<task>)"
            )


def _check_task_options(name: str, block: dict[str, Any]) -> None:
    """Unknown task options fail here; so does a task whose module cannot be imported."""
    from bgl.tasks import task_options

    try:
        known = task_options(name)
    except ImportError as exc:
        raise ConfigError(f"transfer: task {name!r} cannot be loaded: {exc}") from None
    options = (block.get("task") or {}).get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"transfer.tasks.{name}.task.options: expected a mapping")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"transfer.tasks.{name}.task.options.{unknown[0]}: unknown option for task "
            f"{name!r} (known: {', '.join(sorted(known))})"
        )


# -- run configs ------------------------------------------------------------------------------


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `over` merged in (mappings recursively, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def generator_path(generators: Path, model: str) -> Path:
    return generators / f"{model}.pt"


def layered_config(
    base: dict[str, Any],
    spec: TransferSpec,
    trial: TransferTrial,
    generators: Path,
    *,
    name: str = "transfer",
    output_dir: str = "results",
    notes: set[str] | None = None,
) -> RunConfig:
    """base, then the task's block, then the stage's block, then the design's own keys.

    Each layer is validated as it is added, so an error names the block that caused it.
    """
    task = trial.task
    data = merge(base, {"data": {"name": DEFAULT_DATASETS.get(task, "synthetic")}})
    layers: list[tuple[str, dict[str, Any]]] = [
        (f"transfer.tasks.{task}.", spec.tasks.get(task, {})),
        (f"transfer.{trial.stage}.", getattr(spec, trial.stage)),
    ]
    for prefix, block in layers:
        data = merge(data, block)
        _validate(data, prefix)
    solver = data.setdefault("solver", {})
    solver["name"] = trial.strategy  # stage 2: the strategy that trained the frozen F
    if not get_solver(trial.strategy).takes_k or trial.stage == "target":
        solver["k"] = 1
    data["task"] = merge(data.get("task") or {}, {"name": task})
    if trial.stage == "target":
        data["model"] = merge(
            data.get("model") or {},
            {
                "generator_checkpoint": str(generator_path(generators, trial.model)),
                "freeze_generator": True,
            },
        )
        if task == "enhance":
            _enhance_target_metrics(data, notes)
    data["name"], data["output_dir"] = name, output_dir
    return _validate(data, f"transfer ({trial.key}): ")


def _validate(data: dict[str, Any], prefix: str) -> RunConfig:
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def _enhance_target_metrics(data: dict[str, Any], notes: set[str] | None) -> None:
    """NIQE and LOE for the EN columns; NIQE needs test images of at least 96x192.

    Listed explicitly, a metric the test images are too small for is an error naming the key;
    by default it is left out (n/a in Table 3) with a warning.
    """
    from bgl.metrics.registry import get_metric

    options = data["task"].setdefault("options", {})
    explicit = "metrics" in options
    metrics = list(options.get("metrics", ENHANCE_TARGET_METRICS))
    size = _test_size(data.get("data") or {})
    if size is None:
        options["metrics"] = metrics
        return
    keep = []
    for metric in metrics:
        problem = get_metric(metric).size_error(size, size)
        if problem is None:
            keep.append(metric)
        elif explicit:
            raise ConfigError(
                f"transfer.tasks.enhance.task.options.metrics: {problem} (the test images are "
                f"{size}x{size}: raise data.crop, or data.eval_crop for a real dataset)"
            )
        elif notes is not None:
            notes.add(f"enhancement target: {problem}; {metric} is left out (n/a in the table)")
    options["metrics"] = keep


def _test_size(data: dict[str, Any]) -> int | None:
    """The side of the test images (None: full frames of a real dataset)."""
    from bgl.data.splits import SYNTHETIC_DATASETS

    crop = int(data.get("crop", 64))
    if data.get("name") in SYNTHETIC_DATASETS:
        return crop
    eval_crop = data.get("eval_crop")
    if eval_crop == 0:
        return None
    return crop if eval_crop is None else int(eval_crop)


def trial_setup(
    base: dict[str, Any],
    spec: TransferSpec,
    identity: dict[str, Any],
    *,
    generators: Path,
    output_dir: str,
    trial_name: str,
) -> tuple[RunConfig, list[str], str | None]:
    """A transfer trial's run config, objective metric and (stage 1) export path; `generators`
    is the folder of stage 1's exported blocks."""
    from bgl.tasks import task_class

    trial = TransferTrial(**identity)
    cfg = layered_config(base, spec, trial, generators, name=trial_name, output_dir=output_dir)
    export = str(generator_path(generators, trial.model)) if trial.stage == "source" else None
    return cfg, [task_class(trial.task).primary_metric], export
