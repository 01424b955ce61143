"""A tiny procedural night-street segmentation set: labelled scenes turned into low-light RAW.

Why: segmentation tests and quick starts need a task whose mIoU a few training steps can move,
with no download. Each scene is a street in perspective: sky, buildings and tree crowns on the
horizon, a road narrowing to a vanishing point between sidewalks, poles with traffic signs,
cars on the road, people on the sidewalk, and sometimes the ego vehicle's hood at the bottom
(label 255, ignored, as Cityscapes ignores the ego vehicle). Regions are painted in their
Cityscapes palette colour, jittered per image and textured with smooth noise, so colour alone
is a strong but imperfect cue; the low-light RAW (unprocessing, darkening, shot/read noise,
amplification: `bgl.raw.unprocess.synthesize_low_light`) makes it harder.

Labels are Cityscapes train ids like ACDC's (`bgl.data.acdc`): 9 of the 19 classes occur
(`STREET_CLASSES`), the rest never do, so their IoU is undefined and left out of the mIoU.
Sample ``i`` depends only on ``(seed, i)``, as in `bgl.data.synthetic`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from bgl.data.acdc import IGNORE_INDEX
from bgl.data.synthetic import (
    check_synthetic_args,
    composite,
    rand_uniform,
    smooth_noise,
    synthesize_chunks,
)
from bgl.raw.bayer import channel_offsets
from bgl.raw.unprocess import DEFAULT_RATIO_RANGE, DEFAULT_SHOT_RANGE

__all__ = ["STREET_CLASSES", "SyntheticStreet", "render_streets"]

ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 10, 11, 13
#: The Cityscapes train ids that occur in the scenes.
STREET_CLASSES: tuple[int, ...] = (
    ROAD,
    SIDEWALK,
    BUILDING,
    POLE,
    SIGN,
    VEGETATION,
    SKY,
    PERSON,
    CAR,
)
#: Cityscapes palette colours of those classes (the ego hood gets a dark grey).
_PALETTE: dict[int, tuple[int, int, int]] = {
    ROAD: (128, 64, 128),
    SIDEWALK: (244, 35, 232),
    BUILDING: (70, 70, 70),
    POLE: (153, 153, 153),
    SIGN: (220, 220, 0),
    VEGETATION: (107, 142, 35),
    SKY: (70, 130, 180),
    PERSON: (220, 20, 60),
    CAR: (0, 0, 142),
    IGNORE_INDEX: (30, 30, 30),
}
_JITTER = 0.12  # per-image colour offset, +-
_TEXTURE = 0.08  # amplitude of the smooth per-region texture
_BUILDINGS, _TREES, _POLES, _CARS, _PEOPLE = 4, 2, 2, 2, 1


class _Canvas:
    """An image and its label map, painted back to front (antialiased colour, hard labels)."""

    def __init__(self, n: int, size: int, generator: torch.Generator | None) -> None:
        self.n, self.size, self.generator = n, size, generator
        self.image = torch.zeros(n, 3, size, size)
        self.labels = torch.full((n, size, size), IGNORE_INDEX, dtype=torch.int64)

    def paint(self, label: int, inside: torch.Tensor) -> None:
        """Fill where the signed distance `inside` (image units, > 0 inside) is positive."""
        g = self.generator
        coverage = (inside * self.size + 0.5).clamp(0.0, 1.0).expand(self.n, 1, -1, -1)
        base = torch.tensor(_PALETTE[label], dtype=torch.float32).view(1, 3, 1, 1) / 255.0
        colour = base + _JITTER * (2 * rand_uniform(g, self.n, 3, 1, 1) - 1)
        colour = colour + _TEXTURE * smooth_noise(self.n, self.size, g)
        composite(self.image, colour, coverage)
        self.labels = torch.where(coverage[:, 0] >= 0.5, label, self.labels)


def render_streets(
    n: int, size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` street scenes: RGB (n, 3, size, size) in [0, 1] and labels (n, size, size) int64."""
    if n < 0 or size < 1:
        raise ValueError(f"render_streets needs n >= 0 and size >= 1; got n={n}, size={size}")
    g = generator
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * rand_uniform(g, n, 1, 1, 1)

    Num = torch.Tensor | float

    def box(cx: Num, cy: Num, hx: Num, hy: Num) -> torch.Tensor:
        """Signed distance to an axis-aligned box (centre, half sizes), > 0 inside."""
        return torch.minimum(hx - (x - cx).abs(), hy - (y - cy).abs())

    def ellipse(cx: Num, cy: Num, rx: Num, ry: Num) -> torch.Tensor:
        """Approximate signed distance to an ellipse, > 0 inside."""
        radius = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return (1.0 - radius) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))

    canvas = _Canvas(n, size, g)
    horizon, vanish = uniform(0.35, 0.55), uniform(0.35, 0.65)
    road_half = uniform(0.35, 0.6)  # half width of the road at the bottom edge

    def depth(at: torch.Tensor) -> torch.Tensor:  # 0 at the horizon, 1 at the bottom
        return ((at - horizon) / (1.0 - horizon)).clamp(0.0, 1.0)

    canvas.paint(SKY, torch.ones(1, 1, size, size))
    for _ in range(_BUILDINGS):
        top = horizon - uniform(0.08, 0.35)
        half_height = (horizon - top) / 2 + 0.02
        canvas.paint(
            BUILDING, box(uniform(0.0, 1.0), (top + horizon) / 2, uniform(0.06, 0.18), half_height)
        )
    for _ in range(_TREES):
        crown = ellipse(
            uniform(0.0, 1.0), horizon - uniform(0.0, 0.1), uniform(0.05, 0.15), uniform(0.05, 0.12)
        )
        canvas.paint(VEGETATION, crown)
    canvas.paint(SIDEWALK, y - horizon)
    canvas.paint(ROAD, torch.minimum(y - horizon, road_half * depth(y) - (x - vanish).abs()))
    for i in range(_POLES):
        px, top = uniform(0.0, 1.0), horizon - uniform(0.1, 0.3)
        bottom = horizon + uniform(0.05, 0.2)
        canvas.paint(POLE, box(px, (top + bottom) / 2, uniform(0.008, 0.015), (bottom - top) / 2))
        if i == 0:
            side = uniform(0.03, 0.05)
            canvas.paint(SIGN, box(px, top, side, side))
    for _ in range(_CARS):
        cy = horizon + uniform(0.15, 0.8) * (1.0 - horizon)
        scale = 0.3 + depth(cy)
        cx = vanish + (2 * uniform(0.0, 1.0) - 1) * 0.7 * road_half * depth(cy)
        canvas.paint(CAR, box(cx, cy, 0.12 * scale, 0.06 * scale))
    for _ in range(_PEOPLE):
        feet = horizon + uniform(0.05, 0.4) * (1.0 - horizon)
        height = 0.1 + 0.15 * depth(feet)
        canvas.paint(PERSON, ellipse(uniform(0.0, 1.0), feet - height / 2, height / 5, height / 2))
    hood = (
        rand_uniform(g, n, 1, 1, 1) < 0.5
    ).float()  # half the scenes show the ego vehicle's hood
    canvas.paint(IGNORE_INDEX, ellipse(0.5, 1.1, 0.6, 0.18) - (1.0 - hood))
    return canvas.image.clamp(0.0, 1.0), canvas.labels


class SyntheticStreet(Dataset):
    """Procedural night streets: ``raw``, ``rgb``, ``ratio`` and ``labels``, made at construction.

    ``labels`` is (size, size) int64 with Cityscapes train ids and 255 where ignored, as in
    `bgl.data.acdc.ACDCNight`. Other arguments as `bgl.data.synthetic.SyntheticLowLight`.
    """

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        camera_seed: int | None = 0,
        ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
        shot_range: tuple[float, float] = DEFAULT_SHOT_RANGE,
        pattern: str = "RGGB",
        raw_space: str = "camera",
    ) -> None:
        check_synthetic_args(n, size, seed)
        channel_offsets(pattern)  # validates the pattern name
        self.n, self.size, self.seed, self.camera_seed = n, size, seed, camera_seed

        def render(count: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
            scenes, labels = render_streets(count, size, generator)
            return scenes, {"labels": labels}

        self._data = synthesize_chunks(
            n,
            seed,
            render,
            ratio_range=ratio_range,
            shot_range=shot_range,
            pattern=pattern,
            camera_seed=camera_seed,
            raw_space=raw_space,
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return {key: value[index] for key, value in self._data.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole split as one batch (shared storage: treat as read-only)."""
        return dict(self._data)
