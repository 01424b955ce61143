"""Tune's saved experiment state, made safe to restore: no trial restored from a checkpoint
that is gone.

Why a repair at resume, not a retention that waits: Tune's checkpoint retention
(`CheckpointConfig(num_to_keep)`) deletes a trial's dropped checkpoints the moment it registers a
new one, and the experiment state naming the new one is written afterwards, to the driver's
staging folder, and copied to the study folder later still (by a background sync). A driver
killed in between leaves a saved state whose trial names a deleted checkpoint, and Tune's
restore then fails the trial ("Could not recover from checkpoint as it does not exist on
storage anymore"; upstream ray-project/ray#27790). Tune exposes neither the moment its state
reaches storage nor a hook into its deletion, so a retention of our own could not know when a
deletion becomes safe; what is on storage at resume time can always be read. So before Tune
restores, each trial's record is checked against the files:

- a trial that has its row (finished) loses every checkpoint reference: it is replayed from its
  row and restores nothing;
- an unfinished trial whose latest checkpoint exists and is whole keeps it;
- else it is pointed at its newest whole checkpoint on storage (one Tune had not yet recorded is
  newer still, never older, than the one it lost), with the metrics Tune logged for it;
- else it restarts from scratch (said in the log);
- checkpoints the record lists that are gone are dropped from it (retention would otherwise try
  to delete them again).

Tune's own "Saving experiment state to storage at ... failed ... FileNotFoundError: Failed to
open local file '.../driver_artifacts/.<uuid>-tmp-basic-variant-state-....json'", seen in resumed
drivers' logs, is Tune racing itself (Ray 2.60): its searcher writes its state to the staging
folder as a temporary file renamed into place, while the background sync of the previous save
lists that folder and then opens the temporary name, already gone. That one sync fails; the next
copies the renamed file. Nothing of bgl's is involved and nothing is lost, so it is left alone
(`bgl bench faults --study` counts it per campaign).

A checkpoint is whole when its `checkpoint.pt` is (`checkpoint_complete`): Tune copies a
checkpoint into place file by file, so a killed copy can leave a folder with a cut file.
A trial's newest whole checkpoint may also hold its end report (`END_REPORT_NAME`): the trial
trained to its end, and `end_reports` gives the report for its row.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgl.results.report import END_REPORT_NAME
from bgl.train.checkpoint import CHECKPOINT_NAME, checkpoint_complete

log = logging.getLogger(__name__)

STATE_GLOB = "experiment_state-*.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
#: a state file's family: its name up to the session timestamp Tune appends
_FAMILY = re.compile(r"^(.*?)(-?\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})?\.(json|pkl)$")


@dataclass
class StateRepair:
    """What a repair of Tune's state changed, by trial id."""

    repointed: dict[str, str] = field(default_factory=dict)  # trial -> checkpoint folder name
    restarted: list[str] = field(default_factory=list)  # no whole checkpoint left
    cleared: list[str] = field(default_factory=list)  # finished: restores nothing
    dropped: int = 0  # references to checkpoints that are gone

    @property
    def changed(self) -> bool:
        return bool(self.repointed or self.restarted or self.cleared or self.dropped)


def newest_state(tune_dir: Path) -> Path | None:
    """The experiment state file Tune restores from (it picks the newest by name, which ends in
    the session's start time)."""
    return max(Path(tune_dir).glob(STATE_GLOB), default=None)


def torn_state_file(tune_dir: Path) -> Path | None:
    """The first of the files Tune restores from that is cut short, or None.

    Tune copies its state to the study folder in place, so a driver killed during the copy can
    leave any of them torn: the experiment state, the searcher's state (a grid's
    `basic-variant-state-*.json` is a pickle), callback states, `tuner.pkl`. Tune reads the newest
    of each family, and when one fails to load it *restarts the experiment* ("Failed to restore
    the run state ... Restarting experiment", Ray 2.60), which can run finished trials again; so
    each is loaded here first, and a torn one makes the whole state unusable.
    """
    newest: dict[str, Path] = {}
    for path in sorted(Path(tune_dir).iterdir()):
        match = _FAMILY.match(path.name)
        if path.is_file() and match and not path.name.startswith("."):
            newest[match.group(1)] = path  # sorted by name: the last is the newest
    for path in newest.values():
        if not _loads(path.read_bytes()):
            return path
    return None


def _loads(data: bytes) -> bool:
    """Whether `data` is a whole JSON document or a whole pickle."""
    import cloudpickle

    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        cloudpickle.loads(data)
        return True
    except Exception:  # noqa: BLE001 - any failure to unpickle means the file is not whole
        return False


def whole_checkpoints(trial_dir: Path) -> list[Path]:
    """A trial folder's whole checkpoints, oldest first."""
    found = []
    for path in Path(trial_dir).glob("checkpoint_*"):
        match = _CHECKPOINT_DIR.match(path.name)
        if match and checkpoint_complete(path / CHECKPOINT_NAME):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def end_report(trial_dir: Path) -> dict[str, Any] | None:
    """The end report in the trial's newest whole checkpoint, if it trained to its end."""
    whole = whole_checkpoints(trial_dir)
    if not whole:
        return None
    try:
        return json.loads((whole[-1] / END_REPORT_NAME).read_text())
    except (OSError, ValueError):  # none there, or a copy cut short: not ended
        return None


def trial_dirs(tune_dir: Path) -> dict[str, Path]:
    """Each trial's folder in the experiment, by trial id, as the newest saved state names it;
    empty when there is no readable state."""
    state = _read_state(tune_dir)
    if state is None:
        return {}
    return {t.trial_id: Path(tune_dir) / t.storage.trial_dir_name for t, _, _ in _trials(state)}


def latest_checkpoints(tune_dir: Path) -> dict[str, Path | None]:
    """The checkpoint each trial would restore from, as the newest saved state names it (in the
    trial's folder where the study folder is now)."""
    state = _read_state(tune_dir)
    out: dict[str, Path | None] = {}
    for trial, metadata, _ in _trials(state or {}):
        latest = metadata.checkpoint_manager.latest_checkpoint_result
        folder = Path(tune_dir) / trial.storage.trial_dir_name
        out[trial.trial_id] = folder / Path(latest.checkpoint.path).name if latest else None
    return out


def repair_checkpoints(tune_dir: Path, finished: set[str]) -> StateRepair:
    """Make the newest saved state of `tune_dir` name only whole, existing checkpoints (see the
    module docstring); `finished`: ids of trials that have their row. Rewrites the state file
    atomically when anything changed."""
    out = StateRepair()
    path = newest_state(tune_dir)
    state = _read_state(tune_dir)
    if path is None or state is None:
        return out
    entries = []
    for trial, metadata, trial_json in _trials(state):
        if str(trial.status) not in ("TERMINATED", "ERROR"):
            _repair_trial(trial, metadata, Path(tune_dir), trial.trial_id in finished, out)
        metadata._cached_json = None
        entries.append([trial_json, metadata.get_json_state()])
    if not out.changed:
        return out
    state["trial_data"] = entries
    tmp = path.with_name(f".{path.name}.tmp")
    from ray.tune.utils.serialization import TuneFunctionEncoder

    tmp.write_text(json.dumps(state, cls=TuneFunctionEncoder))
    os.replace(tmp, path)
    for trial_id, name in out.repointed.items():
        log.info("trial %s: its saved checkpoint is gone; resuming from %s", trial_id, name)
    for trial_id in out.restarted:
        log.warning("trial %s: no whole checkpoint is left; it restarts from scratch", trial_id)
    return out


def _repair_trial(
    trial: Any, metadata: Any, tune_dir: Path, finished: bool, out: StateRepair
) -> None:
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    manager = metadata.checkpoint_manager
    trial_dir = tune_dir / trial.storage.trial_dir_name
    if finished:
        if manager.latest_checkpoint_result is not None or manager._checkpoint_results:
            out.cleared.append(trial.trial_id)
        manager._latest_checkpoint_result = None
        manager._checkpoint_results = []
        return
    kept = [r for r in manager._checkpoint_results if _whole(trial_dir, r)]
    out.dropped += len(manager._checkpoint_results) - len(kept)
    manager._checkpoint_results = kept
    latest = manager.latest_checkpoint_result
    if latest is None or _whole(trial_dir, latest):
        return
    whole = whole_checkpoints(trial_dir)
    if not whole:
        manager._latest_checkpoint_result = None
        out.restarted.append(trial.trial_id)
        return
    newest = whole[-1]
    metrics = _logged_metrics(trial_dir, newest.name) or {}
    manager._latest_checkpoint_result = _TrainingResult(
        checkpoint=Checkpoint(path=str(newest)), metrics=metrics
    )
    out.repointed[trial.trial_id] = newest.name


def _whole(trial_dir: Path, result: Any) -> bool:
    """Whether a recorded checkpoint is whole on storage (found by its folder name in the
    trial's folder, so a study folder that moved is judged where it is now)."""
    name = Path(result.checkpoint.path).name
    return checkpoint_complete(trial_dir / name / CHECKPOINT_NAME)


def _logged_metrics(trial_dir: Path, checkpoint_name: str) -> dict[str, Any] | None:
    """The result Tune logged with a checkpoint (result.json), if it got that far."""
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            result = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if result.get("checkpoint_dir_name") == checkpoint_name:
            return result
    return None


def _read_state(tune_dir: Path) -> dict[str, Any] | None:
    path = newest_state(tune_dir)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # half-written by a killed driver: Tune cannot use it either
        return None


def _trials(state: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    """(trial, run metadata, the trial's own JSON) of a saved state, decoded as Tune does."""
    from ray.tune.experiment.trial import Trial
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    return [
        (
            Trial.from_json_state(trial, stub=True),
            _TrainingRunMetadata.from_json_state(meta),
            trial,
        )
        for trial, meta in state.get("trial_data", [])
    ]
