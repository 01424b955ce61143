"""The Tune function trainable: one trial = one TorchTrainer fit (Ray Train V2 pattern).

Uses `ray.tune.*` only; the workers use `ray.train.*`. The inner run's name comes from the trial
id, so a restored study resumes each unfinished trial from its last Train checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bgl.results.report import FINAL_KEY, TRIAL_END_KEY
from bgl.study import faults
from bgl.study.schema import StudyConfig
from bgl.study.space import drop_inapplicable
from bgl.study.worker import (
    EXPORT_KEY,
    TRIAL_START_KEY,
    StartupClock,
    run_and_report,
    train_loop_per_worker,
)


def run_trial(
    config: dict[str, Any], study: StudyConfig, replay: dict[str, dict[str, Any]] | None = None
) -> None:
    """Train one trial; a trial that already has its row (`replay`, on a resume) only reports
    the recorded result again, so Tune can close it without training or writing anything."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    start, started_unix = time.perf_counter(), time.time()
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    if replay and trial_id in replay:
        tune.report(replay[trial_id])
        return
    params = drop_inapplicable(study, dict(config))
    loop_config = _loop_config(study, params, trial_name=f"{study.name}-{trial_id}")
    loop_config[TRIAL_START_KEY] = started_unix
    r = study.resources
    if r.launcher == "in_trial":
        _train_in_trial(loop_config, params, start)
        faults.mark("end", loop_config["run"]["name"])
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
            checkpoint_config=checkpoint_config(study, ray.train),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    final = dict(result.metrics or {})
    if not final.get(FINAL_KEY):
        raise RuntimeError(f"trial {trial_id}: the workers ended without a final report")
    final["trial_wall_s"] = time.perf_counter() - start
    if "final_report_unix" in final:  # workers' last report -> fit() returned here
        final["teardown_s"] = time.time() - final.pop("final_report_unix")
    final["params_json"] = json.dumps(params, default=str)
    final[TRIAL_END_KEY] = True
    tune.report(final)
    faults.mark("end", loop_config["run"]["name"])


def checkpoint_config(study: StudyConfig, api: Any) -> Any:
    """The study's `checkpoints` block as `api.CheckpointConfig` (api: ray.tune or ray.train;
    both always keep the latest checkpoint besides the `keep` best)."""
    c = study.checkpoints
    if not c.score:
        return api.CheckpointConfig(num_to_keep=c.keep)
    first = study.objectives[0]
    return api.CheckpointConfig(
        num_to_keep=c.keep,
        checkpoint_score_attribute=first.metric,
        checkpoint_score_order=first.mode,
    )


def _loop_config(study: StudyConfig, params: dict[str, Any], trial_name: str) -> dict[str, Any]:
    """What a worker needs: the run config, the objective metrics, where to export F (if so).

    A transfer trial (its identity under `transfer` in the Tune config) builds its config from
    the study's design; any other trial sets its sampled parameters on the base config.
    """
    if "transfer" in params:
        run, objectives, export = study.transfer_trial(params["transfer"], trial_name)
    else:
        run = study.trial_config(params, trial_name=trial_name)
        objectives, export = [o.metric for o in study.objectives], None
    return {"run": run.to_dict(), "objectives": objectives, EXPORT_KEY: export}


def _train_in_trial(loop_config: dict[str, Any], params: dict[str, Any], start: float) -> None:
    """One worker, trained in this trial process; Tune checkpoints and restarts it."""
    from bgl.config import from_dict
    from bgl.train.loop import Trainer

    clock = StartupClock(loop_config.get(TRIAL_START_KEY))
    trainer = Trainer(from_dict(loop_config["run"]))
    clock.built = time.time()
    extra = {"params_json": json.dumps(params, default=str), TRIAL_END_KEY: True}
    run_and_report(trainer, loop_config, "tune", extra=extra, started=start, clock=clock)
