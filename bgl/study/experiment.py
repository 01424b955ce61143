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
    live: bool,
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


def _callbacks(study: StudyConfig, live: bool) -> list[Any]:
    from bgl.study.callbacks import LiveTable, ParquetResults, PendingWatch

    callbacks: list[Any] = [ParquetResults(study), PendingWatch(study)]
    if not study.logging.tensorboard:  # auto loggers are off then: keep Tune's JSON and CSV
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        callbacks += [JsonLoggerCallback(), CSVLoggerCallback()]
    if live:
        callbacks.append(LiveTable(study))
    if study.logging.mlflow is not None:
        callbacks.append(tracker_class("MLflowTracker")(study, **study.logging.mlflow))
    if study.logging.wandb is not None:
        callbacks.append(tracker_class("WandbTracker")(study, **study.logging.wandb))
    return callbacks


# --- experiment trackers ---------------------------------------------------------------------
# Ray's MLflow and W&B logger callbacks, with what bgl's trials need: one run per trial named
# `<study>-<trial id>` (the name of the trial's training run), the trial's own parameters as
# params/config (those the Parquet row holds, not Tune's whole config), no bgl bookkeeping keys
# as metrics, relative paths made absolute in the driver, and offline W&B without an account.
# The classes subclass optional, slow imports (mlflow, wandb), so they are built on first use
# (module `__getattr__`): importing this module stays light, and pickle (Tune stores callbacks
# with the experiment for `--resume`) still finds them by name.

# keys a trial reports for bgl itself, never metrics (Tune's "config" is logged as params)
_NOT_METRICS = ("config", "history_json", "params_json")
_TRACKERS = ("MLflowTracker", "WandbTracker")


def tracker_class(name: str) -> type:
    """`MLflowTracker` or `WandbTracker`, built on first use and then kept (see above)."""
    if name not in _TRACKERS:
        raise ValueError(f"no tracker {name!r} (trackers: {', '.join(_TRACKERS)})")
    if name not in globals():
        cls = _mlflow_tracker() if name == "MLflowTracker" else _wandb_tracker()
        cls.__module__, cls.__qualname__ = __name__, name
        globals()[name] = cls
    return globals()[name]


def __getattr__(name: str) -> Any:
    """Module attributes `MLflowTracker` / `WandbTracker` (how pickle finds them)."""
    if name not in _TRACKERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return tracker_class(name)


def _bookkeeping() -> tuple[str, ...]:
    from bgl.results.report import FINAL_KEY, REPLAYED_KEY, TRIAL_END_KEY

    return (*_NOT_METRICS, FINAL_KEY, TRIAL_END_KEY, REPLAYED_KEY)


def _trial_params(study: StudyConfig, config: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters as its Parquet row holds them (`param.<path>` columns)."""
    from bgl.study.space import drop_inapplicable

    return drop_inapplicable(study, dict(config or {}))


def _absolute_store(uri: str) -> str:
    """A file store (`file:relative/path` or a bare path) as an absolute `file://` URI: the
    driver and `mlflow ui` may run from other folders than the one the YAML was written for."""
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        if path.startswith("//"):
            return uri  # file:///abs or file://host/...: already absolute
    elif "://" in uri or ":" in uri.split("/", 1)[0] or uri.startswith("databricks"):
        return uri  # sqlite:///..., http://..., databricks[-uc], ...
    else:
        path = uri
    return Path(path).expanduser().resolve().as_uri()


def _mlflow_tracker() -> type:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowTracker(MLflowLoggerCallback):
        """One MLflow run per trial: bgl's parameters and metrics, named like the trial."""

        def __init__(self, study: StudyConfig, **kwargs: Any) -> None:
            self.study = study
            kwargs["tracking_uri"] = _absolute_store(kwargs["tracking_uri"])
            # params are logged here (log_trial_start/_end below), never from Tune's config
            self.params_at_end = bool(kwargs.pop("log_params_on_trial_end", False))
            super().__init__(log_params_on_trial_end=False, **kwargs)

        def setup(self, *args: Any, **kwargs: Any) -> None:
            # MLflow (3.17) refuses its file store unless opted in; a YAML naming one has
            if self.tracking_uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            super().setup(*args, **kwargs)

        def log_trial_start(self, trial: Any) -> None:
            if trial not in self._trial_runs:
                tags = {
                    **self.tags,
                    "trial_name": str(trial),
                    "bgl.study": self.study.name,
                    "bgl.trial_id": trial.trial_id,
                }
                run = self.mlflow_util.start_run(
                    tags=tags, run_name=f"{self.study.name}-{trial.trial_id}"
                )
                self._trial_runs[trial] = run.info.run_id
            if not self.params_at_end:
                self._log_params(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            skip = _bookkeeping()
            metrics = {k: v for k, v in result.items() if k not in skip}
            super().log_trial_result(iteration, trial, metrics)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if self.params_at_end:
                self._log_params(trial)
            super().log_trial_end(trial, failed=failed)

        def _log_params(self, trial: Any) -> None:
            params = _trial_params(self.study, trial.config)
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

    return MLflowTracker


def _wandb_tracker() -> type:
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log
    from ray.air.util.node import _force_on_current_node

    class WandbTracker(WandbLoggerCallback):
        """One W&B run per trial (id: the trial id), its config bgl's trial parameters.

        `mode: offline` needs no account (Ray asks for an API key unless WANDB_MODE says
        offline); each run is logged by a Ray actor, which gets the driver's WANDB_* variables
        (Ray forwards only WANDB_API_KEY; on a cluster the actor's environment is the node's).
        """

        def __init__(self, study: StudyConfig, **kwargs: Any) -> None:
            self.study = study
            if kwargs.get("dir"):  # the logging actor runs in the trial's folder
                kwargs["dir"] = str(Path(kwargs["dir"]).expanduser().resolve())
            kwargs["excludes"] = [*(kwargs.get("excludes") or []), *_bookkeeping()]
            super().__init__(**kwargs)

        def setup(self, *args: Any, **kwargs: Any) -> None:
            mode = self.kwargs.get("mode")
            if self.kwargs.get("dir"):
                Path(self.kwargs["dir"]).mkdir(parents=True, exist_ok=True)
            if mode not in ("offline", "disabled") or os.environ.get("WANDB_MODE"):
                super().setup(*args, **kwargs)
                return
            os.environ["WANDB_MODE"] = mode  # only for Ray's API key check, just below
            try:
                super().setup(*args, **kwargs)
            finally:
                os.environ.pop("WANDB_MODE", None)

        def log_trial_start(self, trial: Any) -> None:
            config = _clean_log(_trial_params(self.study, trial.config))
            excludes = [*self._exclude_results, *self.excludes]
            if not self.log_config:
                excludes.append("config")
            init = {
                "id": trial.trial_id,
                "name": f"{self.study.name}-{trial.trial_id}",
                "resume": False,
                "reinit": True,
                "allow_val_change": True,
                "group": self.group or self.study.name,
                "project": self.project,
                "config": {k: v for k, v in config.items() if k not in self.excludes},
                **self.kwargs,
            }
            self._start_logging_actor(trial, excludes, **init)

        def _start_logging_actor(
            self, trial: Any, exclude_results: list[str], **wandb_init_kwargs: Any
        ) -> None:
            if self._remote_logger_class is None:
                env = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
                self._remote_logger_class = ray.remote(
                    num_cpus=0,
                    **_force_on_current_node(),
                    runtime_env={"env_vars": env},
                    max_restarts=-1,
                    max_task_retries=-1,
                )(self._logger_actor_cls)
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    return WandbTracker
