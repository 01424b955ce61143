"""PNG in and out: Pillow reads (DARK FACE, ACDC), a small encoder writes 8- and 16-bit RGB.

Why our own writer: Pillow cannot write 16-bit RGB PNGs, and ``bgl develop`` promises 16-bit
output for editing. PNG is simple enough: IHDR, zlib-compressed scanlines (each row "Sub"-filtered
for better compression), IEND.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from bgl.data.errors import DataError
from bgl.results.parquet import write_bytes

__all__ = ["png_size", "read_png", "write_png"]


def _open(path: str | Path):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a file")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "not an image file Pillow can read") from None
    except OSError as exc:
        raise DataError(path, f"cannot open image ({exc})") from None


def png_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header alone (no decoding)."""
    with _open(path) as image:
        return image.height, image.width


def read_png(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Decode an image: ``mode="RGB"`` -> (H, W, 3) uint8; ``mode="label"`` -> (H, W) ids.

    Label images keep their stored values (8-bit grey or palette indices, 16-bit grey); a colour
    image where labels are expected is an error, not a silent conversion.
    """
    with _open(path) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise DataError(path, f"cannot decode image ({exc})") from None
        if mode == "RGB":
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8)
        if mode == "label":
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(
                    path, f"a label image must be single-channel; got mode {image.mode}"
                )
            return np.asarray(image)
    raise ValueError(f"mode must be 'RGB' or 'label'; got {mode!r}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: str | Path, image: np.ndarray, level: int = 6) -> Path:
    """Write (H, W, 3) or (H, W) uint8/uint16 as an 8- or 16-bit PNG, atomically."""
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG pixels must be uint8 or uint16; got {image.dtype}")
    if image.ndim == 2:
        image, colour_type = image[..., None], 0
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError(f"PNG image must be (H, W) or (H, W, 3); got shape {image.shape}")
    height, width, channels = image.shape
    depth = 8 * image.dtype.itemsize
    rows = np.ascontiguousarray(image.astype(image.dtype.newbyteorder(">"))).view(np.uint8)
    rows = rows.reshape(height, width * channels * image.dtype.itemsize)
    bpp = channels * image.dtype.itemsize
    filtered = rows.copy()
    filtered[:, bpp:] -= rows[:, :-bpp]  # "Sub" filter, modulo 256
    scanlines = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), level))
        + _chunk(b"IEND", b"")
    )
    return write_bytes(path, data)
