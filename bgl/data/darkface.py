"""DARK FACE (UG2+ 2019 track, Yang et al.): night-time face detection, RAW by unprocessing.

Layout (the labelled training release)::

    <root>/image/<id>.png     8-bit sRGB night photographs (1080 x 720)
    <root>/label/<id>.txt     first line: the number of faces N; then N lines "x1 y1 x2 y2"

Only these 6000 images carry public labels, so bgl draws its three splits from them with a fixed
seed (independent of the trial seed, so the held-out set never moves): 4500 train (L_G), 500 val
(L_F), 1000 test -- the same proportions for smaller copies. RAW input is synthesised per item
(see :mod:`bgl.data.unprocessed`).

Boxes in a batch: faces per image vary, and torch's ``default_collate`` needs equal shapes, so an
item carries ``boxes`` as a fixed (max_boxes, 4) float32 tensor in output-pixel coordinates
(x1, y1, x2, y2), rows beyond ``num_boxes`` (an int64 scalar) filled with -1. Use
``boxes[i, :num_boxes[i]]``. An image with more faces than ``max_boxes`` after augmentation is an
error that names the label file (raise ``data.max_boxes``), never a silent truncation.

Label checks (each error names the file and line): a count line that is not an integer, a count
different from the number of box lines, a line without four numbers, a negative coordinate, an
empty box (x2 <= x1 or y2 <= y1), a box that starts outside the image. A box that only overhangs
the image border is clipped to it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgl.data.cache import Decoder, PrepareItem
from bgl.data.errors import BadItemLog, DataError
from bgl.data.png import png_size, read_png
from bgl.data.real import seeded_subset, split_counts
from bgl.data.transforms import boxes_in_window, flip_boxes
from bgl.data.unprocessed import Geometry, UnprocessedDataset
from bgl.raw.unprocess import DEFAULT_SHOT_RANGE

__all__ = [
    "decode_darkface",
    "DARKFACE_SPLIT_SIZES",
    "DEFAULT_MAX_BOXES",
    "DarkFace",
    "FaceImage",
    "darkface_index",
    "darkface_prepare_items",
    "parse_label_file",
]

log = logging.getLogger(__name__)

#: bgl's partition of the 6000 labelled images.
DARKFACE_SPLIT_SIZES: dict[str, int] = {"train": 4500, "val": 500, "test": 1000}
#: The permutation behind the partition; fixed so the test set never depends on a trial seed.
SPLIT_SEED = 2019
DEFAULT_MAX_BOXES = 256
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FaceImage:
    key: str  # image path relative to the root
    label: str  # label path relative to the root
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in source pixels


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def parse_label_file(path: str | Path, height: int, width: int) -> np.ndarray:
    """(N, 4) float32 boxes of one DARK FACE label file; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read label file ({exc})") from None
    numbered = [(i, t.strip()) for i, t in enumerate(lines, start=1) if t.strip()]
    if not numbered:
        raise DataError(path, "empty label file (expected a face count on the first line)", 1)
    first, text = numbered[0]
    try:
        count = int(text)
    except ValueError:
        raise DataError(
            path, f"first line must be the number of faces; got {text!r}", first
        ) from None
    if count < 0:
        raise DataError(path, f"negative face count {count}", first)
    rows = numbered[1:]
    if len(rows) != count:
        raise DataError(path, f"declares {count} faces but lists {len(rows)} boxes", first)
    boxes = np.zeros((count, 4), dtype=np.float32)
    for k, (number, text) in enumerate(rows):
        parts = text.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not all(np.isfinite(values)):
            raise DataError(path, f"expected four numbers 'x1 y1 x2 y2', got {text!r}", number)
        x1, y1, x2, y2 = values
        if min(values) < 0:
            raise DataError(path, f"negative coordinate in box {text!r}", number)
        if x2 <= x1 or y2 <= y1:
            raise DataError(path, f"empty box {text!r} (needs x2 > x1 and y2 > y1)", number)
        if x1 >= width or y1 >= height:
            raise DataError(path, f"box {text!r} lies outside the {width}x{height} image", number)
        boxes[k] = (x1, y1, min(x2, width), min(y2, height))
    return boxes


def darkface_index(root: str | Path, bad: BadItemLog) -> list[FaceImage | None]:
    """All labelled images, sorted by id; a bad one is reported and kept as None (its slot
    stays so the split partition does not move when a file is skipped)."""
    root = Path(root)
    image_dir, label_dir = root / "image", root / "label"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(folder, "DARK FACE folder not found (expected image/ and label/)")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() == ".png"}
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".txt"}
    for stem in sorted(set(labels) - set(images), key=_natural):
        bad.report(DataError(labels[stem], f"label file has no image image/{stem}.png"))
    out: list[FaceImage | None] = []
    for stem in sorted(images, key=_natural):
        image = images[stem]
        try:
            if stem not in labels:
                raise DataError(image, f"image has no label file label/{stem}.txt")
            height, width = png_size(image)
            boxes = parse_label_file(labels[stem], height, width)
        except DataError as error:
            bad.report(error)
            out.append(None)
            continue
        out.append(
            FaceImage(
                str(image.relative_to(root).as_posix()),
                str(labels[stem].relative_to(root).as_posix()),
                boxes,
            )
        )
    if not out:
        raise DataError(image_dir, "no PNG images found")
    return out


def _partition(n: int) -> dict[str, list[int]]:
    total = sum(DARKFACE_SPLIT_SIZES.values())
    counts = split_counts(n, {k: v / total for k, v in DARKFACE_SPLIT_SIZES.items()})
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    test = order[: counts["test"]]
    val = order[counts["test"] : counts["test"] + counts["val"]]
    train = order[counts["test"] + counts["val"] :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def decode_darkface(root: str | Path) -> Decoder:
    """The decoder of one item for the cache and for on-the-fly loading."""
    root = Path(root)

    def decode(item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"rgb": read_png(root / item.sources[0])}, {}

    return decode


def darkface_prepare_items(root: str | Path, bad: BadItemLog) -> list[PrepareItem]:
    return [
        PrepareItem(f.key, [f.key], None, {"boxes": f.boxes.tolist()})
        for f in darkface_index(root, bad)
        if f is not None
    ]


class DarkFace(UnprocessedDataset):
    """DARK FACE faces of one split: ``raw``, ``rgb``, ``ratio``, ``boxes``, ``num_boxes``."""

    dataset = "darkface"
    #: Random windows span 30-100 % of the short side (faces are small: zooming in helps).
    window_fraction = (0.3, 1.0)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop: int = 640,
        *,
        random: bool | None = None,
        cache: str | Path | None | bool = None,
        skip_bad: bool = False,
        size: int | None = None,
        seed: int = 0,
        max_boxes: int = DEFAULT_MAX_BOXES,
        ratio_range: tuple[float, float] | None = None,
        shot_range: tuple[float, float] = DEFAULT_SHOT_RANGE,
        camera_seed: int | None = 0,
        synth_seed: int = 0,
        generator: torch.Generator | None = None,
        noise_model: str = "gaussian",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be at least 1; got {max_boxes}")
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
        self.max_boxes = max_boxes
        self.bad = BadItemLog(skip_bad, f"darkface {split}")
        index = darkface_index(self.root, self.bad)
        chosen = [index[i] for i in _partition(len(index))[split]]
        faces = [f for f in chosen if f is not None]
        dropped = self.source.check(
            [self.prepare_item(f) for f in faces], self.bad, probe=self.decode
        )
        faces = [f for f in faces if f.key not in dropped]
        self.items = seeded_subset(faces, size, seed, f"darkface {split}")
        if not self.items:
            raise DataError(self.root / "image", f"no usable images in split {split}")

    def decode(self, item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return decode_darkface(self.root)(item)

    def prepare_item(self, item: FaceImage) -> PrepareItem:
        return PrepareItem(item.key, [item.key])

    def targets(self, item: FaceImage, arrays: dict[str, np.ndarray], geo: Geometry) -> dict:
        boxes = boxes_in_window(item.boxes, geo.window)
        boxes[:, [0, 2]] *= geo.scale_x
        boxes[:, [1, 3]] *= geo.scale_y
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, geo.out_w)  # native size trims odd sides
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, geo.out_h)
        if geo.hflip:
            boxes = flip_boxes(boxes, geo.out_w)
        if len(boxes) > self.max_boxes:
            raise DataError(
                self.root / item.label,
                f"{len(boxes)} faces exceed max_boxes={self.max_boxes}; raise data.max_boxes",
            )
        padded = torch.full((self.max_boxes, 4), -1.0, dtype=torch.float32)
        padded[: len(boxes)] = torch.from_numpy(boxes)
        return {"boxes": padded, "num_boxes": torch.tensor(len(boxes), dtype=torch.int64)}
