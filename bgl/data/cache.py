"""The packed cache: decode every RAW/PNG once into memory-mappable ``.npy`` arrays.

Why: rawpy needs ~0.2 s to unpack a 12-megapixel ARW and ~3 s to develop the long-exposure
reference; a training step must never wait for that. ``bgl data prepare`` decodes each source
file once; loaders then slice crops straight out of ``np.load(..., mmap_mode="r")`` arrays and
only the crop's pages are read.

Layout of one dataset's cache folder::

    <cache>/<dataset>/manifest.parquet           one row per source item (see MANIFEST_SCHEMA)
    <cache>/<dataset>/arrays/<item>.<name>.npy   the decoded arrays

What is stored is lossless and small: SID short exposures as the packed uint16 mosaic (black and
white levels in the manifest, exposure ratio applied at load time), long-exposure references as
LibRaw's 16-bit RGB, PNG datasets as their 8-bit pixels and label ids.

Crash safety: each array is written to a temporary file and renamed; its manifest row is
added only after all of its arrays exist, and the manifest itself is replaced atomically. An
interrupted ``prepare`` therefore leaves complete entries (or none) and the next run skips them.
A row also records each source file's size and mtime, so an edited source is decoded again, and a
blake2b checksum of each array (``--verify`` rehashes them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bgl.data.errors import BadItem, DataError

__all__ = [
    "MANIFEST",
    "MANIFEST_SCHEMA",
    "CacheEntry",
    "PackedCache",
    "PrepareItem",
    "PrepareSummary",
    "checksum",
    "default_cache_dir",
    "prepare_items",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
DEFAULT_CACHE_NAME = ".bgl-cache"

MANIFEST_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("key", pa.string()),  # item key: a source path relative to the dataset root
        ("status", pa.string()),  # "ok" or "bad"
        ("error", pa.string()),  # why a bad item is bad (file:line: reason)
        ("sources", pa.list_(pa.string())),  # source files relative to the root
        ("source_sizes", pa.list_(pa.int64())),
        ("source_mtimes_ns", pa.list_(pa.int64())),
        ("arrays", pa.list_(pa.string())),  # array names, e.g. ["packed"] or ["rgb", "labels"]
        ("files", pa.list_(pa.string())),  # .npy files relative to the cache folder
        ("dtypes", pa.list_(pa.string())),
        ("shapes", pa.list_(pa.list_(pa.int64()))),
        ("checksums", pa.list_(pa.string())),  # blake2b-128 of each array's bytes
        ("ratio", pa.float64()),  # exposure ratio where the item has one (SID short exposures)
        ("meta", pa.string()),  # JSON: black/white levels, CFA pattern, boxes, ...
        ("created", pa.string()),
    ]
)


def default_cache_dir(root: str | Path, dataset: str, cache: str | Path | None = None) -> Path:
    """``<cache>/<dataset>``, with ``<cache>`` defaulting to ``<root>/.bgl-cache``."""
    base = Path(cache) if cache is not None else Path(root) / DEFAULT_CACHE_NAME
    return base / dataset


def checksum(array: np.ndarray) -> str:
    """blake2b-128 of the array's C-order bytes."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(key: str) -> str:
    """A file-name-safe, collision-free stem for an item key."""
    digest = hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
    return f"{_SLUG.sub('_', key.replace('/', '__'))[-80:]}-{digest}"


@dataclass
class CacheEntry:
    """One manifest row: an item's arrays (or why it is bad) and where it came from."""

    key: str
    status: str
    sources: list[str]
    source_sizes: list[int]
    source_mtimes_ns: list[int]
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> file/dtype/shape/sum
    ratio: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self, dataset: str) -> dict[str, Any]:
        names = list(self.arrays)
        return {
            "dataset": dataset,
            "key": self.key,
            "status": self.status,
            "error": self.error,
            "sources": self.sources,
            "source_sizes": self.source_sizes,
            "source_mtimes_ns": self.source_mtimes_ns,
            "arrays": names,
            "files": [self.arrays[n]["file"] for n in names],
            "dtypes": [self.arrays[n]["dtype"] for n in names],
            "shapes": [list(self.arrays[n]["shape"]) for n in names],
            "checksums": [self.arrays[n]["checksum"] for n in names],
            "ratio": self.ratio,
            "meta": json.dumps(self.meta, sort_keys=True),
            "created": self.created,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CacheEntry:
        arrays = {
            name: {"file": f, "dtype": d, "shape": tuple(s), "checksum": c}
            for name, f, d, s, c in zip(
                row["arrays"], row["files"], row["dtypes"], row["shapes"], row["checksums"]
            )
        }
        return cls(
            key=row["key"],
            status=row["status"],
            sources=list(row["sources"]),
            source_sizes=list(row["source_sizes"]),
            source_mtimes_ns=list(row["source_mtimes_ns"]),
            arrays=arrays,
            ratio=row["ratio"],
            meta=json.loads(row["meta"] or "{}"),
            error=row["error"],
            created=row["created"] or "",
        )


class PackedCache:
    """One dataset's cache folder: read entries and arrays; add entries atomically."""

    def __init__(self, directory: str | Path, dataset: str, root: str | Path) -> None:
        self.directory, self.dataset, self.root = Path(directory), dataset, Path(root)
        self.entries: dict[str, CacheEntry] = {}
        self._dirty = False
        manifest = self.directory / MANIFEST
        if manifest.is_file():
            try:
                table = pq.read_table(manifest)
            except Exception as exc:  # a foreign or damaged file: say which
                raise DataError(manifest, f"cannot read the cache manifest ({exc})") from None
            missing = set(MANIFEST_SCHEMA.names) - set(table.column_names)
            if missing:
                raise DataError(manifest, f"not a bgl cache manifest (missing {sorted(missing)})")
            for row in table.to_pylist():
                if row["dataset"] != dataset:
                    raise DataError(
                        manifest, f"holds dataset {row['dataset']!r}, expected {dataset!r}"
                    )
                self.entries[row["key"]] = CacheEntry.from_row(row)

    @property
    def exists(self) -> bool:
        return bool(self.entries)

    # -- reading --------------------------------------------------------------------------------
    def fresh(self, key: str, sources: Sequence[str | Path]) -> CacheEntry | None:
        """The entry for ``key`` if its sources are unchanged (size and mtime) and arrays exist."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            stats = [_stat(self.root / s) for s in sources]
        except OSError:
            return None
        if [s for s, _ in stats] != entry.source_sizes or [
            m for _, m in stats
        ] != entry.source_mtimes_ns:
            return None
        if entry.ok and not all(
            (self.directory / a["file"]).is_file() for a in entry.arrays.values()
        ):
            return None
        return entry

    def array(self, entry: CacheEntry, name: str) -> np.ndarray:
        """A read-only memory map of one array of an entry."""
        info = entry.arrays[name]
        path = self.directory / info["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(
                path, f"cannot map cached array ({exc}); run `bgl data prepare` again"
            ) from None
        if tuple(arr.shape) != tuple(info["shape"]) or str(arr.dtype) != info["dtype"]:
            raise DataError(
                path,
                f"cached array is {arr.dtype}{tuple(arr.shape)}, the manifest says "
                f"{info['dtype']}{tuple(info['shape'])}; run `bgl data prepare` again",
            )
        return arr

    def verify(self, entry: CacheEntry) -> list[str]:
        """Names of the entry's arrays whose checksum no longer matches (or that fail to load)."""
        bad = []
        for name, info in entry.arrays.items():
            try:
                ok = (
                    checksum(np.load(self.directory / info["file"], mmap_mode="r"))
                    == info["checksum"]
                )
            except (OSError, ValueError):
                ok = False
            if not ok:
                bad.append(name)
        return bad

    # -- writing --------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        sources: Sequence[str],
        arrays: dict[str, np.ndarray],
        *,
        ratio: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> CacheEntry:
        """Write an item's arrays (each atomically), then record it; returns the new entry."""
        stats = [_stat(self.root / s) for s in sources]
        folder = self.directory / "arrays"
        folder.mkdir(parents=True, exist_ok=True)
        infos = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            rel = f"arrays/{_slug(key)}.{name}.npy"
            _save_npy(self.directory / rel, array)
            infos[name] = {
                "file": rel,
                "dtype": str(array.dtype),
                "shape": tuple(int(s) for s in array.shape),
                "checksum": checksum(array),
            }
        entry = CacheEntry(
            key=key,
            status="ok",
            sources=[str(s) for s in sources],
            source_sizes=[s for s, _ in stats],
            source_mtimes_ns=[m for _, m in stats],
            arrays=infos,
            ratio=ratio,
            meta=meta or {},
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self.entries[key] = entry
        self._dirty = True
        return entry

    def put_bad(self, key: str, sources: Sequence[str], error: DataError) -> CacheEntry:
        """Record an item that failed, so loaders can skip (or refuse) it with the reason."""
        stats = []
        for s in sources:
            try:
                stats.append(_stat(self.root / s))
            except OSError:
                stats.append((-1, -1))
        entry = CacheEntry(
            key=key,
            status="bad",
            sources=[str(s) for s in sources],
            source_sizes=[s for s, _ in stats],
            source_mtimes_ns=[m for _, m in stats],
            error=str(error),
            meta={"file": error.file, "line": error.line, "reason": error.reason},
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self.entries[key] = entry
        self._dirty = True
        return entry

    def flush(self) -> None:
        """Rewrite the manifest atomically (only if something changed)."""
        if not self._dirty:
            return
        rows = [self.entries[k].row(self.dataset) for k in sorted(self.entries)]
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        path = self.directory / MANIFEST
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{MANIFEST}.", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)  # readers see the old or the new manifest, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False

    def clean_temporaries(self) -> int:
        """Remove leftovers of an interrupted write (``.*.tmp``); returns how many."""
        removed = 0
        for folder in (self.directory, self.directory / "arrays"):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the prepare driver ------------------------------------------------------------------------


@dataclass
class PrepareItem:
    """One thing to decode: its key, its source files (relative to the root), and context."""

    key: str
    sources: list[str]
    ratio: float | None = None
    context: dict[str, Any] = field(default_factory=dict)


#: decode(item) -> (arrays, meta); raises DataError (or RawReadError) for bad input.
Decoder = Callable[[PrepareItem], tuple[dict[str, np.ndarray], dict[str, Any]]]


@dataclass
class PrepareSummary:
    dataset: str
    cache_dir: str
    total: int = 0
    decoded: int = 0
    reused: int = 0
    bad: list[BadItem] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0
    corrupt: list[str] = field(default_factory=list)  # entries redone because --verify failed


def prepare_items(
    cache: PackedCache,
    items: Iterable[PrepareItem],
    decode: Decoder,
    *,
    skip_bad: bool = False,
    verify: bool = False,
    force: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    flush_every_s: float = 2.0,
) -> PrepareSummary:
    """Decode every item not already in the cache; resumable and crash-safe (see module doc).

    A bad item raises :class:`DataError` naming the file (and line), unless ``skip_bad``: then it
    is recorded as bad in the manifest, counted and listed in the summary. Items recorded as bad
    by an earlier run are tried again (the file may have been fixed).
    """
    items = list(items)
    summary = PrepareSummary(cache.dataset, str(cache.directory), total=len(items))
    start = time.perf_counter()
    cache.directory.mkdir(parents=True, exist_ok=True)
    options = (skip_bad, verify, force, progress, flush_every_s)
    with _PrepareLock(cache.directory):
        cache.clean_temporaries()
        _prepare_loop(cache, items, decode, summary, *options)
    summary.seconds = time.perf_counter() - start
    return summary


class _PrepareLock:
    """One ``prepare`` per cache folder at a time; a lock left by a dead process is taken over."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "prepare.lock"

    def __enter__(self) -> _PrepareLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise DataError(
                        self.path, f"another `bgl data prepare` (pid {pid}) is writing this cache"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise DataError(self.path, "cannot take the prepare lock")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_loop(
    cache: PackedCache,
    items: list[PrepareItem],
    decode: Decoder,
    summary: PrepareSummary,
    skip_bad: bool,
    verify: bool,
    force: bool,
    progress: Callable[[int, int, str], None] | None,
    flush_every_s: float,
) -> None:
    from bgl.raw.read import RawReadError

    last_flush = time.perf_counter()
    try:
        for done, item in enumerate(items):
            if progress:
                progress(done, len(items), item.key)
            entry = None if force else cache.fresh(item.key, item.sources)
            if entry is not None and entry.ok:
                if not verify:
                    summary.reused += 1
                    continue
                if not cache.verify(entry):
                    summary.reused += 1
                    continue
                summary.corrupt.append(item.key)
                log.warning("%s: cached arrays fail their checksum; decoding again", item.key)
            try:
                arrays, meta = decode(item)
            except (DataError, RawReadError) as exc:
                error = exc if isinstance(exc, DataError) else DataError(exc.file, exc.reason)
                if not skip_bad:
                    raise error from None
                cache.put_bad(item.key, item.sources, error)
                summary.bad.append(error.item())
                log.warning("skipping bad item: %s", error)
            else:
                cache.put(item.key, item.sources, arrays, ratio=item.ratio, meta=meta)
                summary.decoded += 1
                summary.bytes_written += sum(int(a.nbytes) for a in arrays.values())
            if time.perf_counter() - last_flush > flush_every_s:
                cache.flush()
                last_flush = time.perf_counter()
        if progress:
            progress(len(items), len(items), "")
    finally:
        cache.flush()
