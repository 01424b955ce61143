"""Load torchvision-format state dicts from local files (nothing is downloaded at run time).

Pretrained backbones come from files the user already has: an explicit path, an environment
variable, or torch hub's checkpoint cache (`$TORCH_HOME/hub/checkpoints/`, where torchvision
itself stores them). A missing file is an error that names the file and where it was looked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class NotACheckpointError(ValueError):
    """A file handed to bgl that is not what it should be (corrupt, or another format)."""


def read_torch_file(
    path: str | os.PathLike[str],
    what: str = "bgl checkpoint",
    map_location: str | torch.device = "cpu",
) -> Any:
    """`torch.load(path, weights_only=True)`; a file that fails is reported as
    "FILE: not a WHAT (corrupt or another format)" -- never with torch's advice to load it with
    `weights_only=False`, which would run whatever code the file holds."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign pickle, not a torch file ...
        log.debug("torch.load(%s) failed: %s", path, exc)
        raise NotACheckpointError(f"{path}: not a {what} (corrupt or another format)") from None


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint cache: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights_file(
    filenames: Sequence[str],
    path: str | os.PathLike[str] | None = None,
    *,
    env: str | None = None,
    what: str = "weights",
    source: str = "",
) -> Path:
    """The first existing file among: `path`, `$env`, then each of `filenames` in the hub cache.

    An explicit `path` (or `$env`) that does not exist is an error of its own rather than a
    silent fall-back, so a typo is not masked by a cached file.
    """
    for given, label in ((path, "path"), (os.environ.get(env) if env else None, f"${env}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"{what}: {label} {str(p)!r} is not a file")
            return p
    cache = hub_checkpoint_dir()
    for name in filenames:
        candidate = cache / name
        if candidate.is_file():
            return candidate
    hint = f" ({source})" if source else ""
    via_env = f", set ${env}," if env else ""
    raise FileNotFoundError(
        f"{what} not found: expected {filenames[0]}{hint} in {cache} (the torch hub cache; "
        f"$TORCH_HOME moves it){via_env} or pass the file's path explicitly"
    )


def load_state_dict_file(path: str | os.PathLike[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file (`weights_only=True`), keeping keys under `prefix`, stripped.

    With `prefix="features."` a full torchvision checkpoint (`features.0.weight`, ...,
    `classifier.6.bias`) yields the trunk's own keys (`0.weight`, ...); a file that already holds
    only the trunk (no prefix anywhere) is returned as is.
    """
    path = Path(path)
    state = read_torch_file(path, "state-dict file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state
