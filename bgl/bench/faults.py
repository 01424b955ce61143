"""`bgl bench faults`: kill a study's driver at five moments of its life, resume after each.

One campaign = one tiny study (`num_samples` trials, one at a time, trained in the trial
process, the shipped checkpoint retention) whose driver is SIGKILLed, with its whole process
group, at five points pinned by the fault markers (`bgl.study.faults`), never by sleeps:

1. in the window between a new checkpoint and the experiment state that names it (retention
   has deleted the checkpoint the saved state still names);
2. before the first trial ends (its first evaluation was reported);
3. right after a trial's last report (its row is written; Optuna has not been told);
4. between trials (the next trial has just started);
5. during the last trial;

then resumed to the end. Counted per campaign: kills injected, resumes, crashes (a resume that
exited non-zero or ended before its kill point), trials trained to the end twice, rows lost
(the study short of `num_samples` rows, or a row that vanished), rows rewritten (mtime or
content changed), and the Optuna journal against the rows (finished trials, trials left RUNNING).
Rows go to Parquet and a table is printed; nothing is asserted here (the tests do).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bgl.study.faults import FAULT_DIR_ENV, FAULT_HOLD_ENV, occurrences

KILL_POINTS = (
    "checkpoint_window",
    "first_trial_running",
    "after_last_report",
    "between_trials",
    "last_trial_running",
)

#: the smallest study that exercises every kill point (seconds per trial on 2 CPUs)
TINY_BASE: dict[str, Any] = {
    "task": {"name": "enhance", "options": {"width": 4}},
    "model": {"generator_width": 4},
    "data": {"train_size": 8, "val_size": 4, "select_size": 4, "test_size": 4, "crop": 32,
             "batch_size": 2, "val_batch_size": 2, "eval_batch_size": 4},
    "optim": {"optimizer": "sgd"},
    "train": {"warm_steps": 2, "steps": 2, "eval_every": 2, "log_every": 1,
              "checkpoint_every": 2, "device": "cpu"},
}  # fmt: skip


def fault_study(folder: Path, name: str = "faults", num_samples: int = 4) -> Path:
    """Write a tiny random-search study YAML into `folder`; returns its path."""
    study = {
        "name": name,
        "output_dir": str(folder / "results"),
        "base": TINY_BASE,
        "search": {
            "metric": "psnr",
            "mode": "max",
            "num_samples": num_samples,
            "sampler": "random",
            "solvers": ["naive", "ibgl"],
            "params": {"solver.k": {"type": "int", "low": 1, "high": 2}},
        },
        "resources": {"max_concurrent_trials": 1, "launcher": "in_trial"},
        "logging": {"tensorboard": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@dataclass
class Campaign:
    """What one kill-and-resume campaign saw."""

    kills: int = 0
    resumes: int = 0
    crashes: int = 0
    trials_run_twice: int = 0
    rows_lost: int = 0
    rows_rewritten: int = 0
    rows: int = 0
    optuna_finished: int = 0
    optuna_running: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Driver:
    """Starts `bgl study run` as its own process group and kills it at a fault marker."""

    def __init__(self, study_yaml: Path, study_dir: Path, fault_dir: Path, log: Path) -> None:
        self.study_yaml, self.study_dir, self.fault_dir, self.log = (
            study_yaml,
            study_dir,
            fault_dir,
            log,
        )

    def rows(self) -> dict[str, tuple[int, bytes]]:
        """Each row file's mtime and content."""
        return {
            p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((self.study_dir / "trials").glob("*.parquet"))
        }

    def run(
        self, *, resume: bool, hold: str | None = None, rows_at_least: int = 0,
        timeout: float = 600.0,
    ) -> int | None:  # fmt: skip
        """Run the driver; with `hold` ("event:n"), SIGKILL its process group once that fault
        point is reached (and `rows_at_least` rows exist) and return None; without `hold`, once
        `rows_at_least` (> 0) rows exist; else its exit code. A driver that exits before its
        kill point returns its exit code."""
        cmd = [sys.executable, "-m", "bgl.cli", "study", "run", str(self.study_yaml), "--no-live"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{FAULT_DIR_ENV: str(self.fault_dir)})
        env.pop(FAULT_HOLD_ENV, None)
        if hold:
            env[FAULT_HOLD_ENV] = hold
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                cmd + (["--resume"] if resume else []),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            marker = self.fault_dir / f"hold.{hold.replace(':', '.')}" if hold else None
            while proc.poll() is None:
                reached = marker.exists() if marker is not None else rows_at_least > 0
                if reached and len(self.rows()) >= rows_at_least:
                    kill_group(proc)
                    return None
                if time.monotonic() > deadline:
                    kill_group(proc)
                    raise TimeoutError(f"study driver still running after {timeout:.0f} s")
                time.sleep(0.05)
            return proc.returncode


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group (the driver, its local Ray and the trials)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_holder(fault_dir: Path, hold: str, timeout: float = 240.0) -> int:
    """Wait for the process holding at fault point `hold` ("event:n") and SIGKILL that process
    alone (a Ray Train worker, a trial process); returns its pid."""
    marker = fault_dir / f"hold.{hold.replace(':', '.')}"
    deadline = time.monotonic() + timeout
    while not (marker.exists() and marker.read_text()):  # the pid is written right after
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing reached fault point {hold} in {timeout:.0f} s")
        time.sleep(0.05)
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def hold_point(point: str, fault_dir: Path, rows: int, num_samples: int) -> tuple[str, int]:
    """The fault marker ("event:n") that pins `point`, and the rows that must exist by then."""
    count = lambda event: occurrences(fault_dir, event)  # noqa: E731
    if point == "checkpoint_window":  # the next window where retention deleted a named one
        return f"checkpoint:{count('checkpoint') + 1}", 0
    if point == "first_trial_running":
        return f"report:{count('report') + 1}", 0
    if point == "after_last_report":
        return f"end:{count('end') + 1}", rows + 1
    if point == "between_trials":
        return f"start:{count('start') + 1}", 0
    if point == "last_trial_running":  # one at a time: each remaining trial starts once
        return f"start:{count('start') + num_samples - rows}", 0
    raise ValueError(f"unknown kill point {point!r}; one of {', '.join(KILL_POINTS)}")


def corrupt_state(experiment: Path, study_dir: Path) -> None:
    """What a driver killed while Tune copied its state can leave: the newest experiment
    state and searcher state half-written, and Optuna's journal lock left behind."""
    newest = max(experiment.glob("experiment_state-*.json"), default=None)  # Tune's choice
    for path in [newest, *experiment.glob("searcher-state-*.pkl")]:
        if path is not None:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    lock = study_dir / "optuna.journal.lock"
    if not lock.exists():
        lock.symlink_to(study_dir / "optuna.journal")


def run_campaign(
    folder: Path, num_samples: int = 4, timeout: float = 600.0, corrupt_after: str | None = None
) -> Campaign:
    """One study, killed at every point of `KILL_POINTS` in turn, then resumed to the end;
    `corrupt_after` (a kill point) also damages the state files the kill there left."""
    from bgl.study.schema import load_study

    start = time.perf_counter()
    study_yaml = fault_study(folder, num_samples=num_samples)
    study_dir = load_study(study_yaml).study_dir
    fault_dir = folder / "markers"
    driver = Driver(study_yaml, study_dir, fault_dir, folder / "driver.log")
    out = Campaign()
    seen: dict[str, tuple[int, bytes]] = {}

    def check_rows() -> None:
        now = driver.rows()
        for name, (mtime, content) in seen.items():
            if name not in now:
                out.rows_lost += 1
                out.notes.append(f"row {name} vanished")
            elif now[name] != (mtime, content):
                out.rows_rewritten += 1
                out.notes.append(f"row {name} rewritten")
        seen.update({k: v for k, v in now.items() if k not in seen})

    for i, point in enumerate(KILL_POINTS):
        hold, rows_at_least = hold_point(point, fault_dir, len(seen), num_samples)
        rc = driver.run(resume=i > 0, hold=hold, rows_at_least=rows_at_least, timeout=timeout)
        out.resumes += i > 0
        if rc is None:
            out.kills += 1
        else:
            out.crashes += rc != 0 or len(driver.rows()) < num_samples
            out.notes.append(f"{point}: the driver exited ({rc}) before the kill point")
        check_rows()
        if point == corrupt_after:
            corrupt_state(_last_experiment(study_dir), study_dir)
    rc = driver.run(resume=True, timeout=timeout)
    out.resumes += 1
    out.crashes += rc != 0
    if rc != 0:
        out.notes.append(f"final resume exited {rc}")
    check_rows()
    out.rows = len(seen)
    out.rows_lost += max(0, num_samples - out.rows)
    ends: dict[str, int] = {}
    for p in fault_dir.glob("end.*"):
        run_name = p.name.split(".", 2)[2]
        ends[run_name] = ends.get(run_name, 0) + 1
    out.trials_run_twice = sum(n > 1 for n in ends.values())
    out.optuna_finished, out.optuna_running = _journal_counts(study_dir, "faults")
    out.wall_s = time.perf_counter() - start
    return out


def _last_experiment(study_dir: Path) -> Path:
    import json

    from bgl.study.plan import PLAN

    return study_dir / json.loads((study_dir / PLAN).read_text())["experiments"][-1]


def _journal_counts(study_dir: Path, name: str) -> tuple[int, int]:
    from optuna.trial import TrialState

    from bgl.study.journal import load_trials, open_journal

    trials = load_trials(open_journal(study_dir), name)
    finished = sum(t.state.is_finished() for t in trials)
    return finished, sum(t.state == TrialState.RUNNING for t in trials)


def run_faults_bench(
    repeats: int = 5,
    num_samples: int = 4,
    out_dir: str | Path = "results/bench",
    console: Console | None = None,
    work_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """`repeats` campaigns; one Parquet row each (`<out_dir>/faults-<timestamp>.parquet`)."""
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit

    console = console or Console()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bgl-faults-", dir=work_dir) as tmp:
        for r in range(repeats):
            folder = Path(tmp) / f"campaign{r}"
            folder.mkdir()
            corrupt = "between_trials" if r % 2 else None  # every other campaign
            c = run_campaign(folder, num_samples=num_samples, corrupt_after=corrupt)
            row = {"bench": "faults", "campaign": r, "num_samples": num_samples, **asdict(c)}
            row["state_corrupted"] = corrupt is not None
            row["notes"] = "; ".join(c.notes)
            row["git_commit"] = git_commit()
            rows.append(row)
            console.log(
                f"campaign {r + 1}/{repeats}: {c.kills} kills, {c.crashes} crashes, "
                f"{c.trials_run_twice} run twice, {c.rows_lost} rows lost ({c.wall_s:.0f} s)"
            )
    write_rows(rows, Path(out_dir) / f"faults-{stamp}.parquet")
    return rows


@dataclass
class RowKills:
    """One real study killed right after each new trial row, resumed after each kill."""

    kills: int = 0
    resumes: int = 0
    resume_failures: int = 0  # a resume that exited non-zero
    rows: int = 0
    trials_expected: int = 0
    duplicate_rows: int = 0
    not_completed: int = 0  # rows whose status is not completed (an error row: a lost trial)
    state_save_errors: int = 0  # Tune's "Saving experiment state ... failed" in the driver logs
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_row_kills(
    study_yaml: Path, folder: Path, expected: int, timeout: float = 600.0
) -> RowKills:
    """Run the study in `folder` (its output_dir moved there), SIGKILL the driver's process group
    as soon as the n-th trial row appears (n = 1, 2, ...: a user's ^C-less crash right after
    progress), resume, until a run exits by itself; then check every trial has exactly one
    row, `completed`. `expected`: the study's trial count."""
    import pyarrow.parquet as pq

    from bgl.study.schema import load_study

    start = time.perf_counter()
    data = yaml.safe_load(Path(study_yaml).read_text())
    data["output_dir"] = str(folder / "results")
    local = folder / Path(study_yaml).name
    local.write_text(yaml.safe_dump(data))
    study_dir = load_study(local).study_dir
    driver = Driver(local, study_dir, folder / "markers", folder / "driver.log")
    out = RowKills(trials_expected=expected)
    n, resume = 1, False
    while True:
        rc = driver.run(resume=resume, rows_at_least=n if n <= expected else 0, timeout=timeout)
        out.resumes += resume
        if rc is None:
            out.kills += 1
            n = len(driver.rows()) + 1
            resume = True
            continue
        if rc != 0:
            out.resume_failures += 1
            out.notes.append(f"driver exited {rc}")
        break
    ids = [pq.read_table(p).column("trial_id")[0].as_py() for p in study_dir.glob("trials/*")]
    statuses = [pq.read_table(p).column("status")[0].as_py() for p in study_dir.glob("trials/*")]
    out.rows = len(ids)
    out.duplicate_rows = len(ids) - len(set(ids))
    out.not_completed = sum(s != "completed" for s in statuses)
    if out.rows != expected:
        out.notes.append(f"{out.rows} rows for {expected} trials")
    log = (folder / "driver.log").read_text(errors="replace").splitlines()
    failed = [i for i, line in enumerate(log) if "Saving experiment state" in line]
    out.state_save_errors = len(failed)
    if failed:  # the exception's last line says what was missing
        tail = next((x for x in log[failed[0] :] if "Error" in x and ":" in x), log[failed[0]])
        out.notes.append(f"Tune state save failed: {tail.strip()[:300]}")
    out.wall_s = time.perf_counter() - start
    return out


def run_row_kills_bench(
    study_yaml: Path,
    kills: int = 20,
    out_dir: str | Path = "results/bench",
    console: Console | None = None,
    work_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Campaigns of `run_row_kills` on one study until `kills` kills are made; one Parquet row
    per campaign (`<out_dir>/faults-rows-<timestamp>.parquet`)."""
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit
    from bgl.study.schema import load_study

    console = console or Console()
    expected = _trial_count(load_study(study_yaml))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bgl-faults-", dir=work_dir) as tmp:
        done = 0
        while done < kills:
            folder = Path(tmp) / f"campaign{len(rows)}"
            folder.mkdir()
            c = run_row_kills(Path(study_yaml), folder, expected)
            done += c.kills
            if c.resume_failures or c.not_completed or c.rows != expected:  # keep the evidence
                log = Path(out_dir) / f"faults-rows-{stamp}-campaign{len(rows)}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "driver.log", log)
                c.notes.append(f"driver log: {log}")
            row = {"bench": "faults-rows", "study": str(study_yaml), "campaign": len(rows)}
            row |= {**asdict(c), "notes": "; ".join(c.notes), "git_commit": git_commit()}
            rows.append(row)
            console.log(
                f"campaign {len(rows)}: {c.kills} kills, {c.resume_failures} failed resumes, "
                f"{c.rows}/{expected} rows, {c.not_completed} not completed, "
                f"{c.duplicate_rows} duplicated ({c.wall_s:.0f} s)"
            )
    write_rows(rows, Path(out_dir) / f"faults-rows-{stamp}.parquet")
    return rows


def _trial_count(study: Any) -> int:
    """How many trials the study runs (a grid: its points, else num_samples)."""
    from bgl.study.space import grid_points

    return len(grid_points(study)) if study.sampler == "grid" else study.num_samples


def print_row_kills(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="killed right after each new row, resumed (bgl bench faults --study)")
    cols = (
        "kills", "resumes", "resume_failures", "rows", "duplicate_rows", "not_completed",
        "state_save_errors",
    )  # fmt: skip
    table.add_column("campaign", justify="right")
    for col in (*cols, "wall (s)"):
        table.add_column(col.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(str(r["campaign"]), *(str(r[c]) for c in cols), f"{r['wall_s']:.0f}")
    table.add_row("all", *(str(sum(r[c] for r in rows)) for c in cols), "")
    console.print(table)


README_START, README_END = "<!-- faults:start -->", "<!-- faults:end -->"
_COUNTS = ("kills", "resumes", "crashes", "trials_run_twice", "rows_lost", "rows_rewritten")


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """The campaigns as a markdown table with a totals line (the README's reliability block)."""
    head = ["campaign", "state corrupted", *(c.replace("_", " ") for c in _COUNTS)]
    lines = ["| " + " | ".join([*head, "Optuna trials = rows", "wall (s)"]) + " |"]
    lines.append("|" + "---|" * (len(head) + 2))
    for r in rows:
        match = r["optuna_finished"] == r["rows"] and r["optuna_running"] == 0
        cells = [str(r["campaign"] + 1), "yes" if r["state_corrupted"] else "no"]
        cells += [str(r[c]) for c in _COUNTS]
        cells += ["yes" if match else f"no ({r['optuna_finished']} vs {r['rows']})"]
        lines.append("| " + " | ".join([*cells, f"{r['wall_s']:.0f}"]) + " |")
    ok = sum(r["optuna_finished"] == r["rows"] and r["optuna_running"] == 0 for r in rows)
    totals = [str(sum(r[c] for r in rows)) for c in _COUNTS]
    lines.append("| " + " | ".join(["**all**", "", *totals, f"{ok}/{len(rows)}", ""]) + " |")
    commit = rows[0].get("git_commit") if rows else None
    note = f"\n_`bgl bench faults` at commit {commit[:7]}._\n" if commit else "\n"
    return "\n".join(lines) + "\n" + note


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="kill and resume (bgl bench faults)")
    cols = ("kills", "resumes", "crashes", "trials_run_twice", "rows_lost", "rows_rewritten")
    table.add_column("campaign", justify="right")
    table.add_column("state corrupted", justify="right")
    for col in (*cols, "optuna = rows"):
        table.add_column(col.replace("_", " "), justify="right")
    for row in rows:
        match = row["optuna_finished"] == row["rows"] and row["optuna_running"] == 0
        table.add_row(
            str(row["campaign"]),
            "yes" if row["state_corrupted"] else "no",
            *(str(row[c]) for c in cols),
            "yes" if match else "no",
        )
    totals = [str(sum(r[c] for r in rows)) for c in cols]
    ok = sum(r["optuna_finished"] == r["rows"] and r["optuna_running"] == 0 for r in rows)
    table.add_row("all", "", *totals, f"{ok}/{len(rows)}")
    console.print(table)
