"""Camera colour -> a camera-independent *canonical RAW*: the mosaic in linear sRGB primaries.

Why: a generative block trained on one camera's RAW learns that camera's colour matrix and white
balance and renders any other camera's file in the wrong colours. Every RAW file carries what it
takes to undo both: the as-shot white balance and the camera's colour matrix (LibRaw reads them;
synthetic unprocessing knows the ones it drew). Re-expressing the packed mosaic with them, before
F, leaves F only the camera-independent part of development (denoising, demosaicing, tone):

    packed (R, G, B, G2), camera RGB  --x white balance-->  neutral grey has R = G = B
      --cam2rgb at each packed site-->  linear sRGB primaries, still a mosaic (R', G', B', G2')

Conventions: packed tensors are bgl's R, G, B, G2 (:mod:`bgl.raw.bayer`); white-balance gains
multiply camera RAW (R and B gains, greens 1 once normalised; LibRaw's ``cam_mul``); ``cam2rgb``
maps white-balanced camera RGB to linear sRGB (LibRaw's ``rgb_cam``, the inverse of Brooks et
al.'s rgb2cam). Helpers that read LibRaw's metadata take plain sequences (no rawpy import here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bgl.raw.unprocess import rgb2cam_from_xyz2cam

__all__ = [
    "IDENTITY",
    "RAW_SPACES",
    "camera_matrices",
    "canonical_packed",
    "check_raw_space",
    "libraw_cam2rgb",
    "libraw_white_balance",
]

log = logging.getLogger(__name__)

#: What F's input can be: the camera's own RAW ("camera") or the canonical RAW ("canonical").
RAW_SPACES: tuple[str, ...] = ("camera", "canonical")

#: cam2rgb of a file whose colour matrix is unknown: camera RGB taken as sRGB.
IDENTITY: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
)


def check_raw_space(raw_space: str) -> str:
    """``raw_space`` if it is one of :data:`RAW_SPACES`, else a ValueError naming the choices."""
    if raw_space not in RAW_SPACES:
        raise ValueError(f"raw_space must be one of {', '.join(RAW_SPACES)}; got {raw_space!r}")
    return raw_space


def _per_image(
    value: Any, shape: tuple[int, ...], batch: int, like: torch.Tensor, name: str
) -> torch.Tensor:
    """``value`` as a (batch, *shape) tensor: one shared value, or one per image."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.shape == shape:
        return t.expand(batch, *shape)
    if t.shape == (batch, *shape):
        return t
    raise ValueError(
        f"{name} must be shaped {shape} or ({batch}, {', '.join(map(str, shape))}); "
        f"got {tuple(t.shape)}"
    )


def canonical_packed(packed: torch.Tensor, wb: Any, cam2rgb: Any) -> torch.Tensor:
    """Packed RAW (B,4,h,w) or (4,h,w), R, G, B, G2 -> the canonical RAW of the same shape.

    ``wb``: white-balance gains (3,) R, G, B (G also for G2) or (4,) R, G, B, G2, or one row per
    image (B,3)/(B,4); ``cam2rgb``: (3,3) or (B,3,3). Any dtype and device (parameters follow the
    packed tensor's).

    Steps: multiply by the gains and clip at 1, as LibRaw clips after white balance (a saturated
    pixel stays white instead of turning magenta once red and blue are boosted); at each packed
    site take v = (R, (G + G2)/2, B) and rgb = cam2rgb v; write R' = rgb_R, B' = rgb_B and shift
    both greens by the same rgb_G - (G + G2)/2, so the green-green detail of the mosaic (half its
    samples) survives. The result is clipped to [0, 1] because F is trained on inputs in that
    range (a SID input is clipped at white), and the matrix's negative entries can push saturated
    colours (and noise around black) slightly outside it.
    """
    single = packed.dim() == 3
    x = packed[None] if single else packed
    if x.dim() != 4 or x.shape[1] != 4:
        raise ValueError(f"packed RAW must be (B,4,h,w) or (4,h,w); got {tuple(packed.shape)}")
    batch = x.shape[0]
    gains = torch.as_tensor(wb, dtype=x.dtype, device=x.device)
    if gains.shape[-1:] == (3,):
        gains = torch.cat([gains, gains[..., 1:2]], dim=-1)
    gains = _per_image(gains, (4,), batch, x, "wb (3 or 4 gains)")
    matrix = _per_image(cam2rgb, (3, 3), batch, x, "cam2rgb")
    x = (x * gains[:, :, None, None]).clamp_max(1.0)
    green = 0.5 * (x[:, 1] + x[:, 3])
    v = torch.stack([x[:, 0], green, x[:, 2]], dim=1)
    rgb = torch.einsum("bij,bjhw->bihw", matrix, v)
    shift = rgb[:, 1] - green
    out = torch.stack([rgb[:, 0], x[:, 1] + shift, rgb[:, 2], x[:, 3] + shift], dim=1)
    out = out.clamp(0.0, 1.0)
    return out[0] if single else out


def camera_matrices(rgb_xyz_matrix: Any) -> torch.Tensor:
    """LibRaw's XYZ -> camera matrix (rawpy ``rgb_xyz_matrix``, 4x3 or 3x3) -> cam2rgb (3,3).

    As Brooks et al.'s unprocessing (and LibRaw's ``cam_xyz_coeff``): rgb2cam = xyz2cam @ RGB2XYZ
    with rows normalised to sum 1 (:func:`bgl.raw.unprocess.rgb2cam_from_xyz2cam`), cam2rgb its
    inverse, float64. Only the first three rows are used (the fourth is for 4-colour sensors).
    """
    xyz2cam = torch.as_tensor(np.asarray(rgb_xyz_matrix, dtype=np.float64))
    if xyz2cam.dim() != 2 or xyz2cam.shape[0] not in (3, 4) or xyz2cam.shape[1] != 3:
        raise ValueError(f"rgb_xyz_matrix must be 3x3 or 4x3; got {tuple(xyz2cam.shape)}")
    rgb2cam = rgb2cam_from_xyz2cam(xyz2cam[:3])
    return torch.linalg.inv(rgb2cam)


def _usable_matrix(matrix: np.ndarray) -> bool:
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all() or not np.abs(matrix).sum() > 0:
        return False
    return bool(np.linalg.cond(matrix) < 1e6)


def libraw_cam2rgb(
    rgb_xyz_matrix: Any, color_matrix: Any = None, path: str = ""
) -> tuple[tuple[tuple[float, float, float], ...], str]:
    """(cam2rgb 3x3, source) from what rawpy reports, as LibRaw would develop the file.

    ``rgb_xyz_matrix`` (XYZ -> camera, LibRaw's ``cam_xyz``, from its camera table or the file)
    when set, through :func:`camera_matrices`; else ``color_matrix`` (3x4, LibRaw's ``cmatrix``,
    already camera -> sRGB: what LibRaw fills for DNG files, whose ``rgb_xyz_matrix`` rawpy
    reports as zeros); else the identity, with a warning naming the file.
    """
    xyz = np.asarray(rgb_xyz_matrix, dtype=np.float64)[:3] if rgb_xyz_matrix is not None else None
    if xyz is not None and xyz.shape == (3, 3) and np.abs(xyz).sum() > 0:
        try:
            cam2rgb = camera_matrices(xyz).numpy()
        except (ValueError, RuntimeError):  # a row summing to 0, or a singular matrix
            cam2rgb = None
        if cam2rgb is not None and _usable_matrix(cam2rgb):
            return _rows(cam2rgb), "rgb_xyz_matrix"
    if color_matrix is not None:
        cm = np.asarray(color_matrix, dtype=np.float64)[:3, :3]
        if _usable_matrix(cm):
            return _rows(cm), "color_matrix"
    log.warning(
        "%s: no usable colour matrix (rgb_xyz_matrix and color_matrix empty); camera RGB is "
        "taken as sRGB, so colours may be off",
        path or "RAW file",
    )
    return IDENTITY, "identity"


def _rows(matrix: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix)  # type: ignore[return-value]


def libraw_white_balance(
    camera_wb: Sequence[float] | None,
    daylight_wb: Sequence[float] | None = None,
    colour_index: Sequence[int] = (0, 1, 2, 3),
    path: str = "",
) -> tuple[tuple[float, float, float, float], str]:
    """(gains in bgl's packed order R, G, B, G2 normalised to G = 1, source) from rawpy's WB.

    ``camera_wb``/``daylight_wb``: rawpy ``camera_whitebalance``/``daylight_whitebalance``, four
    multipliers indexed by LibRaw's colour index (``color_desc`` b"RGBG": 0 R, 1 G, 2 B, 3 G2).
    ``colour_index``: the LibRaw colour index at each packed channel's site (the visible
    ``raw_pattern`` at ``channel_offsets``), so a file that calls both greens 1 gets G's gain on
    G2, and a zero fourth multiplier means "as G" (LibRaw's rule for 3-colour files). The as-shot
    balance is used when valid, else daylight, else 1s; each fallback logs a warning.
    """
    for source, values in (("as shot", camera_wb), ("daylight", daylight_wb)):
        gains = _gains(values, colour_index)
        if gains is not None:
            if source != "as shot":
                log.warning(
                    "%s: no as-shot white balance in the file; using LibRaw's daylight balance",
                    path or "RAW file",
                )
            return gains, source
    log.warning(
        "%s: no white balance in the file (as shot or daylight); using gains of 1, so colours "
        "may be tinted",
        path or "RAW file",
    )
    return (1.0, 1.0, 1.0, 1.0), "none"


def _gains(
    values: Sequence[float] | None, colour_index: Sequence[int]
) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    wb = [float(v) for v in values]
    if len(wb) < 3:
        return None
    wb += [0.0] * (4 - len(wb))
    if not wb[3] > 0:
        wb[3] = wb[1]  # LibRaw: a 3-colour file's second green takes the first green's gain
    try:
        picked = [wb[int(i)] for i in colour_index]
    except IndexError:
        return None
    if len(picked) != 4 or not all(math.isfinite(g) and g > 0 for g in picked):
        return None
    green = picked[1]
    return tuple(g / green for g in picked)  # type: ignore[return-value]
