"""A tiny procedural "faces in the dark" detection set: bright ellipses on darkened scenes.

Why: detection tests and quick runs need boxes whose ground truth is exact and a task a small
DSFD learns in a few dozen steps, with no download. Each image is a :func:`render_scenes` scene
dimmed to 10-35 % of its brightness (it keeps its clutter, including its own faint ellipses), with
1-4 bright, slightly tall ellipses ("faces"), one per quadrant at most so they never overlap; the
box of a face is its ellipse's bounding box. The image is then turned into low-light RAW with
:func:`synthesize_low_light`, like :class:`bgl.data.synthetic.SyntheticLowLight`.

Items: ``raw`` (4, size/2, size/2), ``rgb`` (3, size, size), ``ratio``, ``boxes``
(max_boxes, 4) float32 x1, y1, x2, y2 in RGB pixels padded with -1, ``num_boxes`` int64 -- the
DARK FACE batch format (:mod:`bgl.data.darkface`). Sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from bgl.data.synthetic import check_synthetic_args, render_scenes, synthesize_chunks
from bgl.raw.unprocess import DEFAULT_RATIO_RANGE, DEFAULT_SHOT_RANGE

__all__ = ["GRID", "SyntheticFaces", "render_faces"]

#: Faces are placed in a GRID x GRID layout of cells, at most one per cell.
GRID = 2
#: Range of a scene's brightness factor before faces are painted on it.
DIM_RANGE = (0.1, 0.35)
#: Face width as a fraction of a cell's side, and height / width.
WIDTH_RANGE = (0.3, 0.8)
ASPECT_RANGE = (1.0, 1.3)


def render_faces(
    n: int, size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (n, 3, size, size) in [0, 1], boxes (n, GRID**2, 4), present (n, GRID**2) bool).

    Boxes of absent faces are filled but meaningless; each image has at least one face.
    """
    cells = GRID * GRID
    image = render_scenes(n, size, generator)
    dim = DIM_RANGE[0] + (DIM_RANGE[1] - DIM_RANGE[0]) * torch.rand(n, 1, 1, 1, generator=generator)
    image = image * dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    present = rand(n, cells) < 0.5
    forced = torch.randint(cells, (n,), generator=generator)
    present[torch.arange(n), forced] |= ~present.any(dim=1)
    cell = size / GRID
    width = cell * (WIDTH_RANGE[0] + (WIDTH_RANGE[1] - WIDTH_RANGE[0]) * rand(n, cells))
    aspect = ASPECT_RANGE[0] + (ASPECT_RANGE[1] - ASPECT_RANGE[0]) * rand(n, cells)
    height = torch.minimum(width * aspect, torch.full_like(width, 0.9 * cell))
    index = torch.arange(cells)
    x0 = (index % GRID).float() * cell + rand(n, cells) * (cell - width)
    y0 = (index // GRID).float() * cell + rand(n, cells) * (cell - height)
    boxes = torch.stack([x0, y0, x0 + width, y0 + height], dim=-1)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords.view(1, size, 1)
    x = coords.view(1, 1, size)
    for k in range(cells):
        cx = (x0[:, k] + width[:, k] / 2).view(n, 1, 1)
        cy = (y0[:, k] + height[:, k] / 2).view(n, 1, 1)
        rx, ry = (width[:, k] / 2).view(n, 1, 1), (height[:, k] / 2).view(n, 1, 1)
        radius = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        mask = ((1.0 - radius) * torch.minimum(rx, ry) + 0.5).clamp(0.0, 1.0)  # ~1 px antialias
        mask = (mask * present[:, k].view(n, 1, 1)).unsqueeze(1)
        skin = 0.7 + 0.3 * rand(n, 3, 1, 1)
        image = image.lerp(skin.expand_as(image), mask.expand_as(image))
    return image.clamp(0.0, 1.0), boxes, present


class SyntheticFaces(Dataset):
    """Procedural low-light face detection pairs, made once at construction and kept in memory.

    ``camera_seed``, ``ratio_range`` and ``raw_space`` as in
    :class:`bgl.data.synthetic.SyntheticLowLight`;
    ``max_boxes`` (>= 4) is the padded length of ``boxes``.
    """

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        camera_seed: int | None = 0,
        ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
        max_boxes: int = 8,
        raw_space: str = "camera",
    ) -> None:
        check_synthetic_args(n, size, seed)
        if max_boxes < GRID * GRID:
            raise ValueError(f"max_boxes must be at least {GRID * GRID}; got {max_boxes}")
        self.n, self.size, self.seed, self.max_boxes = n, size, seed, max_boxes
        self.camera_seed, self.ratio_range = camera_seed, ratio_range

        def render(count: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
            images, boxes, present = render_faces(count, size, generator)
            padded = torch.full((count, max_boxes, 4), -1.0)
            counts = present.sum(dim=1)
            for i in range(count):  # present faces first, in render order
                padded[i, : int(counts[i])] = boxes[i][present[i]]
            return images, {"boxes": padded, "num_boxes": counts.to(torch.int64)}

        data = synthesize_chunks(
            n,
            seed,
            render,
            ratio_range=ratio_range,
            shot_range=DEFAULT_SHOT_RANGE,
            camera_seed=camera_seed,
            raw_space=raw_space,
        )
        self._raw, self._rgb, self._ratio = data["raw"], data["rgb"], data["ratio"]
        self._boxes, self._num_boxes = data["boxes"], data["num_boxes"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return {
            "raw": self._raw[index],
            "rgb": self._rgb[index],
            "ratio": self._ratio[index],
            "boxes": self._boxes[index],
            "num_boxes": self._num_boxes[index],
        }
