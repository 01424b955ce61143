"""ACDC night (Sakaridis et al. 2021): night-time semantic segmentation, RAW by unprocessing.

Layout (the official release, night condition)::

    <root>/rgb_anon/night/<split>/<sequence>/<name>_rgb_anon.png
    <root>/gt/night/<split>/<sequence>/<name>_gt_labelTrainIds.png

Labels are Cityscapes train ids: 19 classes 0-18 and 255 for "ignore"; any other value is an
error that names the file and the offending ids. The official test labels are withheld, so bgl
evaluates on the official val set (106 images: the ``test`` split, as papers report) and splits
the official 400 training images with a fixed seed into 350 train (L_G) and 50 val (L_F).

An item: ``raw`` (4, s/2, s/2) synthesised by unprocessing (see :mod:`bgl.data.unprocessed`),
``rgb`` (3, s, s), ``ratio``, and ``labels`` (s, s) int64 with 255 where a pixel is ignored,
including letterbox padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgl.data.cache import Decoder, PrepareItem
from bgl.data.errors import BadItemLog, DataError
from bgl.data.png import read_png
from bgl.data.real import seeded_subset
from bgl.data.unprocessed import Geometry, UnprocessedDataset
from bgl.raw.unprocess import DEFAULT_SHOT_RANGE

__all__ = [
    "decode_acdc",
    "ACDC_SPLIT_SIZES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "ACDCNight",
    "NightFrame",
    "acdc_index",
    "acdc_prepare_items",
    "check_label_ids",
]

log = logging.getLogger(__name__)

NUM_CLASSES = 19
IGNORE_INDEX = 255
#: bgl's splits: official train 400 -> 350 train + 50 val; official val 106 -> test.
ACDC_SPLIT_SIZES: dict[str, int] = {"train": 350, "val": 50, "test": 106}
SPLIT_SEED = 2021
SPLITS = ("train", "val", "test")
_RGB_SUFFIX = "_rgb_anon.png"
_GT_SUFFIX = "_gt_labelTrainIds.png"


@dataclass(frozen=True)
class NightFrame:
    key: str  # RGB path relative to the root
    label: str  # label path relative to the root


def check_label_ids(labels: np.ndarray, path: str | Path) -> np.ndarray:
    """Return ``labels`` as uint8 if every id is in 0..18 or 255, else raise naming the ids."""
    values, counts = np.unique(labels, return_counts=True)
    wrong = ((values > NUM_CLASSES - 1) & (values != IGNORE_INDEX)) | (values < 0)
    if wrong.any():
        shown = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(values[wrong], counts[wrong]))
        raise DataError(path, f"label ids outside 0-{NUM_CLASSES - 1} and {IGNORE_INDEX}: {shown}")
    return labels.astype(np.uint8)


def acdc_index(root: str | Path, official: str, bad: BadItemLog) -> list[NightFrame]:
    """RGB/label pairs of one official split ('train' or 'val'), sorted by path."""
    root = Path(root)
    rgb_dir = root / "rgb_anon" / "night" / official
    gt_dir = root / "gt" / "night" / official
    for folder in (rgb_dir, gt_dir):
        if not folder.is_dir():
            raise DataError(folder, "ACDC folder not found (expected rgb_anon/night and gt/night)")
    images = {
        p.relative_to(rgb_dir).as_posix()[: -len(_RGB_SUFFIX)]: p
        for p in rgb_dir.rglob(f"*{_RGB_SUFFIX}")
    }
    labels = {
        p.relative_to(gt_dir).as_posix()[: -len(_GT_SUFFIX)]: p
        for p in gt_dir.rglob(f"*{_GT_SUFFIX}")
    }
    for stem in sorted(set(labels) - set(images)):
        bad.report(DataError(labels[stem], "label PNG has no RGB image"))
    frames = []
    for stem in sorted(images):
        if stem not in labels:
            bad.report(DataError(images[stem], f"RGB image has no label PNG ({stem}{_GT_SUFFIX})"))
            continue
        frames.append(
            NightFrame(
                images[stem].relative_to(root).as_posix(), labels[stem].relative_to(root).as_posix()
            )
        )
    if not frames and not bad.items:
        raise DataError(rgb_dir, "no *_rgb_anon.png images found")
    return frames


def decode_acdc(root: str | Path) -> Decoder:
    """The decoder of one item for the cache and for on-the-fly loading."""
    root = Path(root)

    def decode(item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        rgb = read_png(root / item.sources[0])
        label_path = root / item.sources[1]
        labels = check_label_ids(read_png(label_path, mode="label"), label_path)
        if labels.shape != rgb.shape[:2]:
            raise DataError(label_path, f"label map is {labels.shape}, its image {rgb.shape[:2]}")
        return {"rgb": rgb, "labels": labels}, {}

    return decode


def acdc_prepare_items(root: str | Path, bad: BadItemLog) -> list[PrepareItem]:
    return [
        PrepareItem(f.key, [f.key, f.label])
        for official in ("train", "val")
        for f in acdc_index(root, official, bad)
    ]


def _partition(frames: list[NightFrame], split: str) -> list[NightFrame]:
    if split == "test":
        return frames
    total = ACDC_SPLIT_SIZES["train"] + ACDC_SPLIT_SIZES["val"]
    n_val = max(1, round(len(frames) * ACDC_SPLIT_SIZES["val"] / total)) if len(frames) > 1 else 0
    order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val = set(order[:n_val].tolist())
    return [f for i, f in enumerate(frames) if (i in val) == (split == "val")]


class ACDCNight(UnprocessedDataset):
    """ACDC night frames of one split: ``raw``, ``rgb``, ``ratio``, ``labels``."""

    dataset = "acdc"
    #: Random windows span 50-100 % of the short side before resizing to the crop.
    window_fraction = (0.5, 1.0)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop: int = 768,
        *,
        random: bool | None = None,
        cache: str | Path | None | bool = None,
        skip_bad: bool = False,
        size: int | None = None,
        seed: int = 0,
        ratio_range: tuple[float, float] | None = None,
        shot_range: tuple[float, float] = DEFAULT_SHOT_RANGE,
        camera_seed: int | None = 0,
        synth_seed: int = 0,
        generator: torch.Generator | None = None,
        noise_model: str = "gaussian",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        super().__init__(
            root,
            split,
            crop,
            random=random,
            cache=cache,
            ratio_range=ratio_range,
            shot_range=shot_range,
            camera_seed=camera_seed,
            synth_seed=synth_seed,
            generator=generator,
            noise_model=noise_model,
        )
        self.bad = BadItemLog(skip_bad, f"acdc {split}")
        official = "val" if split == "test" else "train"
        # the partition is drawn over every pair found, before bad ones are left out, so a
        # skipped file never moves another image between train and val
        frames = _partition(acdc_index(self.root, official, self.bad), split)
        dropped = self.source.check(
            [self.prepare_item(f) for f in frames], self.bad, probe=self.decode
        )
        frames = [f for f in frames if f.key not in dropped]
        self.items = seeded_subset(frames, size, seed, f"acdc {split}")
        if not self.items:
            raise DataError(self.root / "rgb_anon" / "night", f"no usable images in split {split}")

    def decode(self, item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return decode_acdc(self.root)(item)

    def prepare_item(self, item: NightFrame) -> PrepareItem:
        return PrepareItem(item.key, [item.key, item.label])

    def targets(self, item: NightFrame, arrays: dict[str, np.ndarray], geo: Geometry) -> dict:
        return {"labels": self.labels(arrays["labels"], geo, fill=IGNORE_INDEX)}
