"""Pretrained weights as torchvision users expect: a local file, or torchvision's, downloaded once.

A weights file is looked for as an explicit path, then an environment variable, then torchvision's
file name in torch hub's checkpoint cache (`$TORCH_HOME/hub/checkpoints/`, where torchvision itself
keeps it). A file missing from the cache is downloaded there from torchvision's URL, with a
progress bar, and refused unless its sha256 starts with the hash prefix in its name (torch hub's
`check_hash`); a failed or interrupted transfer leaves nothing in the cache. `BGL_OFFLINE=1`
forbids downloads; then, or when the network cannot be reached, a missing file is an error that
names the file, where it was looked for and how to place it. `BGL_WEIGHTS_URL` replaces the
download base URL (a mirror, or a loopback server in tests).
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Set to 1 to forbid downloads: a missing weights file is then an error.
OFFLINE_ENV = "BGL_OFFLINE"
#: Base URL that replaces torchvision's (https://download.pytorch.org/models) for downloads.
URL_ENV = "BGL_WEIGHTS_URL"


class WeightsDownloadError(RuntimeError):
    """A weights download that reached the server but failed: HTTP error, hash mismatch, or an
    interrupted transfer. Nothing is left in the cache."""


class RandomInitWarning(UserWarning):
    """A full-size task network whose backbone starts from random weights, not ImageNet's."""


def warn_random_init(message: str) -> None:
    """Warn (a `RandomInitWarning`) and log that a backbone is randomly initialised: a paper
    setting trained from scratch silently gives numbers that are not the paper's."""
    warnings.warn(message, RandomInitWarning, stacklevel=2)
    log.warning(message)


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


def offline() -> bool:
    """True when `$BGL_OFFLINE` forbids downloads (any value but empty, 0, false, no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def download_url(url: str) -> str:
    """`url`, or its file name under `$BGL_WEIGHTS_URL` when that is set."""
    base = os.environ.get(URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if base else url


def find_weights_file(
    filenames: Sequence[str],
    path: str | os.PathLike[str] | None = None,
    *,
    env: str | None = None,
    what: str = "weights",
    source: str = "",
    url: str | None = None,
) -> Path:
    """The first existing file among: `path`, `$env`, then each of `filenames` in the hub cache;
    else `url` (the file `filenames[0]`) downloaded into the cache, unless offline.

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
    place = f"download {url} into that folder" if url else "place the file in that folder"
    missing = (
        f"{what} not found: expected {filenames[0]}{hint} in {cache} (the torch hub cache; "
        f"$TORCH_HOME moves it); {place}{via_env} or pass the file's path explicitly"
    )
    if url is None:
        raise FileNotFoundError(missing)
    if offline():
        raise FileNotFoundError(f"{missing} (${OFFLINE_ENV} is set: nothing is downloaded)")
    return download_weights(download_url(url), cache / filenames[0], what=what, missing=missing)


def download_weights(url: str, dest: Path, *, what: str = "weights", missing: str = "") -> Path:
    """Download `url` to `dest` through torch hub, checking the sha256 prefix in its file name.

    torch hub writes to a temporary name beside `dest` and renames it only after the hash check,
    so a failure never leaves a file behind. A server that cannot be reached (refused, DNS) is
    the missing-file error `missing` (FileNotFoundError), as offline; any other failure is a
    `WeightsDownloadError`.
    """
    match = torch.hub.HASH_REGEX.search(dest.name)
    if match is None or not match.group(1):
        raise ValueError(f"{dest.name}: no sha256 prefix in the file name to check a download")
    prefix = match.group(1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s to %s", what, url, dest)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=True)
    except urllib.error.HTTPError as exc:
        raise WeightsDownloadError(f"{what}: downloading {url} failed: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:  # refused, DNS failure, unreachable: no network
        reason = getattr(exc, "reason", exc)
        raise FileNotFoundError(f"{missing} (download from {url} failed: {reason})") from None
    except RuntimeError as exc:  # torch hub: invalid hash value
        raise WeightsDownloadError(
            f"{what}: the file downloaded from {url} is corrupt or incomplete (its sha256 does "
            f"not start with {prefix!r}, the prefix in its name: {exc}); nothing was saved in "
            f"{dest.parent}"
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # reset mid-transfer, disk full, ...
        raise WeightsDownloadError(
            f"{what}: downloading {url} failed ({exc}); nothing was saved in {dest.parent}"
        ) from None
    return dest


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
