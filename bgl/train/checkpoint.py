"""Checkpoints: both models, both optimisers, data-stream positions and the step.

Saved atomically (temporary file, then rename) and loaded with `weights_only=True`, so a
checkpoint is plain tensors and Python containers.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from bgl.models.weights import NotACheckpointError, read_torch_file

CHECKPOINT_NAME = "checkpoint.pt"
#: keys every training checkpoint holds (Trainer.state_dict)
CHECKPOINT_KEYS = frozenset({"step", "upper", "lower", "config"})


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def checkpoint_complete(path: str | Path) -> bool:
    """Whether `path` holds a whole checkpoint file: torch writes its zip directory last, so a
    file cut short by a killed copy (a study's checkpoint is copied into place) has none."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_torch_file(path, "bgl checkpoint", map_location)
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise NotACheckpointError(f"{path}: not a bgl checkpoint (corrupt or another format)")
    return state
