"""Fault-injection points: trials mark moments of their life in files, and can stop there.

Off unless `BGL_FAULT_DIR` is set (by the fault tests and `bgl bench faults`). Then rank 0 of
every trial writes an empty file `<event>.<n>.<run name>` into that folder at each event, `n`
counting that event's occurrences across the study, so a killer can wait for "the 2nd trial's
end" without sleeping. `BGL_FAULT_HOLD=<event>:<n>` makes the trial that reaches the n-th
occurrence write `hold.<event>.<n>` (holding its process id) and wait there (it is meant to be
killed there: the driver's process group, or only that process), which pins the kill to that
moment.

Events: `start` (training is about to begin), `report` (an evaluation was reported), `end` (the
trial's final report was sent), and one the study's driver marks: `checkpoint` (Tune has
registered a trial's new checkpoint and its retention deleted the one the saved experiment state
names, while the state naming the new one has not yet reached the study folder: the window in
which a killed driver leaves a saved state that names a deleted checkpoint; see
`bgl.study.tune_state`). Only windows where that checkpoint is really gone are marked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAULT_DIR_ENV = "BGL_FAULT_DIR"
FAULT_HOLD_ENV = "BGL_FAULT_HOLD"
EVENTS = ("start", "report", "end", "checkpoint")


def mark(event: str, run_name: str) -> None:
    """Record `event` for `run_name`; hold there if it is the configured kill point."""
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    n = 1 + len(list(path.glob(f"{event}.*")))
    (path / f"{event}.{n}.{run_name}").touch()
    if os.environ.get(FAULT_HOLD_ENV) == f"{event}:{n}":
        (path / f"hold.{event}.{n}").write_text(str(os.getpid()))
        while True:  # until killed
            time.sleep(1)


def occurrences(folder: Path, event: str) -> int:
    """How many times `event` was marked in `folder`."""
    return len(list(Path(folder).glob(f"{event}.*")))
