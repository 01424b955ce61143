"""Write Bayer mosaics as DNG files that LibRaw (rawpy) reads back: fixtures and benchmarks.

Why: tests and the data benchmark need real camera files, decoded by the same LibRaw code path
as a user's ARW or NEF, without shipping or downloading any. A DNG is a TIFF with a few extra
tags; tifffile writes them. The tags written (all verified to round-trip through rawpy 0.28 /
LibRaw 0.22, also under an ``.ARW`` name since LibRaw detects formats by content):

    PhotometricInterpretation 32803 (CFA), DNGVersion 50706, DNGBackwardVersion 50707,
    UniqueCameraModel 50708, CFARepeatPatternDim 33421, CFAPattern 33422,
    BlackLevelRepeatDim 50713 + BlackLevel 50714 (one level per 2x2 site), WhiteLevel 50717,
    ColorMatrix1 50721 (XYZ -> camera), CalibrationIlluminant1 50778 (D65),
    AsShotNeutral 50728, Orientation 274 (optional).

Black levels are given in bgl's channel order (R, G, B, G2) and written at the sites that
:func:`bgl.raw.bayer.channel_offsets` assigns to them, so a reader that gets the layout wrong
also gets the black levels wrong, which the round-trip tests catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bgl.raw.bayer import cfa_index_grid, unpack
from bgl.raw.unprocess import XYZ2CAMS

__all__ = ["DNG_CFA_CODES", "mosaic_from_linear", "write_dng"]

#: DNG CFAPattern colour codes of bgl's channels R, G, B, G2.
DNG_CFA_CODES: tuple[int, int, int, int] = (0, 1, 2, 1)

_ORIENTATIONS = {1, 2, 3, 4, 5, 6, 7, 8}


def _rationals(values: Sequence[float], signed: bool, denominator: int = 10000) -> list[int]:
    out: list[int] = []
    for v in values:
        out += [int(round(float(v) * denominator)), denominator]
    if not signed and any(n < 0 for n in out[::2]):
        raise ValueError(f"unsigned rational tag got negative values: {list(values)}")
    return out


def write_dng(
    path: str | Path,
    mosaic: np.ndarray,
    pattern: str | np.ndarray = "RGGB",
    *,
    black: float | Sequence[float] = 512,
    white: int = 16383,
    as_shot_neutral: Sequence[float] = (0.5, 1.0, 0.6),
    color_matrix: Sequence[Sequence[float]] | None = None,
    camera: str = "bgl synthetic camera",
    orientation: int | None = None,
) -> Path:
    """Write a (H, W) uint16 Bayer mosaic as a DNG that rawpy opens; returns the path.

    ``pattern``: a layout name, or a raw CFA code array (0 R, 1 G, 2 B, 3 cyan, ...) of any
    repeat size (e.g. 6x6 X-Trans) to write non-Bayer fixtures. ``black``: one level, or four in
    bgl's channel order R, G, B, G2 (Bayer layouts only). ``as_shot_neutral``: camera RGB of a
    neutral surface (white-balance multipliers are its inverse). ``color_matrix``: XYZ -> camera
    3x3 (default: the first camera matrix of Brooks et al.). ``orientation``: TIFF/EXIF 1-8.
    """
    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
        raise ValueError(f"mosaic must be a 2-D uint16 array; got {mosaic.dtype} {mosaic.shape}")
    if isinstance(pattern, str):
        grid = cfa_index_grid(pattern)
        codes = np.array([[DNG_CFA_CODES[i] for i in row] for row in grid], dtype=np.uint8)
    else:
        codes, grid = np.asarray(pattern, dtype=np.uint8), None
        if codes.ndim != 2:
            raise ValueError(f"a CFA code array must be 2-D; got shape {codes.shape}")
    blacks = np.atleast_1d(np.asarray(black, dtype=np.float64))
    if blacks.size == 1:
        black_sites = [float(blacks[0])]
    elif blacks.size == 4 and grid is not None:
        black_sites = [float(blacks[grid[r][c]]) for r in (0, 1) for c in (0, 1)]  # raster order
    else:
        raise ValueError("black must be one level, or four (R, G, B, G2) for a Bayer pattern")
    if not all(0 <= b < white for b in black_sites):
        raise ValueError(f"black levels {black_sites} must lie in [0, white={white})")
    if color_matrix is None:
        color_matrix = XYZ2CAMS[0]
    matrix = np.asarray(color_matrix, dtype=np.float64).reshape(-1)
    if matrix.size != 9:
        raise ValueError("color_matrix must be 3x3")
    if len(as_shot_neutral) != 3 or min(as_shot_neutral) <= 0:
        raise ValueError(f"as_shot_neutral must be 3 positive numbers; got {as_shot_neutral}")

    integer_black = all(float(b).is_integer() and b < 65536 for b in black_sites)
    black_tag = (
        (50714, "H", len(black_sites), tuple(int(b) for b in black_sites), True)
        if integer_black
        else (50714, "2I", len(black_sites), _rationals(black_sites, signed=False), True)
    )
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, camera, True),  # UniqueCameraModel
        (33421, "H", 2, codes.shape, True),  # CFARepeatPatternDim
        (33422, "B", codes.size, tuple(int(v) for v in codes.reshape(-1)), True),  # CFAPattern
        (50713, "H", 2, (2, 2) if len(black_sites) == 4 else (1, 1), True),  # BlackLevelRepeatDim
        black_tag,  # BlackLevel
        (50717, "I", 1, int(white), True),  # WhiteLevel
        (50721, "2i", 9, _rationals(matrix, signed=True), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, _rationals(as_shot_neutral, signed=False), True),  # AsShotNeutral
    ]
    if orientation is not None:
        if orientation not in _ORIENTATIONS:
            raise ValueError(f"orientation must be 1..8; got {orientation}")
        tags.append((274, "H", 1, int(orientation), True))
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=tags, subfiletype=0)
    return path


def mosaic_from_linear(
    packed: torch.Tensor | np.ndarray,
    pattern: str = "RGGB",
    *,
    black: float | Sequence[float] = 512,
    white: int = 16383,
) -> np.ndarray:
    """Linear packed RAW (4, h, w) in [0, 1] -> (2h, 2w) uint16 mosaic of raw digital numbers.

    The inverse of :func:`bgl.raw.read.normalize_packed` at ratio 1 (up to rounding): each
    channel is scaled to [black[c], white] and placed at its CFA site.
    """
    x = torch.as_tensor(packed, dtype=torch.float64)
    if x.ndim != 3 or x.shape[0] != 4:
        raise ValueError(f"packed must be (4, h, w); got shape {tuple(x.shape)}")
    b = torch.as_tensor(black, dtype=torch.float64).reshape(-1, 1, 1).expand(4, 1, 1)
    dn = b + x.clamp(0.0, 1.0) * (white - b)
    mosaic = unpack(dn[None], pattern)[0, 0]
    return mosaic.round().clamp(0, 65535).to(torch.int32).numpy().astype(np.uint16)
