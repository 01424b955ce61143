"""`bgl bench cameras`: does a trained block develop other cameras' files as LibRaw does?

Why: a block trained on synthetic data must render a real camera's RAW file with plausible colour
and no grid. No real camera file can be shipped or downloaded here, so the bench writes its own:
real photographs (scikit-image's bundled astronaut, chelsea, coffee and motorcycle; the
procedural training scenes when scikit-image is not installed) unprocessed through each of
Brooks et al.'s four real cameras' XYZ -> camera matrices, white-balanced off by a per-camera
as-shot neutral, one CFA layout per camera (RGGB, GRBG, GBRG, BGGR), as DNG files LibRaw reads:
at the photograph's own exposure with mild shot and read noise (developed at the automatic
ratio, as a user's photo is), or as a short exposure with the training data's noise
(``exposure="low"``, developed at its ratio). Each file is developed by
:func:`bgl.develop.develop_file` (F alone, and F + G when the checkpoint holds G) and compared with
LibRaw's own development at the same exposure
(:func:`bgl.develop.compare_with_libraw`).

Rows (``cameras-<UTC stamp>.parquet``): checkpoint, photo, camera, pattern, mode (``F`` or
``F+G``), the per-channel mean ratios bgl / LibRaw, the worst channel's |ratio - 1|, the grey
SSIM, and whether both targets hold: every channel within 15% and grey SSIM >= 0.7.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

__all__ = [
    "bench_images",
    "MEAN_TOLERANCE",
    "SSIM_TARGET",
    "CameraFile",
    "README_END",
    "README_START",
    "print_table",
    "render_markdown",
    "run_cameras_bench",
    "summarise",
    "write_camera_files",
]

log = logging.getLogger(__name__)

README_START, README_END = "<!-- cameras:start -->", "<!-- cameras:end -->"

#: The targets: each channel's mean within this fraction of LibRaw's, and the grey SSIM.
MEAN_TOLERANCE = 0.15
SSIM_TARGET = 0.7
#: CFA layout of each of the four cameras, so every layout is developed.
PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")
#: Camera RGB of a neutral surface per camera (DNG AsShotNeutral): daylight-like to tungsten.
NEUTRALS = ((0.48, 1.0, 0.62), (0.55, 1.0, 0.5), (0.42, 1.0, 0.7), (0.6, 1.0, 0.45))
#: Noise of a normally exposed capture: variance shot * x + read (Brooks et al.'s model).
SHOT, READ = 1e-3, 1e-5
#: ``exposure="low"``: the file is a short exposure this much darker, with the noise of the
#: synthetic training data (geometric middles of SID's ratios and of bgl's shot range; read noise
#: from Brooks' log-linear law), developed at this ratio: the regime the block was trained in.
LOW_RATIO = math.sqrt(100.0 * 300.0)
LOW_SHOT = math.sqrt(1e-5 * 3e-4)
LOW_READ = math.exp(2.18 * math.log(LOW_SHOT) + 1.20)
EXPOSURES = ("normal", "low")
#: Longest side of a test photograph (pixels): keeps a run of the bench to seconds per file.
MAX_SIDE = 512


@dataclass(frozen=True)
class CameraFile:
    """A written test file and how it was made."""

    path: Path
    photo: str
    camera: int
    pattern: str
    ratio: float | str = "auto"  # what to develop it at


#: Where the test images come from: real photographs, or the synthetic training scenes.
SCENES = ("photos", "procedural")


def _procedural_scenes(max_side: int) -> dict[str, np.ndarray]:
    from bgl.data.synthetic import render_scenes

    size = max(32, max_side // 32 * 32)
    images = render_scenes(4, size, torch.Generator().manual_seed(0))
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return {f"scene{i}": p for i, p in enumerate(pixels)}


def bench_images(max_side: int = MAX_SIDE, scenes: str = "photos") -> dict[str, np.ndarray]:
    """Name -> (H, W, 3) uint8 image; H and W multiples of 32, at most ``max_side``.

    "photos": scikit-image's bundled photographs (real optics, real textures), or the procedural
    scenes with a warning when scikit-image is not installed; "procedural": four scenes of the
    synthetic training set's generator, at ``max_side`` (what the block was trained on, so the
    two rows tell a camera problem from a content problem).
    """
    if scenes not in SCENES:
        raise ValueError(f"scenes must be one of {', '.join(SCENES)}; got {scenes!r}")
    if scenes == "procedural":
        return _procedural_scenes(max_side)
    try:
        from skimage import data
    except ImportError:
        log.warning("scikit-image is not installed: the test files use procedural scenes")
        return _procedural_scenes(max_side)
    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "motorcycle": data.stereo_motorcycle()[0],
    }
    out = {}
    for name, image in photos.items():
        step = max(1, math.ceil(max(image.shape[:2]) / max_side))
        image = image[::step, ::step, :3]
        h, w = (image.shape[0] // 32) * 32, (image.shape[1] // 32) * 32
        out[name] = np.ascontiguousarray(image[:h, :w])
    return out


def write_camera_files(
    folder: str | Path,
    seed: int = 0,
    max_side: int = MAX_SIDE,
    scenes: str = "photos",
    exposure: str = "normal",
) -> list[CameraFile]:
    """One DNG per test photo, camera ``i`` = photo ``i`` mod 4 (matrix, neutral, CFA layout);
    ``exposure``: "normal" (mild noise, developed at the automatic ratio) or "low" (a short
    exposure :data:`LOW_RATIO` times darker with training-level noise, developed at that ratio)."""
    if exposure not in EXPOSURES:
        raise ValueError(f"exposure must be one of {', '.join(EXPOSURES)}; got {exposure!r}")
    from bgl.raw.bayer import mosaic_rgb
    from bgl.raw.dng import mosaic_from_linear, write_dng
    from bgl.raw.unprocess import (
        XYZ2CAMS,
        add_noise,
        apply_ccm,
        gamma_expansion,
        inverse_smoothstep,
        rgb2cam_from_xyz2cam,
    )

    folder = Path(folder)
    files = []
    generator = torch.Generator().manual_seed(seed)
    for i, (name, pixels) in enumerate(bench_images(max_side, scenes).items()):
        camera = i % len(XYZ2CAMS)
        pattern, neutral = PATTERNS[camera], torch.tensor(NEUTRALS[camera])
        rgb = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
        rgb2cam = rgb2cam_from_xyz2cam(torch.tensor(XYZ2CAMS[camera], dtype=torch.float64))
        linear = apply_ccm(gamma_expansion(inverse_smoothstep(rgb)), rgb2cam.float())
        # the photograph at its own exposure: LibRaw at ratio 1 renders it as it was processed
        camera_rgb = linear * neutral[None, :, None, None]
        packed = mosaic_rgb(camera_rgb.clamp(0.0, 1.0), pattern)
        if exposure == "low":
            ratio: float | str = LOW_RATIO
            noisy = add_noise(packed / LOW_RATIO, LOW_SHOT, LOW_READ, generator)
        else:
            ratio = "auto"
            noisy = add_noise(packed, SHOT, READ, generator)
        # mosaic_rgb packed the sites of `pattern` into R, G, B, G2: put them back there
        mosaic = mosaic_from_linear(noisy[0].clamp(0.0, 1.0), pattern)
        path = write_dng(
            folder / f"{name}-cam{camera}-{pattern}.dng",
            mosaic,
            pattern,
            as_shot_neutral=tuple(float(v) for v in neutral),
            color_matrix=XYZ2CAMS[camera],
            camera=f"bgl test camera {camera}",
        )
        files.append(CameraFile(path, name, camera, pattern, ratio))
    return files


def _has_lower(checkpoint: str | Path) -> bool:
    from bgl.models.weights import read_torch_file

    state = read_torch_file(Path(checkpoint), "bgl checkpoint")
    return isinstance(state, dict) and state.get("lower") is not None


def run_cameras_bench(
    checkpoints: dict[str, str | Path],
    *,
    out_dir: str | Path = "results/bench",
    save: str | Path | None = None,
    seed: int = 0,
    max_side: int = MAX_SIDE,
    scenes: str = "photos",
    exposure: str = "normal",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Develop every test file with every checkpoint (label -> path); rows written to
    ``<out_dir>/cameras-<UTC stamp>.parquet``. ``save``: keep the side-by-side PNGs there."""
    from bgl.results.parquet import write_rows

    rows: list[dict[str, Any]] = []
    develop_log = logging.getLogger("bgl.develop")
    level = develop_log.level
    develop_log.setLevel(logging.WARNING)  # develop's per-file lines: the bench prints its own
    try:
        with tempfile.TemporaryDirectory(prefix="bgl-cameras-") as tmp:
            files = write_camera_files(tmp, seed, max_side, scenes, exposure)
            pictures = Path(save) if save is not None else Path(tmp)
            pictures.mkdir(parents=True, exist_ok=True)
            for label, checkpoint in checkpoints.items():
                modes = {"F": False, "F+G": True} if _has_lower(checkpoint) else {"F": False}
                for file in files:
                    for mode, enhance in modes.items():
                        row = _develop_one(label, checkpoint, file, mode, enhance, tmp, pictures)
                        rows.append(row | {"scenes": scenes, "exposure": exposure})
                        if console is not None:
                            console.print(
                                f"{label} {mode} {file.photo} ({file.pattern}): means "
                                f"{row['mean_r']:.2f} {row['mean_g']:.2f} {row['mean_b']:.2f}, "
                                f"SSIM {row['ssim_grey']:.3f}"
                            )
    finally:
        develop_log.setLevel(level)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    write_rows(rows, Path(out_dir) / f"cameras-{stamp}.parquet")
    return rows


def _develop_one(
    label: str,
    checkpoint: str | Path,
    file: CameraFile,
    mode: str,
    enhance: bool,
    tmp: str | Path,
    pictures: Path,
) -> dict[str, Any]:
    from bgl.develop import develop_file

    stem = f"{label}-{file.path.stem}-{'fg' if enhance else 'f'}"
    result = develop_file(
        file.path,
        checkpoint,
        Path(tmp) / f"{stem}.png",
        ratio=file.ratio,
        enhance=enhance,
        compare=pictures / f"{stem}-vs-libraw.png",
    )
    ratios = result.mean_ratio or (math.nan,) * 3
    worst = max(abs(r - 1.0) for r in ratios)
    ssim = float(result.ssim_grey if result.ssim_grey is not None else math.nan)
    return {
        "checkpoint": label,
        "path": str(checkpoint),
        "photo": file.photo,
        "camera": file.camera,
        "pattern": file.pattern,
        "mode": mode,
        "ratio": result.ratio,
        "mean_r": ratios[0],
        "mean_g": ratios[1],
        "mean_b": ratios[2],
        "worst_mean_error": worst,
        "ssim_grey": ssim,
        "meets_targets": bool(worst <= MEAN_TOLERANCE and ssim >= SSIM_TARGET),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per checkpoint, file set (scenes and exposure) and mode, in first-seen order:
    the channel-mean ratios bgl / LibRaw and grey SSIM averaged over the files, the worst
    channel error of any file, and how many files meet both targets."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        short = {"photos": "photo", "procedural": "synth"}.get(row["scenes"], row["scenes"])
        files = f"{short} {row.get('exposure', 'normal')}"
        groups.setdefault((row["checkpoint"], files, row["mode"]), []).append(row)
    return [
        {
            "block": label,
            "files": files,
            "mode": mode,
            **{k: float(np.mean([r[k] for r in group])) for k in ("mean_r", "mean_g", "mean_b")},
            "worst": max(r["worst_mean_error"] for r in group),
            "ssim": float(np.mean([r["ssim_grey"] for r in group])),
            "ok": f"{sum(r['meets_targets'] for r in group)}/{len(group)}",
        }
        for (label, files, mode), group in groups.items()
    ]


def _cells(line: dict[str, Any]) -> list[str]:
    return [
        line["block"],
        line["files"],
        line["mode"],
        *(f"{line[k]:.2f}" for k in ("mean_r", "mean_g", "mean_b", "worst")),
        f"{line['ssim']:.3f}",
        line["ok"],
    ]


HEADERS = ("block", "files", "mode", "R", "G", "B", "worst", "SSIM", "ok")


def print_table(rows: Sequence[dict[str, Any]], console: Console) -> None:
    """:func:`summarise` as a terminal table that fits 80 columns."""
    table = Table(title="bgl develop vs LibRaw (mean over files; targets ±15%, SSIM ≥ 0.7)")
    for header in HEADERS:
        left = header in ("block", "files", "mode")
        table.add_column(header, justify="left" if left else "right", no_wrap=header != "block")
    for line in summarise(rows):
        table.add_row(*_cells(line))
    console.print(table)


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`summarise` as the README's table."""
    lines = [
        "| block | files | mode | R | G | B | worst channel error | grey SSIM "
        "| files meeting both |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_cells(line)) + " |" for line in summarise(rows)]
    return "\n".join(lines) + "\n"
