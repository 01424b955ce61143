"""SID Sony ("Learning to See in the Dark", Chen et al. 2018) in its published layout.

Layout (the SID download plus its list files)::

    <root>/Sony_{train,val,test}_list.txt      (or <root>/Sony/Sony_*_list.txt)
    <root>/Sony/short/00001_00_0.04s.ARW       short exposures (the input)
    <root>/Sony/long/00001_00_10s.ARW          long exposures (the reference)

A list line is ``./Sony/short/X.ARW ./Sony/long/Y.ARW ISO200 F8``. File names are
``<scene>_<shot>_<seconds>s.ARW``; the exposure ratio is ``min(long / short, 300)`` as in SID.
The published lists hold 1865 / 234 / 598 pairs (train / val / test; 2697 short exposures of
231 scenes). In bgl the train list feeds L_G, the val list L_F, the test list is held out.

An item: ``raw`` (4, p, p) float32, the short exposure packed R, G, B, G2, black-subtracted,
scaled by 1 / (white - black), times the ratio, clipped to [0, 1]; ``rgb`` (3, 2p, 2p) float32,
LibRaw's development of the long exposure (camera white balance, 16 bit, no auto-brightness)
over 65535, cropped at twice the packed coordinates; ``ratio``. Training crops are random, then
flipped and transposed with probability 1/2 each (SID's augmentation); evaluation crops are
centred, or the full frame with ``crop=0``.

With ``raw_space="canonical"`` the input is the camera-independent RAW of :mod:`bgl.raw.colour`,
made with each short exposure's own as-shot white balance and colour matrix (stored in the packed
cache's metadata beside the mosaic; caches prepared before that need ``bgl data prepare --force``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bgl.data.cache import Decoder, PrepareItem
from bgl.data.errors import BadItemLog, DataError
from bgl.data.real import ArraySource, seeded_subset
from bgl.data.transforms import (
    Window,
    apply_flips,
    center_window,
    random_flags,
    random_window,
)
from bgl.raw.colour import canonical_packed, check_raw_space
from bgl.raw.read import normalize_packed

__all__ = [
    "MAX_RATIO",
    "SID_SPLIT_SIZES",
    "SIDPair",
    "SIDSony",
    "decode_sid",
    "exposure_seconds",
    "find_list",
    "read_sid_list",
    "sid_prepare_items",
]

log = logging.getLogger(__name__)

#: Pairs in the published Sony lists.
SID_SPLIT_SIZES: dict[str, int] = {"train": 1865, "val": 234, "test": 598}
#: SID caps the amplification at x300.
MAX_RATIO = 300.0
SPLITS = ("train", "val", "test")

_NAME = re.compile(r"^(?P<scene>\d+)_(?P<shot>\d+)_(?P<seconds>\d+(?:\.\d+)?)s$")


@dataclass(frozen=True)
class SIDPair:
    """One list line: short and long exposure paths (relative to the root) and the ratio."""

    short: str
    long: str
    ratio: float
    iso: int | None
    aperture: float | None
    list_file: str
    line: int


def exposure_seconds(name: str) -> tuple[str, float]:
    """(scene id, exposure time in s) from a SID file name like ``00001_00_0.04s.ARW``."""
    match = _NAME.match(PurePosixPath(name).stem)
    if not match:
        raise ValueError(
            f"cannot read the exposure time from {PurePosixPath(name).name!r} "
            "(expected <scene>_<shot>_<seconds>s.ARW)"
        )
    return match["scene"], float(match["seconds"])


def find_list(root: str | Path, split: str) -> Path:
    """The Sony list file of a split, at the root or inside Sony/."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    root = Path(root)
    for candidate in (root / f"Sony_{split}_list.txt", root / "Sony" / f"Sony_{split}_list.txt"):
        if candidate.is_file():
            return candidate
    raise DataError(root / f"Sony_{split}_list.txt", "SID list file not found (nor under Sony/)")


def _relative(token: str) -> str:
    path = PurePosixPath(token)
    parts = [p for p in path.parts if p not in (".", "")]
    return str(PurePosixPath(*parts)) if parts else ""


def read_sid_list(root: str | Path, split: str, bad: BadItemLog | None = None) -> list[SIDPair]:
    """Parse a split's list; every problem names the list file and line (see module doc).

    Checked: four fields (two paths, ``ISO<n>``, ``F<x>``; the last two may be absent), file
    names that carry exposure times, same scene on both sides, a long exposure longer than the
    short one, and that both files exist.
    """
    root = Path(root)
    bad = bad if bad is not None else BadItemLog()
    path = find_list(root, split)
    pairs = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            pairs.append(_parse_line(root, fields, path, number))
        except DataError as error:
            bad.report(error)
    if not pairs and not bad.items:
        raise DataError(path, "list file holds no pairs")
    return pairs


def _parse_line(root: Path, fields: list[str], path: Path, number: int) -> SIDPair:
    def fail(reason: str) -> DataError:
        return DataError(path, reason, number)

    if len(fields) not in (2, 3, 4):
        raise fail(f"expected 'SHORT LONG [ISO<n>] [F<x>]', got {len(fields)} fields")
    short, long = _relative(fields[0]), _relative(fields[1])
    iso = aperture = None
    for extra in fields[2:]:
        try:
            if extra.upper().startswith("ISO"):
                iso = int(extra[3:])
            elif extra.upper().startswith("F"):
                aperture = float(extra[1:])
            else:
                raise ValueError
        except ValueError:
            raise fail(f"cannot read {extra!r} as ISO<n> or F<x>") from None
    try:
        short_scene, short_s = exposure_seconds(short)
        long_scene, long_s = exposure_seconds(long)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if short_scene != long_scene:
        raise fail(f"short {short} and long {long} are different scenes")
    if not 0 < short_s < long_s:
        raise fail(f"long exposure {long_s}s is not longer than the short {short_s}s")
    for rel in (short, long):
        if not (root / rel).is_file():
            raise fail(f"points to {root / rel}, which does not exist")
    ratio = min(long_s / short_s, MAX_RATIO)
    return SIDPair(short, long, ratio, iso, aperture, str(path), number)


def decode_sid(root: str | Path) -> Decoder:
    """The decoder for one SID file: packed short exposure or developed long exposure."""
    from bgl.raw.read import read_raw, read_reference_rgb

    root = Path(root)

    def decode(item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        path = root / item.sources[0]
        if item.context["kind"] == "short":
            frame = read_raw(path)
            meta = {
                "black": list(frame.black),
                "white": frame.white,
                "pattern": frame.pattern,
                "wb": list(frame.wb),  # packed order, G = 1: for raw_space canonical
                "cam2rgb": [list(row) for row in frame.cam2rgb],
            }
            return {"packed": frame.packed}, meta
        return {"rgb": read_reference_rgb(path)}, {}

    return decode


def _probe(root: Path) -> Any:
    """Unpack without developing: enough to fail on a missing, truncated or non-RAW file."""
    from bgl.raw.read import read_raw

    return lambda item: read_raw(root / item.sources[0])


def _items(pair: SIDPair) -> tuple[PrepareItem, PrepareItem]:
    return (
        PrepareItem(pair.short, [pair.short], pair.ratio, {"kind": "short"}),
        PrepareItem(pair.long, [pair.long], None, {"kind": "long"}),
    )


def sid_prepare_items(root: str | Path, bad: BadItemLog) -> list[PrepareItem]:
    """Every file the three lists name, once (a long exposure serves many short ones)."""
    seen: dict[str, PrepareItem] = {}
    for split in SPLITS:
        for pair in read_sid_list(root, split, bad):
            for item in _items(pair):
                seen.setdefault(item.key, item)
    return list(seen.values())


class SIDSony(Dataset):
    """SID Sony pairs of one split, served from the packed cache (or decoded on the fly)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop: int = 1024,
        *,
        random: bool | None = None,
        cache: str | Path | None | bool = None,
        skip_bad: bool = False,
        size: int | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        raw_space: str = "camera",
    ) -> None:
        """``crop``: RGB side (the packed input is crop / 2), 0 for full frames; ``random``:
        random crops and flips (default: all splits but test); ``cache``: see ArraySource;
        ``size``: a seeded subset of that many pairs (None or <= 0: all); ``raw_space``: "camera"
        or "canonical" (see the module doc)."""
        if crop < 0 or crop % 2:
            raise ValueError(f"crop must be a non-negative even number of RGB pixels; got {crop}")
        self.raw_space = check_raw_space(raw_space)
        self.root, self.split, self.crop = Path(root), split, int(crop)
        self.random = split != "test" if random is None else bool(random)
        self.generator = generator
        self.bad = BadItemLog(skip_bad, f"sid {split}")
        pairs = read_sid_list(self.root, split, self.bad)
        published = SID_SPLIT_SIZES[split]
        if len(pairs) + len(self.bad) != published:
            log.info("sid %s: list has %d pairs (published: %d)", split, len(pairs), published)
        self.source = ArraySource(self.root, "sid", decode_sid(self.root), cache)
        items = [item for pair in pairs for item in _items(pair)]
        unique = list({i.key: i for i in items}.values())
        dropped = self.source.check(unique, self.bad, probe=_probe(self.root))
        pairs = [p for p in pairs if p.short not in dropped and p.long not in dropped]
        self.pairs = seeded_subset(pairs, size, seed, f"sid {split}")
        if not self.pairs:
            raise DataError(find_list(self.root, split), "no usable pairs left")
        if self.raw_space == "canonical":  # fail now, not mid-training, on an older cache
            self._check_colour(self.source.load(_items(self.pairs[0])[0])[1], self.pairs[0])

    def _check_colour(self, meta: dict[str, Any], pair: SIDPair) -> None:
        if "wb" not in meta or "cam2rgb" not in meta:
            raise DataError(
                self.root / pair.short,
                "data.raw_space canonical needs the file's white balance and colour matrix, "
                f"which the packed cache at {self.source.cache_dir} predates; run `bgl data "
                f"prepare sid --root {self.root} --force`",
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[index]
        short_item, long_item = _items(pair)
        arrays, meta = self.source.load(short_item)
        packed = arrays["packed"]
        rgb_full = self.source.load(long_item)[0]["rgb"]
        h, w = packed.shape[1:]
        if rgb_full.shape[0] < 2 * h or rgb_full.shape[1] < 2 * w or rgb_full.shape[2] != 3:
            raise DataError(
                self.root / pair.long,
                f"reference of shape {tuple(rgb_full.shape)} does not cover the packed short "
                f"exposure {pair.short} of {h}x{w} (needs {2 * h}x{2 * w}x3)",
            )
        side = self.crop // 2
        if side > min(h, w):
            raise DataError(
                self.root / pair.short,
                f"crop {self.crop} (packed {side}) does not fit the packed frame of {h}x{w}",
            )
        if side == 0:
            window = Window(0, 0, h, w)
        elif self.random:
            window = random_window(h, w, side, self.generator)
        else:
            window = center_window(h, w, side)
        rows, cols = window.slices()
        raw = normalize_packed(packed[:, rows, cols], meta["black"], meta["white"], pair.ratio)
        big = window.scaled(2)
        r2, c2 = big.slices()
        rgb = np.asarray(rgb_full[r2, c2], dtype=np.float32) * np.float32(1.0 / 65535.0)
        raw_t = torch.from_numpy(raw)
        if self.raw_space == "canonical":
            self._check_colour(meta, pair)
            raw_t = canonical_packed(raw_t, meta["wb"], meta["cam2rgb"])
        rgb_t = torch.from_numpy(rgb).permute(2, 0, 1)
        if self.random:
            # a transpose would change the shape of a non-square (full) frame
            flags = random_flags(self.generator, transpose=window.height == window.width)
            raw_t, rgb_t = apply_flips(raw_t, *flags), apply_flips(rgb_t, *flags)
        return {
            "raw": raw_t.contiguous(),
            "rgb": rgb_t.contiguous(),
            "ratio": torch.tensor(pair.ratio, dtype=torch.float32),
        }
