"""Experiment trackers: Ray's MLflow and W&B logger callbacks, with what bgl's trials need.

One run per trial named `<study>-<trial id>` (the name of the trial's training run), the trial's
own parameters as params/config (those the Parquet row holds, not Tune's whole config), no bgl
bookkeeping keys as metrics, relative paths made absolute in the driver, and offline W&B without
an account. The classes subclass optional, slow imports (mlflow, wandb), so they are built on
first use (module `__getattr__`): importing this module stays light, and pickle (Tune stores
callbacks with the experiment for `--resume`) still finds them by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bgl.study.schema import StudyConfig

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
