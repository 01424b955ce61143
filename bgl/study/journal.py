"""The study's Optuna journal and the lock that makes one driver its only writer.

Only the study's driver writes `optuna.journal` (Tune's searcher lives in the driver). A driver
takes `driver.lock` (an `flock`, released by the kernel when the process dies, even by SIGKILL)
before it touches the journal; holding it proves that any `optuna.journal.lock` left in the
folder belongs to a dead driver, so it is removed at once instead of waited on for 30 s.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bgl.config import ConfigError
from bgl.results.tables import OPTUNA_JOURNAL, TUNE_TRIAL_ATTR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

JOURNAL = OPTUNA_JOURNAL
DRIVER_LOCK = "driver.lock"


@contextmanager
def driver_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's driver lock for the block; a second driver gets a clear error."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / DRIVER_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise ConfigError(
                f"{study_dir}: the study is being run by {holder}; wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        _clear_stale_journal_lock(study_dir)
        yield
    finally:
        os.close(fd)  # releases the flock


def _clear_stale_journal_lock(study_dir: Path) -> None:
    lock = study_dir / f"{JOURNAL}.lock"
    if lock.is_symlink() or lock.exists():
        lock.unlink()
        log.info("%s: removed the journal lock a stopped driver left behind", lock)


def open_journal(study_dir: Path) -> Any:
    """The study's Optuna storage (a journal file); call it while holding `driver_lock`."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(study_dir / JOURNAL)))


def load_trials(storage: Any, study_name: str) -> list[Any]:
    """Every Optuna trial of the study (FrozenTrial), or [] when the study does not exist yet."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)
