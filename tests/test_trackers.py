"""Experiment trackers (`logging.mlflow`, `logging.wandb`): the YAML blocks are checked before Ray
starts, and on a real tiny study each tracker holds one run per trial whose parameters and final
metrics, read back with the tracker's own client or record format, equal bgl's Parquet row."""

from __future__ import annotations

import inspect
import json
import math
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from bgl.cli import main
from bgl.config import ConfigError
from bgl.study.schema import parse_study
from tests.conftest import TINY_STUDY_BASE as BASE

# final metrics every completed trial's row holds; each must reach the tracker unchanged
FINAL_METRICS = ("psnr", "ssim", "final_psnr", "final_ssim", "upper_loss", "lower_loss")
BGL_KEYS = ("bgl_final", "bgl_trial_end", "history_json", "params_json")


def _study_dict(tmp_path: Path, logging: dict[str, Any]) -> dict[str, Any]:
    """Two in-trial trials (naive and IBGL at fixed learning rates): the quickest real study."""
    return {
        "name": "trk",
        "output_dir": str(tmp_path / "results"),
        "base": BASE,
        "search": {
            "metric": "psnr",
            "mode": "max",
            "num_samples": 2,
            "solvers": ["naive", "ibgl"],
            "params": {
                "optim.upper_lr": {"choices": [0.003, 0.001]},
                "solver.k": {"type": "int", "low": 1, "high": 2},
            },
            "initial": [
                {"solver.name": "naive", "optim.upper_lr": 0.003, "solver.k": 1},
                {"solver.name": "ibgl", "optim.upper_lr": 0.001, "solver.k": 2},
            ],
        },
        "resources": {"max_concurrent_trials": 1, "launcher": "in_trial"},
        "logging": {"tensorboard": False, **logging},
    }


def _run_study(tmp_path: Path, logging: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the study through bgl's CLI; its Parquet trial rows by trial id."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study_dict(tmp_path, logging)))
    assert main(["study", "run", str(path), "--no-live"]) == 0
    folder = tmp_path / "results" / "trk" / "trials"
    rows = [pq.read_table(p).to_pylist()[0] for p in sorted(folder.glob("*.parquet"))]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert {r["param.solver.name"] for r in rows} == {"naive", "ibgl"}
    return {r["trial_id"]: r for r in rows}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """One real study logged to both trackers (one Ray start, ~70 s on 2 busy cores): MLflow
    to a file store, W&B offline without an account. Its folder and Parquet rows."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tmp_path = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        # MLflow refuses file stores unless opted in: bgl opts in for a `file:` URI
        env.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
            env.delenv(var, raising=False)  # no account: offline needs no key
        env.delenv("WANDB_RUN_GROUP", raising=False)
        env.setenv("WANDB_SILENT", "true")
        logging = {
            "mlflow": {"tracking_uri": f"file:{tmp_path}/mlruns", "experiment_name": "trk-x"},
            "wandb": {"mode": "offline", "dir": str(tmp_path / "wandb")},
        }
        rows = _run_study(tmp_path, logging)
    return tmp_path, rows


def _params(row: dict[str, Any]) -> dict[str, Any]:
    """A row's trial parameters (`param.<path>` columns that apply to its trial)."""
    return {
        k[len("param.") :]: v for k, v in row.items() if k.startswith("param.") and v is not None
    }


def _same(logged: Any, value: Any) -> bool:
    """A value read back from a tracker (text or JSON) equals the row's value of its type."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(logged) == str(value)
    logged = float(logged)
    return (math.isnan(logged) and math.isnan(value)) or logged == value


# --- the YAML blocks, checked before Ray starts -------------------------------------------------


def _parse(logging: dict[str, Any]):
    return parse_study(
        {"name": "s", "base": {"task": {"options": {"width": 4}}}, "logging": logging}
    )


@pytest.mark.parametrize(
    ("logging", "message"),
    [
        ({"mlflow": {}}, "logging.mlflow.tracking_uri: required"),
        ({"mlflow": {"experiment_name": "x"}}, "write e.g. `tracking_uri: file:results/mlruns`"),
        (
            {"mlflow": {"tracking_uri": "file:m", "experiment": "x"}},
            "unknown key logging.mlflow.ex",
        ),
        ({"mlflow": {"tracking_uri": "file:m", "tags": ["a"]}}, "logging.mlflow.tags: expected"),
        ({"mlflow": "file:m"}, "logging.mlflow"),
        ({"wandb": {"mode": "ofline"}}, "logging.wandb.mode: must be one of online, offline"),
        ({"wandb": {"id": "run1"}}, "logging.wandb.id: set per trial by bgl"),
        ({"wandb": {"name": "run1"}}, "logging.wandb.name: set per trial by bgl"),
        ({"wandb": {"api_key": "secret"}}, "logging.wandb.api_key: keep the key out"),
        ({"wandb": {"projet": "p"}}, "unknown key logging.wandb.projet"),
        ({"wandb": {"dir": 3}}, "logging.wandb.dir: expected a string"),
    ],
)
def test_tracker_blocks_are_checked(logging, message):
    with pytest.raises(ConfigError, match=None) as err:
        _parse(logging)
    assert message in str(err.value)


def test_tracker_defaults_name_the_study():
    study = _parse({"mlflow": {"tracking_uri": "file:m"}, "wandb": {"mode": "offline"}})
    assert study.logging.mlflow == {"tracking_uri": "file:m", "experiment_name": "s"}
    assert study.logging.wandb == {"mode": "offline", "project": "s", "group": "s"}
    study = _parse({"wandb": {"project": "p", "group": "g", "entity": "e"}})
    assert study.logging.wandb == {"project": "p", "group": "g", "entity": "e"}


def test_trackers_pickle_by_name_and_make_paths_absolute(tmp_path, monkeypatch):
    """Tune stores the callbacks with the experiment (`--resume` unpickles them); relative
    paths are resolved in the driver, not in the trial folder a W&B logging actor runs in."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from ray import cloudpickle

    from bgl.study import trackers

    monkeypatch.chdir(tmp_path)
    study = _parse({"mlflow": {"tracking_uri": "file:rel/mlruns"}, "wandb": {"dir": "wb"}})
    mlflow_cb = trackers.tracker_class("MLflowTracker")(study, **study.logging.mlflow)
    wandb_cb = trackers.tracker_class("WandbTracker")(study, **study.logging.wandb)
    assert mlflow_cb.tracking_uri == (tmp_path / "rel" / "mlruns").as_uri()
    assert wandb_cb.kwargs["dir"] == str(tmp_path / "wb")
    assert set(BGL_KEYS) <= set(wandb_cb.excludes)
    for cb in (mlflow_cb, wandb_cb):
        assert pickle.loads(pickle.dumps(type(cb))) is type(cb)  # found by name
        back = cloudpickle.loads(cloudpickle.dumps(cb))  # as Tune stores them
        assert type(back) is type(cb) and back.study.name == "s"
    for uri in ("sqlite:///x.db", "http://host:5000", "databricks", "file:///abs/m"):
        assert trackers._absolute_store(uri) == uri


def test_accepted_keys_are_the_callbacks_and_wandb_init_keywords():
    """The keys `logging.*` accepts exist in the installed Ray and wandb (a version drift
    would otherwise surface as a TypeError after Ray has started)."""
    pytest.importorskip("mlflow")
    wandb = pytest.importorskip("wandb")
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback

    from bgl.study.schema import MLFLOW_KEYS, WANDB_KEYS

    assert MLFLOW_KEYS <= set(inspect.signature(MLflowLoggerCallback).parameters)
    accepted = {*inspect.signature(WandbLoggerCallback).parameters}
    accepted |= set(inspect.signature(wandb.init).parameters)
    assert WANDB_KEYS <= accepted


# --- real studies -----------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_file_store_has_one_run_per_trial_matching_the_rows(tracked):
    from mlflow.tracking import MlflowClient

    tmp_path, rows = tracked
    uri = f"file:{tmp_path}/mlruns"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trk-x")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {r.data.tags["bgl.trial_id"]: r for r in runs}
    assert len(runs) == len(by_trial) == 2 and set(by_trial) == set(rows)  # one run per trial
    for trial_id, row in rows.items():
        run = by_trial[trial_id]
        assert run.info.run_name == f"trk-{trial_id}" and run.info.status == "FINISHED"
        assert run.data.tags["bgl.study"] == "trk"
        params = _params(row)
        assert set(run.data.params) == set(params)  # the row's parameters, nothing else
        assert {"solver.name", "optim.upper_lr", "task.name"} <= set(params)
        for key, value in params.items():
            assert _same(run.data.params[key], value), (key, run.data.params[key], value)
        for key in FINAL_METRICS:  # the last value logged is the row's
            assert _same(run.data.metrics[key], row[key]), (key, run.data.metrics[key], row[key])
        numeric = {
            k: v
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k in run.data.metrics
        }
        assert len(numeric) > 20
        for key, value in numeric.items():
            assert _same(run.data.metrics[key], value), key
        assert not set(BGL_KEYS) & set(run.data.metrics)
        # and a history: one psnr per evaluation (steps 0, 2) plus the final report
        history = client.get_metric_history(run.info.run_id, "psnr")
        assert len(history) >= 2 and history[-1].value == row["psnr"]


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's `.wandb` file, decoded with wandb's own protobuf
    `Record`. wandb 0.31 has no Python reader any more (its DataStore moved into the Go
    wandb-core), so the framing is read here: a 7-byte header (`:W&B`, magic 0xBEE1, version
    0), then LevelDB-log chunks (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) in
    32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _wandb_run(path: Path) -> dict[str, Any]:
    """An offline run as wandb will sync it: run record, config, summary, history, exit."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "exit": None}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        else:
            updates = []
        for item in updates:
            out["config"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        if kind == "summary":
            for item in record.summary.update:
                name = item.key or "/".join(item.nested_key)
                out["summary"][name] = json.loads(item.value_json)
        elif kind == "history":
            step = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            out["history"].append(step)
        elif kind == "exit":
            out["exit"] = record.exit
    return out


@pytest.mark.slow
def test_wandb_offline_has_one_run_per_trial_matching_the_rows(tracked):
    tmp_path, rows = tracked
    wandb_dir = tmp_path / "wandb"
    files = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    runs = [_wandb_run(f) for f in files]
    by_trial = {r["run"].run_id: r for r in runs}
    assert len(files) == len(by_trial) == 2 and set(by_trial) == set(rows)  # one run per trial
    for trial_id, row in rows.items():
        run = by_trial[trial_id]
        assert run["run"].display_name == f"trk-{trial_id}"
        assert run["run"].project == "trk" and run["run"].run_group == "trk"
        assert run["exit"] is not None and run["exit"].exit_code == 0  # wandb.finish() ran
        params = _params(row)
        assert {"solver.name", "optim.upper_lr", "task.name"} <= set(params)
        for key, value in params.items():
            assert _same(run["config"][key], value), (key, run["config"][key], value)
        assert run["config"]["trial_id"] == trial_id
        summary = run["summary"]
        for key in FINAL_METRICS:
            assert _same(summary[key], row[key]), (key, summary[key], row[key])
        numeric = {
            k: v
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k in summary
        }
        assert len(numeric) > 20
        for key, value in numeric.items():
            assert _same(summary[key], value), key
        assert not set(BGL_KEYS) & set(summary)
        psnr = [h["psnr"] for h in run["history"] if "psnr" in h]
        assert len(psnr) >= 2 and psnr[-1] == row["psnr"]
