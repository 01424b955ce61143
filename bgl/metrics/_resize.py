"""Bicubic resizing exactly as the reference implementations of the metrics do it.

No-reference metrics are sensitive to how an image is downscaled (their second scale is a 2x
reduction), and the models shipped with BRISQUE and NIQE were fitted on features from one specific
resizer. Each convention is written here as a per-axis weight matrix, so an image resizes as
`W_rows @ image @ W_cols.T` in float64:

- "matlab": MATLAB `imresize(..., 'bicubic')`: Keys kernel a = -0.5, widened by 1/scale when
  shrinking (antialiasing), out-of-range taps mirrored (symmetric padding).
- "pil": Pillow `Image.resize(..., BICUBIC)` (what `scipy.misc.imresize(mode='F')` called): the
  same widened kernel, but taps outside the image are dropped and the rest renormalised.
- "opencv": OpenCV `cv2.resize(..., INTER_CUBIC)`: a = -0.75, four taps, no antialiasing,
  border pixels replicated.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Method = Literal["matlab", "pil", "opencv"]


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2.0) * ax3 - (a + 3.0) * ax2 + 1.0
    far = a * ax3 - 5.0 * a * ax2 + 8.0 * a * ax - 4.0 * a
    return np.where(ax <= 1.0, near, np.where(ax < 2.0, far, 0.0))


def _matlab_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """MATLAB imresize `contributions` (bicubic, antialiasing on) as an (n_out, n_in) matrix."""
    width = 4.0
    if scale < 1.0:
        width = width / scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _keys_cubic(scale * x, -0.5)
    else:

        def kernel(x: np.ndarray) -> np.ndarray:
            return _keys_cubic(x, -0.5)

    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.repeat(np.arange(n_out), taps), idx0.ravel()), w.ravel())
    return out


def _pil_weights(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's bicubic resampling coefficients (ImagingResample precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        pos = np.arange(xmin, xmax, dtype=np.float64)
        w = _keys_cubic((pos - center + 0.5) / filterscale, -0.5)
        out[xx, xmin:xmax] = w / w.sum()
    return out


def _opencv_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """OpenCV INTER_CUBIC: src = (dst + 0.5) * scale - 0.5, 4 taps, indices clamped."""
    fx = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    sx = np.floor(fx)
    t = fx - sx
    offsets = np.arange(-1, 3)
    w = _keys_cubic(t[:, None] - offsets[None, :], -0.75)
    idx = np.clip(sx[:, None].astype(np.int64) + offsets[None, :], 0, n_in - 1)
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.repeat(np.arange(n_out), 4), idx.ravel()), w.ravel())
    return out


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def imresize(
    image: np.ndarray,
    *,
    method: Method,
    scale: float | None = None,
    shape: tuple[int, int] | None = None,
    uint8: bool = False,
) -> np.ndarray:
    """Resize a 2-D array by `scale` or to `shape` (rows, cols) with a reference convention.

    Output size for a `scale`: MATLAB ceil(scale * n), Pillow (via scipy.misc.imresize)
    floor(scale * n), OpenCV round-half-even(scale * n); the sampling step is 1/scale in all three
    (as when each library is handed the factor). `uint8=True` mimics MATLAB on a uint8 image:
    each pass is rounded half away from zero and clipped to [0, 255], as imresize keeps the class.
    """
    if image.ndim != 2:
        raise ValueError(f"imresize expects a 2-D array, got shape {image.shape}")
    if (scale is None) == (shape is None):
        raise ValueError("pass exactly one of scale and shape")
    n_rows, n_cols = image.shape
    if shape is not None:
        out_rows, out_cols = shape
        scales = (out_rows / n_rows, out_cols / n_cols)
    else:
        assert scale is not None
        size = {"matlab": math.ceil, "pil": math.floor, "opencv": round}[method]
        out_rows, out_cols = size(scale * n_rows), size(scale * n_cols)
        scales = (scale, scale)
    if min(out_rows, out_cols) < 1:
        raise ValueError(f"cannot resize a {n_rows}x{n_cols} image to {out_rows}x{out_cols}")

    def weights(n_in: int, n_out: int, s: float) -> np.ndarray:
        if method == "matlab":
            return _matlab_weights(n_in, n_out, s)
        if method == "pil":
            return _pil_weights(n_in, n_out)
        return _opencv_weights(n_in, n_out, 1.0 / s)

    out = np.asarray(image, dtype=np.float64)
    # MATLAB resizes the dimension with the smaller scale first (stable sort: rows on ties)
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        n_out = (out_rows, out_cols)[axis]
        w = weights(out.shape[axis], n_out, scales[axis])
        out = w @ out if axis == 0 else out @ w.T
        if uint8:
            out = np.clip(_round_half_away(out), 0.0, 255.0)
    return out
