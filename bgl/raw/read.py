"""Camera RAW files -> packed 4-channel Bayer arrays in bgl's canonical order (R, G, B, G2).

Why a module of its own: every real-data path (SID loading, the packed cache, ``bgl develop``)
must turn a camera file into exactly the tensor the generative block was trained on, whatever the
camera's CFA layout. LibRaw (through rawpy) reads ARW, DNG, NEF, CR2, ... ; this module only
decides *where* each colour sits and normalises it:

    packed[c] = clip((mosaic[c] - black[c]) / (white - black[c]) * ratio, 0, 1)

with ``c`` in R, G, B, G2 (G on R's row, G2 on B's row, see :mod:`bgl.raw.bayer`). The layout is
read from rawpy's ``raw_pattern`` over ``color_desc`` and matched against bayer.py's one layout
table, so a GRBG or BGGR sensor packs to the same channel order as SID's RGGB Sony. Black levels
are looked up per CFA *site*, so per-channel blacks land on the right packed channel.

Reference RGB (SID's ground truth) is LibRaw's own development of a long exposure:
``postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16)``, with
``user_flip=0`` so it stays in sensor orientation, pixel-aligned with the packed mosaic (RGB pixel
(2y, 2x) <-> packed (y, x)). The camera's orientation is kept in :attr:`RawFrame.flip` and applied
only when a finished picture is written (``bgl develop``).

Colour: each frame also carries the file's as-shot white balance (per packed channel, G = 1) and
its camera -> sRGB matrix, as LibRaw would use them to develop it, so ``RawFrame.canonical`` can
hand F the camera-independent RAW of :mod:`bgl.raw.colour`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgl.raw.bayer import CHANNELS, PATTERNS, cfa_index_grid, channel_offsets, pack
from bgl.raw.colour import IDENTITY, canonical_packed, libraw_cam2rgb, libraw_white_balance

__all__ = [
    "RawFrame",
    "RawReadError",
    "cfa_layout",
    "libraw_postprocess",
    "normalize_packed",
    "read_packed",
    "read_raw",
    "read_reference_rgb",
]

#: What LibRaw must call the four CFA colours for a file to count as an RGB Bayer sensor.
_LETTERS = "RGBG"


class RawReadError(ValueError):
    """A file that cannot be read as a Bayer RAW; ``str()`` reads ``FILE: reason``."""

    def __init__(self, file: str | Path, reason: str) -> None:
        self.file, self.reason = str(file), reason
        super().__init__(f"{file}: {reason}")


@dataclass(frozen=True)
class RawFrame:
    """One decoded RAW file, packed but not yet normalised (so it can be cached losslessly).

    ``packed``: (4, h, w) raw digital numbers in R, G, B, G2 order (uint16 as LibRaw gives them);
    ``black``: the black level of each packed channel; ``white``: the saturation level;
    ``pattern``: the file's CFA layout name (one of bayer.PATTERNS); ``flip``: LibRaw's
    orientation code (0 none, 3 180°, 5 90° CCW, 6 90° CW); ``camera_wb``: as-shot multipliers
    as rawpy reports them (LibRaw's colour order, unnormalised); ``wb``: the white-balance gains
    of the packed channels R, G, B, G2, normalised to G = 1 (as shot; daylight or 1s when the
    file has none, see ``wb_source``); ``cam2rgb``: white-balanced camera RGB -> linear sRGB
    (from LibRaw's colour matrix, see ``cam2rgb_source``). ``wb`` and ``cam2rgb`` are what
    :meth:`canonical` needs to make the camera-independent RAW (:mod:`bgl.raw.colour`).
    """

    path: str
    packed: np.ndarray
    black: tuple[float, float, float, float]
    white: float
    pattern: str
    flip: int = 0
    camera_wb: tuple[float, ...] = ()
    wb: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    cam2rgb: tuple[tuple[float, float, float], ...] = IDENTITY
    wb_source: str = "none"
    cam2rgb_source: str = "identity"

    def normalized(self, ratio: float = 1.0) -> np.ndarray:
        """(4, h, w) float32: minus black, over (white - black), times ratio, clipped to [0, 1]."""
        return normalize_packed(self.packed, self.black, self.white, ratio)

    def canonical(self, ratio: float = 1.0) -> np.ndarray:
        """(4, h, w) float32 canonical RAW: :meth:`normalized` (amplified and clipped in camera
        space, as training data are), then white balance and colour matrix applied."""
        packed = torch.from_numpy(self.normalized(ratio))
        return canonical_packed(packed, self.wb, self.cam2rgb).numpy()


def cfa_layout(raw_pattern: np.ndarray | None, color_desc: bytes | str, path: str | Path) -> str:
    """The layout name (RGGB, GRBG, BGGR, GBRG) of a rawpy ``raw_pattern``; errors name the file.

    Non-Bayer sensors are refused with the pattern in the message: X-Trans (6x6 pattern), Foveon
    and linear (already demosaiced) DNGs (no pattern), and CFAs that are not R/G/B (e.g. CMYG).
    """
    desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, bytes) else color_desc
    if raw_pattern is None:
        raise RawReadError(
            path,
            "not a Bayer mosaic (LibRaw reports no CFA pattern: a Foveon sensor or a "
            "linear, already demosaiced DNG); bgl packs 2x2 Bayer RAW files only",
        )
    grid = np.asarray(raw_pattern)
    if grid.shape != (2, 2):
        kind = "X-Trans" if grid.shape == (6, 6) else f"{grid.shape[0]}x{grid.shape[1]}"
        letters = ["".join(_letter(desc, int(i)) for i in row) for row in grid]
        raise RawReadError(
            path,
            f"{kind} colour filter array (pattern {'/'.join(letters)}), not a 2x2 Bayer "
            "mosaic; bgl packs Bayer RAW files only",
        )
    letters = [[_letter(desc, int(i)) for i in row] for row in grid]
    for name in PATTERNS:
        expected = [[_LETTERS[i] for i in row] for row in cfa_index_grid(name)]
        if letters == expected:
            return name
    shown = "".join(letters[0] + letters[1])
    raise RawReadError(
        path,
        f"colour filter pattern {shown!r} (colour description {desc!r}) is not an RGB "
        "Bayer layout (RGGB, GRBG, BGGR or GBRG)",
    )


def _letter(desc: str, index: int) -> str:
    return desc[index] if 0 <= index < len(desc) else "?"


def _visible_grid(raw, path: str | Path) -> np.ndarray | None:  # raw: rawpy.RawPy
    """The 2x2 colour-index grid of the *visible* area, or the full pattern if it is not 2x2.

    rawpy's ``raw_pattern`` is anchored at the full sensor's (0, 0); with an odd top or left
    margin the visible image starts one site later, so the grid is re-read at the margins.
    """
    pattern = raw.raw_pattern
    if pattern is None or np.asarray(pattern).shape != (2, 2):
        return pattern
    top, left = raw.sizes.top_margin, raw.sizes.left_margin
    return np.array([[raw.raw_color(top + r, left + c) for c in (0, 1)] for r in (0, 1)])


def _open(path: str | Path):  # -> rawpy.RawPy
    """rawpy.imread with errors that name the file (missing, truncated, not RAW)."""
    import rawpy

    path = Path(path)
    if not path.is_file():
        raise RawReadError(path, "file not found" if not path.exists() else "not a file")
    try:
        return rawpy.imread(os.fspath(path))
    except rawpy.LibRawFileUnsupportedError:
        raise RawReadError(path, "not a RAW file LibRaw can read (unsupported format)") from None
    except rawpy.LibRawError as exc:
        raise RawReadError(path, f"cannot read RAW data ({_reason(exc)}; truncated?)") from None


def _reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def read_raw(path: str | Path) -> RawFrame:
    """Decode a RAW file into a :class:`RawFrame` (packed uint16 mosaic plus levels).

    The visible area (sensor margins removed) is used; an odd last row or column is dropped so
    the mosaic tiles into whole 2x2 cells.
    """
    import rawpy

    with _open(path) as raw:
        try:
            grid = _visible_grid(raw, path)
            pattern = cfa_layout(grid, raw.color_desc, path)
            mosaic = raw.raw_image_visible
            per_colour = [float(b) for b in raw.black_level_per_channel]
            white = float(raw.white_level)
            flip = int(raw.sizes.flip)
            wb = tuple(float(v) for v in raw.camera_whitebalance)
            daylight = tuple(float(v) for v in raw.daylight_whitebalance)
            xyz2cam = np.array(raw.rgb_xyz_matrix, dtype=np.float64)
            cmatrix = np.array(raw.color_matrix, dtype=np.float64)
        except rawpy.LibRawError as exc:
            raise RawReadError(
                path, f"cannot decode RAW data ({_reason(exc)}; truncated?)"
            ) from None
        if mosaic is None or mosaic.ndim != 2:
            raise RawReadError(path, "LibRaw returned no single-plane Bayer mosaic")
        h, w = mosaic.shape[0] // 2 * 2, mosaic.shape[1] // 2 * 2
        if h < 2 or w < 2:
            raise RawReadError(path, f"mosaic of {mosaic.shape} is too small to pack")
        tensor = torch.from_numpy(np.ascontiguousarray(mosaic[:h, :w]))
        packed = pack(tensor[None], pattern)[0].numpy().copy()  # copy: outlive LibRaw's buffer
    # black level per packed channel: look up the CFA colour index at that channel's site
    index = [int(grid[r, c]) for r, c in channel_offsets(pattern)]
    black = tuple(per_colour[i] for i in index)
    if not all(b < white for b in black):
        raise RawReadError(path, f"black levels {black} are not below the white level {white}")
    # white balance per packed channel: the multiplier of the CFA colour at that channel's site
    gains, wb_source = libraw_white_balance(wb, daylight, index, str(path))
    cam2rgb, cam2rgb_source = libraw_cam2rgb(xyz2cam, cmatrix, str(path))
    return RawFrame(
        str(path),
        packed,
        black,  # type: ignore[arg-type]
        white,
        pattern,
        flip,
        wb,
        gains,
        cam2rgb,
        wb_source,
        cam2rgb_source,
    )


def normalize_packed(
    packed: np.ndarray | torch.Tensor,
    black: tuple[float, ...] | list[float],
    white: float,
    ratio: float = 1.0,
) -> np.ndarray:
    """(4, h, w) raw numbers -> float32 ``clip((x - black) / (white - black) * ratio, 0, 1)``.

    Works on uint16 arrays, memory maps (crops of the cache) and tensors alike.
    """
    x = packed.numpy() if isinstance(packed, torch.Tensor) else packed
    if x.ndim != 3 or x.shape[0] != len(CHANNELS):
        raise ValueError(f"packed RAW must be (4, h, w); got shape {tuple(x.shape)}")
    b = np.asarray(black, dtype=np.float32).reshape(4, 1, 1)
    scale = np.float32(ratio) / (np.float32(white) - b)
    out = (x.astype(np.float32) - b) * scale
    return np.clip(out, 0.0, 1.0, out=out)


def read_packed(path: str | Path, ratio: float = 1.0) -> np.ndarray:
    """The network input of a RAW file in one call: (4, h, w) float32 in [0, 1]."""
    return read_raw(path).normalized(ratio)


def read_reference_rgb(path: str | Path) -> np.ndarray:
    """SID's ground truth of a (long-exposure) RAW file: (H, W, 3) uint16, sensor orientation.

    ``postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16,
    user_flip=0)``; divide by 65535 for [0, 1].
    """
    return libraw_postprocess(
        path,
        use_camera_wb=True,
        half_size=False,
        no_auto_bright=True,
        output_bps=16,
        user_flip=0,
    )


def libraw_postprocess(path: str | Path, **params: Any) -> np.ndarray:
    """LibRaw's own development of a Bayer RAW file, rawpy ``postprocess(**params)``.

    The one place bgl asks LibRaw to develop a file (SID's references, ``bgl develop --compare``):
    non-Bayer files are refused and errors name the file, as :func:`read_raw`'s do.
    """
    import rawpy

    with _open(path) as raw:
        try:
            cfa_layout(_visible_grid(raw, path), raw.color_desc, path)
            return raw.postprocess(**params)
        except rawpy.LibRawError as exc:
            raise RawReadError(
                path, f"cannot develop RAW data ({_reason(exc)}; truncated?)"
            ) from None
