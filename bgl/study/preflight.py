"""Checks a study passes before Ray starts and before anything is written.

A study that cannot run should say why at once, not start Ray and wait silently (a trial asking
for a GPU on a CPU machine waits forever), and not leave a folder behind that makes the next
attempt demand `--resume`. Checked here: the results folder can be written; every data root
exists and holds its dataset's layout (the first missing file named); every task's pretrained
weights are there or downloaded once, here, rather than by each trial (a full-size network left
at random weights is warned about, naming the option); the resources one trial asks for fit this
machine (local Ray). On a cluster the resources are compared with the
cluster's once attached (`check_cluster_resources`): only a warning, since an autoscaler may
still add the nodes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from bgl.config import ConfigError, DataConfig, RunConfig
from bgl.study.schema import StudyConfig

log = logging.getLogger(__name__)


def preflight(study: StudyConfig, address: str | None) -> None:
    """Raise ConfigError (naming the key or the file) if `study` cannot run; see module doc."""
    check_writable(Path(study.output_dir))
    runs = _run_configs(study)
    for where, data in _data_configs(runs):
        check_data(data, where)
    check_weights(runs)
    if not address:
        check_local_resources(study)


def check_writable(folder: Path) -> None:
    """The results folder (or its nearest existing parent) accepts a new file."""
    probe_dir = folder.resolve()
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".bgl-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output_dir: {folder} cannot be written ({exc.strerror or exc}); choose another "
            "folder with --set output_dir=..."
        ) from None


def check_data(data: DataConfig, where: str = "base") -> None:
    from bgl.data.splits import check_layout

    try:
        check_layout(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def check_weights(runs: list[tuple[str, RunConfig]]) -> None:
    """Build each distinct task once: its weights file is found or downloaded now (an error names
    the file), and a full-size network left at random weights is warned about."""
    from bgl.models.weights import warn_random_init
    from bgl.tasks import build_task

    seen: set[str] = set()
    for where, run in runs:
        key = repr((run.task.name, sorted(run.task.options.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            task = build_task(run.task.name, **run.task.options)
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a failed download
            raise ConfigError(f"{where}.task.options: {exc}") from None
        message = task.random_init_warning()
        if message:
            warn_random_init(f"{where}.{message}")


def _run_configs(study: StudyConfig) -> list[tuple[str, RunConfig]]:
    """Every trial configuration the study's preflight checks, with where it comes from."""
    runs: list[tuple[str, RunConfig]] = []
    if study.transfer is not None:
        for stage in ("source", "target"):
            for trial in study.transfer.trials(stage):
                run, _, _ = study.transfer_trial(trial.identity(), trial_name="preflight")
                runs.append((f"transfer.tasks.{trial.task}", run))
    else:
        runs.append(("base", study.trial_config({})))
    return runs


def _data_configs(runs: list[tuple[str, RunConfig]]) -> list[tuple[str, DataConfig]]:
    """Every distinct data config the study's trials will read, with where it comes from."""
    seen: dict[tuple[Any, ...], tuple[str, DataConfig]] = {}
    for where, run in runs:
        seen.setdefault((run.data.name, run.data.root), (where, run.data))
    return list(seen.values())


def trial_demand(study: StudyConfig) -> dict[str, float]:
    """CPUs and GPUs one trial holds while it runs (its Tune slot and its workers)."""
    r = study.resources
    if r.launcher == "in_trial":
        return {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
    return {
        "CPU": r.trial_cpus + r.workers_per_trial * r.cpus_per_worker,
        "GPU": r.workers_per_trial * r.gpus_per_worker,
    }


def check_local_resources(study: StudyConfig) -> None:
    """A local Ray instance gets this machine's CPUs and GPUs: one trial must fit in them."""
    import torch

    need = trial_demand(study)
    have = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    if need["GPU"] > have["GPU"]:
        raise ConfigError(
            f"resources.gpus_per_worker: a trial needs {need['GPU']:g} GPU(s) and this machine "
            f"has {have['GPU']:g}, so it would wait forever; run on the CPU with "
            "--set resources.gpus_per_worker=0 --set base.train.device=cpu, or pass --address "
            "to run on a cluster with GPUs"
        )
    if need["CPU"] > have["CPU"]:
        raise ConfigError(
            f"resources: a trial needs {need['CPU']:g} CPUs (workers_per_trial x "
            f"cpus_per_worker, plus the trial's own) and this machine has {have['CPU']:g}; "
            "lower resources.cpus_per_worker or resources.workers_per_trial"
        )


def check_cluster_resources(study: StudyConfig) -> None:
    """Attached to a cluster: warn if its current nodes cannot hold one trial."""
    import ray

    need = trial_demand(study)
    total = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > total.get(k, 0.0)}
    if short:
        have = ", ".join(f"{k} {total.get(k, 0.0):g}" for k in short)
        want = ", ".join(f"{k} {v:g}" for k, v in short.items())
        log.warning(
            "the cluster has %s but one trial needs %s: trials will wait until an autoscaler "
            "adds nodes (see resources.* in the study YAML)",
            have,
            want,
        )
