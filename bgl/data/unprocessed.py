"""Base of the sRGB datasets without RAW files (DARK FACE, ACDC): crop/resize, then unprocess.

Why: BGL's generative block needs RAW input, but DARK FACE and ACDC ship 8-bit PNGs. Each item
is turned into a packed RAW by unprocessing (Brooks et al. 2019, :mod:`bgl.raw.unprocess`) *after*
the geometric augmentation, so the mosaic is sampled at the resolution the network sees (a
smaller camera, not a resized mosaic). The unprocessing draws from a generator seeded by
``(synth_seed, item key)``: one image always gets the same camera gains and noise law, so the
data do not change from epoch to epoch except for the crop. ``camera_seed`` (as in the synthetic
dataset) fixes one colour matrix and gains for the whole dataset, like a single real sensor;
``None`` draws a camera per image. ``raw_space`` "canonical" hands F the white-balanced RAW in
sRGB primaries made with each item's own camera (:func:`bgl.data.synthetic.in_raw_space`).

Geometry: training/validation take a random square window whose side is a random fraction of the
image's short side, resize it to ``crop`` x ``crop`` and mirror it with probability 1/2;
evaluation letterboxes the whole image into ``crop`` x ``crop`` (scaled to fit, padded at the
bottom/right with black pixels and ignore labels), or keeps the native size with ``crop=0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bgl.data.cache import PrepareItem
from bgl.data.real import ArraySource, item_seed
from bgl.data.synthetic import in_raw_space
from bgl.data.transforms import (
    Window,
    letterbox_geometry,
    random_flags,
    resize_image,
    resize_labels,
    square_window,
)
from bgl.raw.colour import check_raw_space
from bgl.raw.noise import check_noise_model
from bgl.raw.unprocess import DEFAULT_SHOT_RANGE, synthesize_low_light

__all__ = ["Geometry", "UnprocessedDataset"]

#: No extra darkening by default: these photographs are already night-time captures.
DEFAULT_UNPROCESSED_RATIO: tuple[float, float] = (1.0, 1.0)


class Geometry:
    """Where an item's output pixels come from: a source window and the output size."""

    def __init__(self, window: Window, out_h: int, out_w: int, canvas: int | None, hflip: bool):
        self.window, self.out_h, self.out_w, self.canvas, self.hflip = (
            window,
            out_h,
            out_w,
            canvas,
            hflip,
        )

    @property
    def scale_y(self) -> float:
        return self.out_h / self.window.height

    @property
    def scale_x(self) -> float:
        return self.out_w / self.window.width

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the returned image (the canvas when letterboxing)."""
        if self.canvas is not None:
            return self.canvas, self.canvas
        return self.out_h, self.out_w


class UnprocessedDataset(Dataset):
    """Shared machinery; subclasses fill ``self.items`` and implement ``targets``."""

    dataset = "unprocessed"
    window_fraction: tuple[float, float] = (0.5, 1.0)

    def __init__(
        self,
        root: str | Path,
        split: str,
        crop: int,
        *,
        random: bool | None,
        cache: str | Path | None | bool,
        ratio_range: tuple[float, float] | None,
        shot_range: tuple[float, float],
        camera_seed: int | None,
        synth_seed: int,
        generator: torch.Generator | None,
        noise_model: str = "gaussian",
        raw_space: str = "camera",
    ) -> None:
        if crop < 0 or crop % 2:
            raise ValueError(f"crop must be a non-negative even number of pixels; got {crop}")
        self.root, self.split, self.crop = Path(root), split, int(crop)
        self.random = split != "test" if random is None else bool(random)
        self.ratio_range = tuple(ratio_range or DEFAULT_UNPROCESSED_RATIO)
        self.shot_range = tuple(shot_range or DEFAULT_SHOT_RANGE)
        self.camera_seed, self.synth_seed, self.generator = camera_seed, synth_seed, generator
        self.noise_model = check_noise_model(noise_model)
        self.raw_space = check_raw_space(raw_space)
        self.source = ArraySource(self.root, self.dataset, self.decode, cache)
        self.items: list[Any] = []

    # -- subclass hooks -------------------------------------------------------------------------
    def decode(self, item: PrepareItem) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def prepare_item(self, item: Any) -> PrepareItem:
        raise NotImplementedError

    def targets(self, item: Any, arrays: dict[str, np.ndarray], geo: Geometry) -> dict:
        """Task keys (boxes, labels) for the geometry the image went through."""
        return {}

    # -- shared ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def geometry(self, height: int, width: int) -> Geometry:
        if self.crop == 0:  # native size, trimmed to even sides for the 2x2 mosaic
            return Geometry(
                Window(0, 0, height, width), height // 2 * 2, width // 2 * 2, None, False
            )
        if self.random:
            window = square_window(height, width, self.window_fraction, self.generator)
            hflip = random_flags(self.generator, transpose=False)[0]
            return Geometry(window, self.crop, self.crop, None, hflip)
        _, out_h, out_w = letterbox_geometry(height, width, self.crop)
        return Geometry(Window(0, 0, height, width), out_h, out_w, self.crop, False)

    def image(self, rgb: np.ndarray, geo: Geometry) -> torch.Tensor:
        """(3, H, W) float in [0, 1] from a (H, W, 3) uint8 source through the geometry."""
        rows, cols = geo.window.slices()
        patch = torch.from_numpy(np.array(rgb[rows, cols], copy=True)).permute(2, 0, 1)
        if self.crop == 0:
            patch = patch[:, : geo.out_h, : geo.out_w]
        out = resize_image(patch.float() / 255.0, geo.out_h, geo.out_w)
        if geo.hflip:
            out = out.flip(-1)
        if geo.canvas is not None:
            out = F.pad(out, (0, geo.canvas - geo.out_w, 0, geo.canvas - geo.out_h))
        return out.contiguous()

    def labels(self, labels: np.ndarray, geo: Geometry, fill: int = 255) -> torch.Tensor:
        """(H, W) int64 ids through the same geometry (nearest neighbour; padding = fill)."""
        rows, cols = geo.window.slices()
        patch = torch.from_numpy(np.array(labels[rows, cols], dtype=np.int64))
        if self.crop == 0:
            patch = patch[: geo.out_h, : geo.out_w]
        out = resize_labels(patch, geo.out_h, geo.out_w)
        if geo.hflip:
            out = out.flip(-1)
        if geo.canvas is not None:
            out = F.pad(out, (0, geo.canvas - geo.out_w, 0, geo.canvas - geo.out_h), value=fill)
        return out.contiguous()

    def synthesize(self, rgb: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
        """Unprocess one (3, H, W) image into packed RAW with its per-item seed."""
        generator = torch.Generator().manual_seed(item_seed(self.synth_seed, key))
        pair = synthesize_low_light(
            rgb[None],
            generator,
            ratio_range=self.ratio_range,
            shot_range=self.shot_range,
            camera_seed=self.camera_seed,
            noise_model=self.noise_model,
        )
        pair = in_raw_space(pair, self.raw_space)
        return {"raw": pair["raw"][0].contiguous(), "ratio": pair["ratio"][0]}

    def use_raw_space(self, raw_space: str) -> UnprocessedDataset:
        """Set F's input space after construction ("camera" or "canonical"); returns self.

        Why a method: the subclasses' constructors name their arguments, and the registry
        (:mod:`bgl.data.splits`) sets this one for all of them in one place.
        """
        self.raw_space = check_raw_space(raw_space)
        return self

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        prep = self.prepare_item(item)
        arrays, _ = self.source.load(prep)
        rgb_src = arrays["rgb"]
        geo = self.geometry(rgb_src.shape[0], rgb_src.shape[1])
        rgb = self.image(rgb_src, geo)
        out = {**self.synthesize(rgb, prep.key), "rgb": rgb}
        out.update(self.targets(item, arrays, geo))
        return out
