"""Lightness order error (Wang, Zheng, Hu & Li, "Naturalness preserved enhancement", TIP 2013).

    L(x)   = max_c I^c(x)               lightness of the original (low-light input) image
    Le(x)  = max_c Ie^c(x)              lightness of the enhanced image
    RD(x)  = sum_y U(L(x), L(y)) xor U(Le(x), Le(y)),   U(a, b) = [a >= b]
    LOE    = mean_x RD(x)

i.e. for every pixel, the number of pixels whose lightness order relative to it flips between
the input and the enhanced image; lower is better (0: every order preserved). As in the paper
and the widely used `loe.m`, both lightness maps are first resized with MATLAB
imresize(bicubic) to round(r H) x round(r W), r = 50 / min(H, W), so LOE counts over about
50 x 50 pixels and scales with that size, not with the image's.

`quantize=True` (default) works on 8-bit data as `loe.m` does on images read from PNG: the
images are rounded to 8 bits, and the resized lightness maps are rounded and clipped to
[0, 255] after each resize pass, as MATLAB's imresize does for uint8. Ties matter here (dark
8-bit inputs have many equal pixels), so float data would give different counts.
"""

from __future__ import annotations

import numpy as np
import torch

from bgl.metrics._resize import imresize
from bgl.metrics._validate import check_images

#: Short side of the lightness maps LOE compares (Wang et al.'s d_l = 50).
SHORT_SIDE = 50


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def _resized(lightness: np.ndarray, short_side: int | None, uint8: bool) -> np.ndarray:
    if short_side is None:
        return lightness
    rows, cols = lightness.shape
    r = short_side / min(rows, cols)
    shape = (int(np.floor(rows * r + 0.5)), int(np.floor(cols * r + 0.5)))  # MATLAB round
    if shape == (rows, cols):
        return lightness  # MATLAB imresize to the same size is the identity
    return imresize(lightness, method="matlab", shape=shape, uint8=uint8)


def order_flips(reference: np.ndarray, enhanced: np.ndarray) -> np.ndarray:
    """RD(x) for every pixel of two equally sized lightness maps, shape (H, W)."""
    a = reference.ravel()
    b = enhanced.ravel()
    flips = np.zeros(a.size, dtype=np.int64)
    step = max(1, 2_000_000 // max(a.size, 1))  # bound the (chunk, N) comparison matrices
    for start in range(0, a.size, step):
        sl = slice(start, start + step)
        flips[sl] = ((a[sl, None] >= a[None, :]) != (b[sl, None] >= b[None, :])).sum(axis=1)
    return flips.reshape(reference.shape)


def loe(
    pred: torch.Tensor,
    reference: torch.Tensor,
    short_side: int | None = SHORT_SIDE,
    quantize: bool = True,
) -> torch.Tensor:
    """LOE of each enhanced image `pred` against the image it was enhanced from, shape (B,).

    `reference` is the original (low-light) input in the paper's definition; pass the
    ground truth instead to measure order errors against it. Images are (B, 1|3, H, W) in
    [0, 1] of equal size. `short_side=None` compares at full resolution.
    """
    check_images("loe", pred, reference)
    if short_side is not None and short_side < 1:
        raise ValueError(f"loe: short_side must be a positive integer or None, got {short_side}")
    p = pred.detach().to("cpu", torch.float64).numpy() * 255.0
    r = reference.detach().to("cpu", torch.float64).numpy() * 255.0
    if quantize:
        p, r = _round_half_away(p), _round_half_away(r)
    scores = []
    for enhanced, original in zip(p, r):
        le = _resized(enhanced.max(axis=0), short_side, quantize)
        lo = _resized(original.max(axis=0), short_side, quantize)
        scores.append(float(order_flips(lo, le).mean()))
    return torch.tensor(scores, dtype=torch.float64)
