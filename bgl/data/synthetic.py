"""The embedded default dataset: procedural scenes turned into SID-style low-light RAW pairs.

Why: quick starts, tests and CI need a low-light task that needs no download and is the same on
every machine. Scenes are rendered in torch (gradients, textured rectangles and ellipses, thin
text-like strokes), optionally lit unevenly (:func:`shade_scenes`), unprocessed to RAW with
:mod:`bgl.raw.unprocess`, darkened, made noisy and amplified back by the exposure ratio.

Sample ``i`` of ``SyntheticLowLight(n, size, seed)`` depends only on ``(seed, i)`` and the
rendering/noise settings, not on ``n``: samples are made in fixed chunks, each with its own
generator seeded from ``(seed, chunk)``. Different seeds give independent (hence disjoint) data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bgl.config import SCENE_LIGHTINGS
from bgl.raw.bayer import channel_offsets
from bgl.raw.colour import canonical_packed, check_raw_space
from bgl.raw.noise import check_noise_model
from bgl.raw.unprocess import DEFAULT_RATIO_RANGE, DEFAULT_SHOT_RANGE, synthesize_low_light

__all__ = ["CHUNK", "SyntheticLowLight", "in_raw_space", "render_scenes", "shade_scenes"]

#: Samples are rendered in chunks of this many images, each chunk from its own generator.
CHUNK = 32

_SHAPES = 6  # rectangles / ellipses per scene
_GLYPHS = 2  # clusters of short strokes ("text") per scene
_STROKES = 4  # strokes per glyph cluster
_LINES = 3  # long thin line segments per scene


def rand_uniform(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator)


def smooth_noise(n: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n,1,size,size) low-frequency noise in about [-1,1]: a coarse grid, bilinearly upsampled."""
    cells = int(rand_uniform(generator, 1).item() * 6) + 3  # same coarseness for the whole batch
    coarse = torch.randn((n, 1, cells, cells), generator=generator)
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.clamp(-2.0, 2.0) / 2.0


def _segment_distance(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Distance from pixel centres to segments a-b; a, b: (n,m,2) -> (n,m,S,S)."""
    ax, ay = a[..., 0, None, None], a[..., 1, None, None]
    dx, dy = (b - a)[..., 0, None, None], (b - a)[..., 1, None, None]
    length2 = (dx * dx + dy * dy).clamp_min(1e-12)
    t = (((x - ax) * dx + (y - ay) * dy) / length2).clamp(0.0, 1.0)
    return torch.sqrt((x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2)


def composite(image: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paint ``colour`` over ``image`` with coverage ``mask`` (in place, one fused op)."""
    return image.lerp_(colour.expand_as(image), mask.expand_as(image))


def render_scenes(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Render ``n`` random RGB scenes (n,3,size,size) in [0,1], float32, vectorised over ``n``.

    Each scene: a two-colour gradient background with faint smooth noise, rotated rectangles and
    ellipses filled with flat, sinusoidal or noise textures between two colours, clusters of thin
    dark or bright strokes (text-like), and a few long thin lines. Edges are antialiased over about
    a pixel so the scenes look like photographs of objects rather than aliased drawings.
    """
    if n < 0 or size < 1:
        raise ValueError(f"render_scenes needs n >= 0 and size >= 1; got n={n}, size={size}")
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y = coords.view(1, 1, size, 1)
    x = coords.view(1, 1, 1, size)

    # Background: linear gradient between two colours along a random direction, plus faint noise.
    c0, c1 = rand_uniform(generator, n, 3, 1, 1), rand_uniform(generator, n, 3, 1, 1)
    theta = rand_uniform(generator, n, 1, 1, 1) * 2 * math.pi
    t = ((x - 0.5) * torch.cos(theta) + (y - 0.5) * torch.sin(theta)) / math.sqrt(2) + 0.5
    image = c0 + (c1 - c0) * t
    image = image + 0.1 * rand_uniform(generator, n, 1, 1, 1) * smooth_noise(n, size, generator)

    # Filled shapes, composited back to front.
    for _ in range(_SHAPES):
        cx, cy = rand_uniform(generator, n, 1, 1, 1), rand_uniform(generator, n, 1, 1, 1)
        hx = 0.04 + 0.26 * rand_uniform(generator, n, 1, 1, 1)
        hy = 0.04 + 0.26 * rand_uniform(generator, n, 1, 1, 1)
        rot = rand_uniform(generator, n, 1, 1, 1) * math.pi
        u = (x - cx) * torch.cos(rot) + (y - cy) * torch.sin(rot)
        v = -(x - cx) * torch.sin(rot) + (y - cy) * torch.cos(rot)
        rect_inside = torch.minimum(hx - u.abs(), hy - v.abs())
        radius = torch.sqrt((u / hx) ** 2 + (v / hy) ** 2)
        ellipse_inside = (1.0 - radius) * torch.minimum(hx, hy)
        is_rect = rand_uniform(generator, n, 1, 1, 1) < 0.5
        inside = torch.where(is_rect, rect_inside, ellipse_inside)
        mask = (inside * size + 0.5).clamp(0.0, 1.0)

        # Texture: a weight in [0,1] between two colours (flat, stripes or blotches).
        ca, cb = rand_uniform(generator, n, 3, 1, 1), rand_uniform(generator, n, 3, 1, 1)
        freq = 3.0 + 13.0 * rand_uniform(generator, n, 1, 1, 1)
        phi = rand_uniform(generator, n, 1, 1, 1) * 2 * math.pi
        psi = rand_uniform(generator, n, 1, 1, 1) * 2 * math.pi
        stripes = 0.5 + 0.5 * torch.sin(
            2 * math.pi * freq * (x * torch.cos(phi) + y * torch.sin(phi)) + psi
        )
        blotches = torch.sigmoid(3.0 * smooth_noise(n, size, generator))
        kind = (rand_uniform(generator, n, 1, 1, 1) * 3).floor()
        weight = torch.where(kind == 0, torch.zeros_like(stripes), stripes)
        weight = torch.where(kind == 2, blotches, weight)
        image = composite(image, ca + (cb - ca) * weight, mask)

    # Text-like glyph clusters: short thin strokes inside a small box, dark or bright.
    for _ in range(_GLYPHS):
        box = 0.05 + 0.12 * rand_uniform(generator, n, 1, 1)
        origin = rand_uniform(generator, n, 1, 2) * (1.0 - box)
        a = origin + box * rand_uniform(generator, n, _STROKES, 2)
        b = origin + box * rand_uniform(generator, n, _STROKES, 2)
        width = 0.6 + 1.0 * rand_uniform(generator, n, 1, 1, 1)  # pixels
        dist = _segment_distance(x, y, a, b) * size
        mask = (0.5 * width - dist + 0.5).clamp(0.0, 1.0).amax(dim=1, keepdim=True)
        bright = (rand_uniform(generator, n, 1, 1, 1) < 0.5).float()
        ink = bright * (0.85 + 0.15 * rand_uniform(generator, n, 3, 1, 1))
        ink = ink + (1 - bright) * 0.15 * rand_uniform(generator, n, 3, 1, 1)
        image = composite(image, ink, mask)

    # Long thin line segments in random colours.
    a = rand_uniform(generator, n, _LINES, 2)
    b = rand_uniform(generator, n, _LINES, 2)
    width = 0.6 + 1.4 * rand_uniform(generator, n, _LINES, 1, 1)
    masks = (0.5 * width - _segment_distance(x, y, a, b) * size + 0.5).clamp(0.0, 1.0)
    colours = rand_uniform(generator, n, _LINES, 3, 1, 1)
    for k in range(_LINES):
        image = composite(image, colours[:, k], masks[:, k : k + 1])

    return image.clamp(0.0, 1.0)


def check_lighting(lighting: str) -> str:
    """``lighting`` if it names a scene lighting (:data:`bgl.config.SCENE_LIGHTINGS`)."""
    if lighting not in SCENE_LIGHTINGS:
        raise ValueError(f"lighting must be one of {', '.join(SCENE_LIGHTINGS)}; got {lighting!r}")
    return lighting


def shade_scenes(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light rendered scenes unevenly, as photographs are: a smooth shading field and a soft shadow.

    Why: evenly lit procedural scenes have almost no dark regions (1% of pixels below luma 0.2,
    against 4-26% in real photographs), so a block trained on them never learns to keep shadows
    dark, and an enhancer that brightens content-adaptively lifts a photograph's shadows. Each
    scene is multiplied (in display values) by exp(a * smooth noise), a in [0, 1.2], and by a
    soft-edged half-plane shadow of depth 0-0.85 on a random side at a random angle.
    """
    n, _, h, w = images.shape
    strength = 1.2 * rand_uniform(generator, n, 1, 1, 1)
    shading = torch.exp(strength * smooth_noise(n, max(h, w), generator)[..., :h, :w])
    coords_y = ((torch.arange(h, dtype=torch.float32) + 0.5) / h).view(1, 1, h, 1)
    coords_x = ((torch.arange(w, dtype=torch.float32) + 0.5) / w).view(1, 1, 1, w)
    theta = rand_uniform(generator, n, 1, 1, 1) * 2 * math.pi
    offset = rand_uniform(generator, n, 1, 1, 1) - 0.5
    side = (coords_x - 0.5) * torch.cos(theta) + (coords_y - 0.5) * torch.sin(theta) - offset
    softness = 0.02 + 0.2 * rand_uniform(generator, n, 1, 1, 1)
    depth = 0.85 * rand_uniform(generator, n, 1, 1, 1)
    shadow = 1.0 - depth * torch.sigmoid(side / softness)
    return (images * shading * shadow).clamp(0.0, 1.0)


def chunk_seed(seed: int, chunk: int) -> int:
    """A well-mixed 63-bit seed for one (dataset seed, chunk index) pair."""
    state = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def check_synthetic_args(n: int, size: int, seed: int) -> None:
    """The arguments every procedural dataset shares: a positive count, a side that is a multiple
    of 32 (the packed input, size/2, must pass four U-Net poolings), a non-negative seed."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
        raise ValueError(
            "size must be a positive multiple of 32 (so the packed input, size/2, is divisible "
            f"by 16 for a 4-level U-Net); got {size!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")


Render = Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]

#: The camera metadata synthesize_low_light returns beside the pair (not batch keys).
CAMERA_KEYS = ("cam2rgb", "rgb_gain", "red_gain", "blue_gain")


def in_raw_space(
    pair: dict[str, torch.Tensor], raw_space: str = "camera"
) -> dict[str, torch.Tensor]:
    """`synthesize_low_light`'s output as batch keys: ``raw`` in ``raw_space``, camera dropped.

    "camera" keeps the camera's RAW; "canonical" re-expresses it with each image's own white
    balance (red and blue gain, greens 1) and colour matrix (:func:`canonical_packed`), after the
    amplification and clipping, which is what ``bgl develop`` does with a file's metadata.

    The white balance also carries the brightness gain that unprocessing divided out (Brooks'
    ``rgb_gain``, 1.25 on average): with it the canonical RAW at ``ratio`` is at the reference's
    exposure, so its classical development *is* the reference up to noise and demosaicing
    (:func:`bgl.raw.tone.classical_development`), just as a real file at ``ratio`` develops to
    LibRaw's rendering at the same brightness. Without it a block learns to brighten every input
    by the training set's mean gain, and renders real files that much brighter than LibRaw does.
    """
    check_raw_space(raw_space)
    out = {key: value for key, value in pair.items() if key not in CAMERA_KEYS}
    if raw_space == "canonical":
        red, blue, gain = pair["red_gain"], pair["blue_gain"], pair["rgb_gain"]
        wb = torch.stack([red, torch.ones_like(red), blue], dim=-1) * gain[:, None]
        out["raw"] = canonical_packed(pair["raw"], wb, pair["cam2rgb"])
    return out


def synthesize_chunks(
    n: int, seed: int, render: Render, raw_space: str = "camera", **low_light: Any
) -> dict[str, torch.Tensor]:
    """n procedural low-light items: raw, rgb, ratio, plus what `render` returns beside images.

    Scenes are made CHUNK at a time, each chunk from its own seeded generator, so item i does not
    depend on n; `render(CHUNK, generator)` returns (sRGB images, {key: per-item tensor}) and the
    images are unprocessed to RAW by `synthesize_low_light(**low_light)`, then put in
    ``raw_space`` (:func:`in_raw_space`).
    """
    check_raw_space(raw_space)
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in range((n + CHUNK - 1) // CHUNK):
        generator = torch.Generator().manual_seed(chunk_seed(seed, chunk))
        images, extra = render(CHUNK, generator)
        pair = in_raw_space(synthesize_low_light(images, generator, **low_light), raw_space)
        take = min(CHUNK, n - chunk * CHUNK)
        for key, value in (*pair.items(), *extra.items()):
            parts.setdefault(key, []).append(value[:take])
    return {key: torch.cat(values).contiguous() for key, values in parts.items()}


class SyntheticLowLight(Dataset):
    """Procedural low-light RAW -> sRGB pairs, all made once at construction and kept in memory.

    Items: ``{"raw": (4,size/2,size/2) amplified noisy packed RAW, "rgb": (3,size,size) reference,
    "ratio": scalar exposure ratio}``. Use different seeds for train and validation splits.
    ``camera_seed`` fixes one synthetic camera (colour matrix, gains) shared by every split made
    with the same value, like a real single-sensor dataset; ``None`` draws one per image.
    ``noise_model``: "gaussian" or "physics", see :func:`synthesize_low_light`. ``raw_space``:
    "camera" (the camera's RAW) or "canonical" (white-balanced, sRGB primaries; best with
    ``camera_seed=None``, so F sees many cameras and needs none of their colour pipelines).
    ``lighting``: "flat" (scenes evenly lit, as rendered) or "shaded" (:func:`shade_scenes`:
    shading and shadows, so dark regions are as common as in photographs).
    """

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
        shot_range: tuple[float, float] = DEFAULT_SHOT_RANGE,
        pattern: str = "RGGB",
        camera_seed: int | None = 0,
        noise_model: str = "gaussian",
        raw_space: str = "camera",
        lighting: str = "flat",
    ) -> None:
        check_synthetic_args(n, size, seed)
        self.lighting = check_lighting(lighting)
        channel_offsets(pattern)  # validates the pattern name
        check_noise_model(noise_model)
        self.raw_space = check_raw_space(raw_space)
        self.n, self.size, self.seed, self.pattern = n, size, seed, pattern
        self.ratio_range = ratio_range
        self.shot_range = shot_range
        self.camera_seed = camera_seed
        self.noise_model = noise_model

        data = synthesize_chunks(
            n,
            seed,
            lambda count, generator: (self._render(count, size, generator), {}),
            ratio_range=ratio_range,
            shot_range=shot_range,
            pattern=pattern,
            camera_seed=camera_seed,
            noise_model=noise_model,
            raw_space=raw_space,
        )
        self._raw, self._rgb, self._ratio = data["raw"], data["rgb"], data["ratio"]

    def _render(self, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
        images = render_scenes(count, size, generator)
        return shade_scenes(images, generator) if self.lighting == "shaded" else images

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return {"raw": self._raw[index], "rgb": self._rgb[index], "ratio": self._ratio[index]}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole split as one batch (shared storage: treat as read-only)."""
        return {"raw": self._raw, "rgb": self._rgb, "ratio": self._ratio}
