"""One Tune experiment of the trial function: Ray attached or started, callbacks, resources,
and a restore that first reconciles the study's records (`bgl.study.reconcile`).

Without an address a local Ray instance is started (laptop / single-GPU mode, dashboard off
unless asked, and then bound to 127.0.0.1); with `--address auto|ray://...` the study runs on
that cluster (token authentication stays as the cluster has it). Used by ordinary studies
(`bgl.study.runner`) and by both stages of a transfer study (`bgl.study.transfer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bgl.results.parquet import ResultsWriteError
from bgl.study.reconcile import reconcile
from bgl.study.schema import StudyConfig

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
#: the live trial table: off, on (columns chosen to fit the terminal), or "wide" (every column)
Live = bool | str
#: Ray Train settings of a local instance (the user's environment wins): a finished worker
#: group is noticed within 0.25 s instead of 2 s, and no preemption-watcher actor (a process
#: of its own per trial, for spot nodes a laptop does not have) competes for the CPUs
LOCAL_RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def init_ray(address: str | None, *, dashboard: bool = False, num_cpus: int | None = None) -> bool:
    """Attach to a cluster or start a local instance; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        # Ray turns token mode on by itself only for address=auto; an explicit host:port needs it
        # said, or the driver is refused by a cluster with token authentication (the default)
        token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        if "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or token.exists()
        ):
            os.environ["RAY_AUTH_MODE"] = "token"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            _refresh_ray_config()
        ray.init(address=address, log_to_driver=False)
        return True
    os.environ.pop("RAY_ADDRESS", None)  # a set RAY_ADDRESS would attach instead of starting
    for key, value in LOCAL_RAY_TRAIN_ENV.items():  # inherited by the instance's processes
        os.environ.setdefault(key, value)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        _temp_dir="/tmp/bgl-ray",  # short: unix socket paths are limited to ~107 bytes
        log_to_driver=False,
    )
    return True


def _refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into a per-process config the first time ray is imported; in a
    process that imported ray before the variable was set (a notebook, a test session) the old
    mode would stay and the cluster would refuse the driver. Ray refreshes it the same way when
    it turns token mode on itself."""
    from ray._raylet import Config

    Config.initialize("")


@contextmanager
def ray_session(
    address: str | None, dashboard: bool = False, study: StudyConfig | None = None
) -> Iterator[None]:
    """Ray attached or started for the block; a local instance started here is shut down.
    On a cluster, `study`'s resources are compared with the cluster's (a warning)."""
    started = init_ray(address, dashboard=dashboard)
    if address and study is not None:
        from bgl.study.preflight import check_cluster_resources

        check_cluster_resources(study)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def fit_experiment(
    study: StudyConfig,
    tune_dir: Path,
    *,
    resume: bool,
    tune_config: Any,
    param_space: dict[str, Any] | None,
    live: Live,
) -> bool:
    """One Tune experiment of the trial function in `tune_dir`: new, or restored (`resume`,
    after `reconcile`). False when a restore was impossible (Tune's state unusable)."""
    from ray import tune

    from bgl.study.trial import checkpoint_config, run_trial

    if not os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") and not study.logging.tensorboard:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # experiment state after every step, so a killed driver loses no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # ... which Tune warns about once checkpoints are pruned (checkpoints.keep): it is intended
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own console output off (verbose=0 is honoured by the classic reporter): the live
    # table and the Parquet tables are the interface
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    replay: dict[str, dict[str, Any]] = {}
    if resume:
        rec = reconcile(study, tune_dir)
        log.info("resuming %s (%s): %s", study.name, tune_dir.name, rec.summary())
        if not rec.tune_usable:
            return False
        replay = rec.replay
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=study, replay=replay), trial_resources(study)
    )
    if resume:
        tuner = tune.Tuner.restore(
            str(tune_dir),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune_config,
            param_space=param_space,
            run_config=tune.RunConfig(
                name=tune_dir.name,
                storage_path=str(study.study_dir),
                callbacks=_callbacks(study, live),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
                checkpoint_config=checkpoint_config(study, tune),
            ),
        )
    try:
        tuner.fit()
    except Exception as exc:  # noqa: BLE001 - Tune wraps a callback's error in a TuneError
        storage = _results_write_error(exc)
        if storage is not None:
            raise storage from None
        raise
    return True


def _results_write_error(exc: BaseException) -> ResultsWriteError | None:
    """The ResultsWriteError behind `exc` (a chained cause, or the traceback text Tune wraps)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ResultsWriteError):
            return seen
        seen = seen.__cause__ or seen.__context__
    marker = f"{ResultsWriteError.__module__}.{ResultsWriteError.__name__}: "
    for line in str(exc).splitlines():
        if marker in line:
            return ResultsWriteError(line.split(marker, 1)[1].strip())
    return None


def trial_resources(study: StudyConfig) -> dict[str, float]:
    """The Tune trial's own resources: a sliver when it only waits on Ray Train workers, the
    worker's share when it trains in-process."""
    r = study.resources
    if r.launcher == "in_trial":
        return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    return {"cpu": r.trial_cpus}


def _callbacks(study: StudyConfig, live: Live) -> list[Any]:
    from bgl.study.callbacks import CheckpointWindowMark, LiveTable, ParquetResults, PendingWatch
    from bgl.study.faults import FAULT_DIR_ENV

    callbacks: list[Any] = [ParquetResults(study), PendingWatch(study)]
    if os.environ.get(FAULT_DIR_ENV):
        callbacks.append(CheckpointWindowMark(study))
    if not study.logging.tensorboard:  # auto loggers are off then: keep Tune's JSON and CSV
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        callbacks += [JsonLoggerCallback(), CSVLoggerCallback()]
    if live:
        callbacks.append(LiveTable(study, wide=live == "wide"))
    if study.logging.mlflow is not None or study.logging.wandb is not None:
        from bgl.study.trackers import tracker_class
    if study.logging.mlflow is not None:
        callbacks.append(tracker_class("MLflowTracker")(study, **study.logging.mlflow))
    if study.logging.wandb is not None:
        callbacks.append(tracker_class("WandbTracker")(study, **study.logging.wandb))
    return callbacks
