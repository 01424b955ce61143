"""The Tune function trainable: one trial = one TorchTrainer fit (Ray Train V2 pattern).

Uses `ray.tune.*` only; the workers use `ray.train.*`. The inner run's name comes from the trial
id, so a restored study resumes each unfinished trial from its last Train checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bgl.study.schema import StudyConfig
from bgl.study.space import drop_inapplicable
from bgl.study.worker import EXPORT_KEY, FINAL_KEY, run_and_report, train_loop_per_worker


def run_trial(config: dict[str, Any], study: StudyConfig) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    start = time.perf_counter()
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    params = drop_inapplicable(study, dict(config))
    loop_config = _loop_config(study, params, trial_name=f"{study.name}-{trial_id}")
    r = study.resources
    if r.launcher == "in_trial":
        _train_in_trial(loop_config, params, start)
        return
    use_gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=str(study.study_dir / "train"),
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    final = dict(result.metrics or {})
    if not final.get(FINAL_KEY):
        raise RuntimeError(f"trial {trial_id}: the workers ended without a final report")
    final["trial_wall_s"] = time.perf_counter() - start
    final["params_json"] = json.dumps(params, default=str)
    tune.report(final)


def _loop_config(study: StudyConfig, params: dict[str, Any], trial_name: str) -> dict[str, Any]:
    """What a worker needs: the run config, the objective metrics, where to export F (if so).

    A transfer trial (its identity under `transfer` in the Tune config) builds its config from
    the study's design; any other trial sets its sampled parameters on the base config.
    """
    if "transfer" in params:
        from bgl.study.transfer import trial_setup

        run, objectives, export = trial_setup(study, params["transfer"], trial_name)
    else:
        run = study.trial_config(params, trial_name=trial_name)
        objectives, export = [o.metric for o in study.objectives], None
    return {"run": run.to_dict(), "objectives": objectives, EXPORT_KEY: export}


def _train_in_trial(loop_config: dict[str, Any], params: dict[str, Any], start: float) -> None:
    """One worker, trained in this trial process; Tune checkpoints and restarts it."""
    from bgl.config import from_dict
    from bgl.train.loop import Trainer

    trainer = Trainer(from_dict(loop_config["run"]))
    extra = {"params_json": json.dumps(params, default=str)}
    run_and_report(trainer, loop_config, "tune", extra=extra, started=start)
