"""What the real-data loaders (SID, DARK FACE, ACDC) share: cache-or-decode access, subsets, seeds.

``ArraySource`` is the one place that decides where an item's pixels come from: the packed cache
when it holds a fresh entry (unchanged source size and mtime), else the dataset's own decoder,
with a warning that says how many items will be decoded on the fly and how to fix it. Items the
cache recorded as bad are refused with the recorded reason, or skipped and listed under
``skip_bad``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bgl.data.cache import (
    MANIFEST,
    CacheEntry,
    Decoder,
    PackedCache,
    PrepareItem,
    default_cache_dir,
)
from bgl.data.errors import BadItemLog, DataError

__all__ = ["ArraySource", "SubsetTooLarge", "item_seed", "seeded_subset", "split_counts"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class SubsetTooLarge(ValueError):
    """More items were asked for than a split holds."""


def item_seed(seed: int, key: str) -> int:
    """A stable 63-bit seed for one item of a dataset (independent of order and Python's hash)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_subset(items: Sequence[T], size: int | None, seed: int, what: str) -> list[T]:
    """The first ``size`` items of a seeded permutation (all of them when size is None or <= 0).

    A random subset spans scenes instead of taking the first few; asking for more items than
    exist is an error, not a silent cap.
    """
    items = list(items)
    if size is None or size <= 0 or size == len(items):
        return items
    if size > len(items):
        raise SubsetTooLarge(f"{what}: asked for {size} items but the split has only {len(items)}")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    chosen = sorted(int(i) for i in order[:size])  # keep the published order within the subset
    log.info("%s: using %d of %d items (a seeded subset)", what, size, len(items))
    return [items[i] for i in chosen]


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split n items by fractions (largest remainder), every split non-empty when n allows."""
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    for k in counts:  # tiny datasets (tests): give each split at least one item
        if counts[k] == 0 and n >= len(counts):
            donor = max(counts, key=lambda j: counts[j])
            counts[donor] -= 1
            counts[k] += 1
    return counts


class ArraySource:
    """Arrays of items from the packed cache when fresh, else from ``decode`` (with a warning)."""

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        decode: Decoder,
        cache: str | Path | None | bool = None,
    ) -> None:
        """``cache``: a cache base folder (``<cache>/<dataset>`` is used), None for the default
        ``<root>/.bgl-cache``, or False to always decode."""
        self.root, self.dataset, self.decode = Path(root), dataset, decode
        self.cache: PackedCache | None = None
        self.cache_dir: Path | None = None
        if cache is not False:
            self.cache_dir = default_cache_dir(root, dataset, cache if cache is not True else None)
            if (self.cache_dir / MANIFEST).is_file():
                self.cache = PackedCache(self.cache_dir, dataset, root)
        self._fresh: dict[str, CacheEntry] = {}
        self.live: set[str] = set()

    def check(
        self,
        items: Sequence[PrepareItem],
        bad: BadItemLog,
        probe: Callable[[PrepareItem], Any] | None = None,
    ) -> set[str]:
        """Look every item up once; returns the keys to leave out (bad, skipped under skip_bad).

        A bad entry raises unless ``bad.skip_bad``. Items missing from the cache (or stale) are
        decoded on the fly, and one warning says how many. Under ``skip_bad`` those items are
        first probed (``probe(item)`` decodes just enough to fail on a bad file), so a broken
        file is skipped now rather than stopping training later.
        """
        from bgl.raw.read import RawReadError

        dropped: set[str] = set()
        live = []
        for item in items:
            entry = self.cache.fresh(item.key, item.sources) if self.cache else None
            if entry is None:
                live.append(item)
            elif entry.ok:
                self._fresh[item.key] = entry
            else:
                m = entry.meta
                error = DataError(
                    m.get("file") or item.sources[0],
                    f"{m.get('reason') or entry.error} (recorded by `bgl data prepare`)",
                    m.get("line"),
                )
                bad.report(error)
                dropped.add(item.key)
        if live and bad.skip_bad and probe is not None:
            log.info("%s: checking %d files that are not in the cache", self.dataset, len(live))
            for item in live:
                try:
                    probe(item)
                except RawReadError as exc:
                    bad.report(DataError(exc.file, exc.reason))
                    dropped.add(item.key)
                except DataError as error:
                    bad.report(error)
                    dropped.add(item.key)
        self.live = {item.key for item in live if item.key not in dropped}
        if self.live:
            where = (
                f"the cache at {self.cache_dir} lacks {len(self.live)} of {len(items)} items "
                "(missing or changed since prepared)"
                if self.cache
                else f"no packed cache at {self.cache_dir}"
                if self.cache_dir
                else "caching is off"
            )
            log.warning(
                "%s: %s; decoding them on the fly, which is slow. Run `bgl data prepare %s "
                "--root %s` to decode once.",
                self.dataset,
                where,
                self.dataset,
                self.root,
            )
        return dropped

    @property
    def cached_fraction(self) -> float:
        total = len(self._fresh) + len(self.live)
        return len(self._fresh) / total if total else 0.0

    def load(self, item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta) of an item: read-only memory maps from the cache, or freshly decoded."""
        entry = self._fresh.get(item.key)
        if entry is not None and self.cache is not None:
            return {name: self.cache.array(entry, name) for name in entry.arrays}, entry.meta
        from bgl.raw.read import RawReadError

        try:
            return self.decode(item)
        except RawReadError as exc:
            raise DataError(exc.file, exc.reason) from None
