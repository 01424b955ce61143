"""Tiny (or full-size) copies of the SID, DARK FACE and ACDC layouts, written from scratch.

Why: tests and ``bgl bench data`` need real files in the published layouts -- DNG camera files
that LibRaw decodes, PNGs with label files -- without downloading anything. Scenes come from the
procedural renderer of the synthetic dataset; RAW mosaics from unprocessing them (Brooks et al.),
so the long exposure develops into a plausible picture and the short one is a noisy, darker copy.

Every writer returns what it wrote (mosaics, boxes, label maps), so tests can check the loaders
against values computed independently of the loaders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bgl.data.png import write_png
from bgl.data.synthetic import render_scenes
from bgl.raw.dng import mosaic_from_linear, write_dng
from bgl.raw.unprocess import add_noise, unprocess

__all__ = ["SIDFixture", "make_acdc", "make_darkface", "make_sid", "scene"]

#: SID-style scene ids per split (SID numbers train scenes 0xxxx, test 1xxxx, val 2xxxx).
_SCENE_BASE = {"train": 0, "test": 10000, "val": 20000}


def scene(height: int, width: int, seed: int) -> torch.Tensor:
    """A (3, height, width) sRGB scene in [0, 1]: rendered small, then upsampled."""
    g = torch.Generator().manual_seed(seed)
    side = max(height, width)
    small = min(side, 512)
    image = render_scenes(1, small, g)
    if small != side:
        image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
    return image[0, :, :height, :width].clamp(0.0, 1.0)


def _linear(rgb: torch.Tensor, seed: int, pattern: str) -> torch.Tensor:
    raw, _ = unprocess(
        rgb[None], torch.Generator().manual_seed(seed), pattern=pattern, camera_seed=7
    )
    return raw[0]


@dataclass
class SIDFixture:
    root: Path
    lines: dict[str, list[str]] = field(default_factory=dict)  # split -> list lines
    mosaics: dict[str, np.ndarray] = field(default_factory=dict)  # relative path -> mosaic


def make_sid(
    root: str | Path,
    scenes: dict[str, int] | None = None,
    *,
    shots: tuple[float, ...] = (0.1, 0.04),
    long_seconds: float = 10.0,
    size: tuple[int, int] = (64, 96),
    pattern: str = "RGGB",
    black: float | tuple[float, float, float, float] = 512,
    white: int = 16383,
    seed: int = 0,
) -> SIDFixture:
    """SID Sony layout: ``scenes[split]`` scenes, one long and ``len(shots)`` short exposures
    each, plus ``Sony_{train,val,test}_list.txt``. Mosaics are (size) uint16 DNGs named .ARW."""
    root = Path(root)
    scenes = scenes or {"train": 2, "val": 1, "test": 1}
    fixture = SIDFixture(root)
    for split in ("train", "val", "test"):
        lines = []
        for s in range(scenes.get(split, 0)):
            scene_id = f"{_SCENE_BASE[split] + s + 1:05d}"
            key = seed * 1000 + _SCENE_BASE[split] + s
            linear = _linear(scene(*size, key), key, pattern)
            long_rel = f"Sony/long/{scene_id}_00_{long_seconds:g}s.ARW"
            long_mosaic = mosaic_from_linear(linear, pattern, black=black, white=white)
            write_dng(root / long_rel, long_mosaic, pattern, black=black, white=white)
            fixture.mosaics[long_rel] = long_mosaic
            for shot, seconds in enumerate(shots):
                g = torch.Generator().manual_seed(key * 31 + shot)
                dark = add_noise(linear / (long_seconds / seconds), 1e-4, 1e-6, g).clamp(0, 1)
                short_rel = f"Sony/short/{scene_id}_{shot:02d}_{seconds:g}s.ARW"
                short_mosaic = mosaic_from_linear(dark, pattern, black=black, white=white)
                write_dng(root / short_rel, short_mosaic, pattern, black=black, white=white)
                fixture.mosaics[short_rel] = short_mosaic
                lines.append(f"./{short_rel} ./{long_rel} ISO200 F8")
        (root / f"Sony_{split}_list.txt").write_text("".join(f"{line}\n" for line in lines))
        fixture.lines[split] = lines
    return fixture


def make_darkface(
    root: str | Path,
    n: int = 6,
    *,
    size: tuple[int, int] = (48, 64),
    faces: int = 3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """DARK FACE layout with ``n`` images ``image/<i>.png`` (dark scenes) and ``label/<i>.txt``.

    Returns id -> (faces, 4) boxes as written (integers, inside the image).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {}
    height, width = size
    for i in range(1, n + 1):
        rgb = (scene(height, width, seed * 1000 + i) * 0.25).permute(1, 2, 0).numpy()
        write_png(root / "image" / f"{i}.png", np.rint(rgb * 255).astype(np.uint8))
        x1 = rng.integers(0, width - 8, faces)
        y1 = rng.integers(0, height - 8, faces)
        w = rng.integers(2, 8, faces)
        h = rng.integers(2, 8, faces)
        boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
        text = f"{faces}\n" + "".join(f"{a} {b} {c} {d}\n" for a, b, c, d in boxes)
        (root / "label").mkdir(parents=True, exist_ok=True)
        (root / "label" / f"{i}.txt").write_text(text)
        out[str(i)] = boxes.astype(np.float32)
    return out


def make_acdc(
    root: str | Path,
    counts: dict[str, int] | None = None,
    *,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """ACDC night layout: ``counts[split]`` frames (official 'train'/'val') in two sequences.

    Returns the RGB path (relative to root) -> (H, W) uint8 label map as written; labels use ids
    0..18 and 255.
    """
    root = Path(root)
    counts = counts or {"train": 8, "val": 2}
    rng = np.random.default_rng(seed)
    out = {}
    height, width = size
    for split, count in counts.items():
        for i in range(count):
            seq = f"GOPR{350 + i % 2:04d}"
            stem = f"{seq}_frame_{i:06d}"
            rel = f"rgb_anon/night/{split}/{seq}/{stem}_rgb_anon.png"
            rgb = (scene(height, width, seed * 1000 + i + 100 * len(out)) * 0.3).permute(1, 2, 0)
            write_png(root / rel, np.rint(rgb.numpy() * 255).astype(np.uint8))
            labels = rng.integers(0, 19, (height, width)).astype(np.uint8)
            labels[: max(1, height // 8)] = 255
            write_png(root / f"gt/night/{split}/{seq}/{stem}_gt_labelTrainIds.png", labels)
            out[rel] = labels
    return out


def exposure_ratio(short_seconds: float, long_seconds: float) -> float:
    """SID's ratio, for fixtures and tests: min(long / short, 300)."""
    return min(long_seconds / short_seconds, 300.0) if short_seconds > 0 else math.inf
