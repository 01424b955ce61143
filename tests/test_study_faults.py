"""Whatever is killed, `--resume` finishes the study: real Ray, real Optuna journals, SIGKILL.

Kill points come from the fault markers the trials write (`bgl.study.faults`), never from
sleeps: the driver is killed while a trial holds at a marker, so each kill lands at the same
moment of the study's life on every run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.trial import TrialState

from bgl.bench.faults import (
    KILL_POINTS,
    Driver,
    corrupt_state,
    fault_study,
    hold_point,
    kill_holder,
)
from bgl.cli import main
from bgl.study.faults import FAULT_DIR_ENV, FAULT_HOLD_ENV
from bgl.study.journal import TUNE_TRIAL_ATTR, open_journal
from bgl.study.tune_state import latest_checkpoints

pytestmark = pytest.mark.slow


def _rows(study_dir: Path) -> dict[str, dict]:
    return {
        p.stem: pq.read_table(p).to_pylist()[0] for p in (study_dir / "trials").glob("*.parquet")
    }


def _files(study_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in (study_dir / "trials").glob("*.parquet")
    }


def _optuna_trials(study_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_journal(study_dir)).trials


def test_driver_killed_at_five_moments_resumes_to_the_end(tmp_path):
    n = 3
    study_yaml = fault_study(tmp_path, num_samples=n)
    study_dir = tmp_path / "results" / "faults"
    markers = tmp_path / "markers"
    driver = Driver(study_yaml, study_dir, markers, tmp_path / "driver.log")
    first_seen: dict[str, tuple[int, bytes]] = {}
    for i, point in enumerate(KILL_POINTS):
        hold, rows_at_least = hold_point(point, markers, len(_files(study_dir)), n)
        rc = driver.run(resume=i > 0, hold=hold, rows_at_least=rows_at_least, timeout=300)
        log = (tmp_path / "driver.log").read_text()
        assert rc is None, f"{point}: the driver exited ({rc}) before its kill point:\n{log}"
        if point == "checkpoint_window":  # the hazard is real: the saved state names a
            # checkpoint that retention has deleted
            named = [p for p in latest_checkpoints(study_dir / "tune").values() if p]
            assert named and not any(p.exists() for p in named), named
        now = _files(study_dir)
        for name, seen in first_seen.items():  # rows are never rewritten, nor lost
            assert now[name] == seen, f"{point}: {name} was rewritten"
        first_seen.update({k: v for k, v in now.items() if k not in first_seen})
        if point == "between_trials":  # and a half-copied Tune state, a stale journal lock
            corrupt_state(study_dir / "tune", study_dir)
    assert len(first_seen) == n - 1  # all but the last trial, killed while it ran
    assert driver.run(resume=True, timeout=300) == 0, (tmp_path / "driver.log").read_text()
    log = (tmp_path / "driver.log").read_text()
    assert "Could not recover from checkpoint" not in log and "restarts from scratch" not in log

    rows = _rows(study_dir)
    assert len(rows) == n and {r["status"] for r in rows.values()} == {"completed"}
    for name, seen in first_seen.items():
        assert _files(study_dir)[name] == seen
    # every trial trained to its end exactly once; the first resumed from its checkpoint
    ends = Counter(p.name.split(".", 2)[2] for p in markers.glob("end.*"))
    assert sorted(ends.values()) == [1] * n
    for trial_id in rows:
        history = pq.read_table(study_dir / "history" / f"{trial_id}.parquet").to_pylist()
        keys = [(h["step"], h["kind"]) for h in history]
        assert len(keys) == len(set(keys)), f"{trial_id}: duplicated history steps"
        assert {h["step"] for h in history if h["kind"] == "eval"} == {0, 2, 4}
    # Optuna holds exactly the study's trials, each finished, each the trial of one row
    trials = _optuna_trials(study_dir, "faults")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    assert {t.user_attrs[TUNE_TRIAL_ATTR] for t in trials} == set(rows)
    assert not (study_dir / "optuna.journal.lock").exists()
    # the Tune state was unusable after the third kill: the rest ran in a new experiment
    plan = json.loads((study_dir / "plan.json").read_text())
    assert plan == {"target": n, "experiments": ["tune", "tune-resume1"]}

    # extending the finished study: more trials on the same Optuna study, into the same tables
    assert main(["study", "run", str(study_yaml), "--extend", "1", "--no-live"]) == 0
    assert len(_rows(study_dir)) == n + 1 and (study_dir / "tune-ext1").is_dir()
    (summary,) = optuna.get_all_study_summaries(open_journal(study_dir))  # one Optuna study
    assert summary.study_name == "faults"
    trials = _optuna_trials(study_dir, "faults")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * (n + 1)
    for name, seen in first_seen.items():
        assert _files(study_dir)[name] == seen


def test_a_killed_trial_process_restarts_from_its_checkpoint(tmp_path, monkeypatch):
    """`launcher: in_trial`: the trial process dies mid-trial; Tune retries it from its last
    checkpoint and its history has every step once. (A killed Ray Train worker: in
    test_study_ray.)"""
    import threading

    study_yaml = fault_study(tmp_path, name="workers", num_samples=1)
    data = yaml.safe_load(study_yaml.read_text())
    data["resources"] |= {"launcher": "in_trial", "max_failures": 1}
    study_yaml.write_text(yaml.safe_dump(data))
    markers = tmp_path / "markers"
    monkeypatch.setenv(FAULT_DIR_ENV, str(markers))
    monkeypatch.setenv(FAULT_HOLD_ENV, "report:1")  # after its first checkpoint
    killer = threading.Thread(target=kill_holder, args=(markers, "report:1"), daemon=True)
    killer.start()
    assert main(["study", "run", str(study_yaml), "--no-live"]) == 0
    killer.join(timeout=1)
    study_dir = tmp_path / "results" / "workers"
    (row,) = _rows(study_dir).values()
    assert row["status"] == "completed"
    starts = sorted(markers.glob("start.*"))
    assert len(starts) == 2  # started, killed, restarted
    history = pq.read_table(study_dir / "history" / f"{row['trial_id']}.parquet").to_pylist()
    keys = [(h["step"], h["kind"]) for h in history]
    assert len(keys) == len(set(keys))
    assert {h["step"] for h in history if h["kind"] == "eval"} == {0, 2, 4}
    assert {h["step"] for h in history if h["kind"] == "train"} == {1, 2, 3, 4}
    # four checkpoints were reported (three evaluations and the summary); the default
    # `checkpoints: {keep: 1, score: true}` keeps the best and the last
    found = [*study_dir.glob("tune/*/checkpoint_*"), *study_dir.glob("train/*/checkpoint_*")]
    kept = [p for p in found if p.is_dir()]
    assert 1 <= len(kept) <= 2, kept


def test_a_full_disk_stops_the_study_with_the_folder_named(tmp_path, monkeypatch, capsys):
    import errno

    import bgl.results.parquet as parquet

    study_yaml = fault_study(tmp_path, name="full", num_samples=1)
    study_dir = tmp_path / "results" / "full"
    real = parquet.pq.write_table

    def full_disk(table, where, **kwargs):
        if str(study_dir) in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kwargs)

    monkeypatch.setattr(parquet.pq, "write_table", full_disk)
    assert main(["study", "run", str(study_yaml), "--no-live"]) == 2
    out = "".join(capsys.readouterr().out.split())
    assert "cannotwriteresults(Nospaceleftondevice)" in out
    assert "".join(str(study_dir / "history").split()) in out  # the folder, named
    assert not list(study_dir.rglob("*.parquet")) and not list(study_dir.rglob("*.tmp"))
    # space is back: --resume finishes the study
    monkeypatch.setattr(parquet.pq, "write_table", real)
    assert main(["study", "run", str(study_yaml), "--resume", "--no-live"]) == 0
    rows = _rows(study_dir)
    assert len(rows) == 1 and {r["status"] for r in rows.values()} == {"completed"}
    trials = _optuna_trials(study_dir, "full")
    assert [t.state for t in trials] == [TrialState.COMPLETE]


def test_a_resume_repairs_the_error_row_of_a_trial_that_trained_to_its_end(tmp_path):
    """An error row left by a failed restore (what earlier versions wrote when retention had
    deleted the checkpoint Tune restored from) is replaced by the trial's end report, found in
    its final checkpoint; a trial whose final checkpoint holds no end report keeps its error."""
    from bgl.results.report import END_REPORT_NAME
    from bgl.study.callbacks import ParquetResults
    from bgl.study.schema import load_study
    from bgl.study.tune_state import newest_state, trial_dirs, whole_checkpoints

    study_yaml = fault_study(tmp_path, name="repair", num_samples=2)
    assert main(["study", "run", str(study_yaml), "--no-live"]) == 0
    study_dir = tmp_path / "results" / "repair"
    before = _rows(study_dir)
    ended, cut = sorted(before)
    # what a failed restore left: error rows, and Tune holding both trials as ERROR
    writer = ParquetResults(load_study(study_yaml))
    lost = "ValueError: Could not recover from checkpoint as it does not exist on storage anymore"
    for trial_id in before:
        assert writer.record(trial_id, {}, {}, "error", lost, replace=True)
    state_path = newest_state(study_dir / "tune")
    state = json.loads(state_path.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        entry[0] = json.dumps({**trial, "status": "ERROR"})
    state_path.write_text(json.dumps(state))
    # the second trial's final checkpoint lost its end report: nothing says it ended
    (whole_checkpoints(trial_dirs(study_dir / "tune")[cut])[-1] / END_REPORT_NAME).unlink()

    assert main(["study", "run", str(study_yaml), "--resume", "--no-live"]) == 0
    rows = _rows(study_dir)
    assert rows[ended]["status"] == "completed" and rows[ended]["error"] is None
    assert rows[ended]["psnr"] == pytest.approx(before[ended]["psnr"], abs=0)
    assert rows[cut]["status"] == "error" and rows[cut]["error"] == lost
    history = pq.read_table(study_dir / "history" / f"{ended}.parquet").to_pylist()
    assert {h["step"] for h in history if h["kind"] == "eval"} == {0, 2, 4}


def test_a_grid_study_whose_tune_state_is_torn_runs_the_points_its_rows_lack(tmp_path):
    """A driver killed while Tune copied its state in place leaves a file cut short, here the
    grid's searcher state (Tune would restart the whole experiment on it); a grid study then
    takes what is left from its rows: every grid point ends with exactly one row."""
    study_yaml = fault_study(tmp_path, name="grid", num_samples=1)
    data = yaml.safe_load(study_yaml.read_text())
    data["search"] = {
        "sampler": "grid",
        "metric": "psnr",
        "mode": "max",
        "num_samples": 1,
        "solvers": ["naive", "ibgl"],
        "params": {"seed": {"choices": [0, 1]}},
    }
    study_yaml.write_text(yaml.safe_dump(data))  # fmt: skip
    study_dir = tmp_path / "results" / "grid"
    markers = tmp_path / "markers"
    driver = Driver(study_yaml, study_dir, markers, tmp_path / "driver.log")
    assert driver.run(resume=False, hold="end:2", rows_at_least=1, timeout=300) is None
    before = _files(study_dir)
    (searcher,) = (study_dir / "tune").glob("basic-variant-state-*.json")
    searcher.write_bytes(searcher.read_bytes()[:100])
    assert driver.run(resume=True, timeout=300) == 0, (tmp_path / "driver.log").read_text()
    assert "Restarting experiment" not in (tmp_path / "driver.log").read_text()
    rows = _rows(study_dir)
    assert len(rows) == 4 and {r["status"] for r in rows.values()} == {"completed"}
    points = sorted((r["param.solver.name"], int(r["param.seed"])) for r in rows.values())
    assert points == [("ibgl", 0), ("ibgl", 1), ("naive", 0), ("naive", 1)]
    for name, seen in before.items():  # rows written before the kill are kept as they were
        assert _files(study_dir)[name] == seen
    plan = json.loads((study_dir / "plan.json").read_text())
    assert plan["experiments"] == ["tune", "tune-resume1"]
    log = "".join((tmp_path / "driver.log").read_text().split())  # rich wraps log lines
    assert "ofthegrid'spointshavenorowandrunnow" in log  # 2 or 3, as the kill fell


def test_a_trial_whose_saved_checkpoint_is_gone_resumes_from_its_newest_whole_one(tmp_path):
    """The repair itself: the saved state names a checkpoint that retention deleted; a newer one
    was copied in whole, a newer still was cut short by the kill. The trial is pointed at the
    whole one, the resume finishes it, and its history has every step once."""
    import shutil

    from bgl.study.tune_state import latest_checkpoints, repair_checkpoints, trial_dirs

    study_yaml = fault_study(tmp_path, name="repoint", num_samples=1)
    study_dir = tmp_path / "results" / "repoint"
    markers = tmp_path / "markers"
    driver = Driver(study_yaml, study_dir, markers, tmp_path / "driver.log")
    assert driver.run(resume=False, hold="report:2", timeout=300) is None
    tune_dir = study_dir / "tune"
    ((trial_id, named),) = latest_checkpoints(tune_dir).items()
    assert named is not None and named.exists()
    folder = trial_dirs(tune_dir)[trial_id]
    whole = sorted(folder.glob("checkpoint_*"))[-1]
    later = folder / "checkpoint_000099"  # a kill cut this copy short
    shutil.copytree(whole, later)
    data = (later / "checkpoint.pt").read_bytes()
    (later / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    if whole == named:  # retention deleted the named one after copying a newer one in
        shutil.copytree(whole, folder / "checkpoint_000098")
        whole = folder / "checkpoint_000098"
    shutil.rmtree(named)

    repair = repair_checkpoints(tune_dir, finished=set())
    assert repair.repointed == {trial_id: whole.name} and not repair.restarted
    assert latest_checkpoints(tune_dir)[trial_id] == whole
    assert driver.run(resume=True, timeout=300) == 0, (tmp_path / "driver.log").read_text()
    (row,) = _rows(study_dir).values()
    assert row["status"] == "completed"
    history = pq.read_table(study_dir / "history" / f"{trial_id}.parquet").to_pylist()
    keys = [(h["step"], h["kind"]) for h in history]
    assert len(keys) == len(set(keys))
    assert {h["step"] for h in history if h["kind"] == "eval"} == {0, 2, 4}
