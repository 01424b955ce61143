"""FSIM / FSIMc (FeatureSIM.m): properties, helpers, and piq's implementation as a cross-check.

piq ports the same MATLAB code; it differs in three documented details (lower median instead of
MATLAB's mean of the middle two, the low-pass filter's frequency grid for odd sizes, |.|^0.03
instead of real(.^0.03) for the chromatic term), which bound the agreement below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgl.metrics.fsim import _conv_same, _downsample, _median, fsim
from tests.metric_references import import_piq

pytestmark = pytest.mark.usefixtures("single_thread")


def smooth(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, max(h // 8, 2), max(w // 8, 2), generator=g, dtype=torch.float64)
    out = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return out.clamp(0, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


@pytest.mark.parametrize("channels", [3, 1])
def test_identical_images_give_one(channels: int) -> None:
    x = smooth(2, channels, 48, 64)
    torch.testing.assert_close(fsim(x, x), torch.ones(2, dtype=torch.float64))


def test_monotone_in_noise_and_blur() -> None:
    x = smooth(1, 3, 64, 64)
    scores = [fsim(noisy(x, s), x).item() for s in (0.01, 0.03, 0.08, 0.2)]
    assert scores == sorted(scores, reverse=True), scores
    blurred = [x]
    for _ in range(3):
        k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        blurred.append(torch.nn.functional.conv2d(blurred[-1], k, padding=1, groups=3))
    scores = [fsim(b, x).item() for b in blurred]
    assert scores == sorted(scores, reverse=True), scores


def test_symmetric_and_in_unit_interval() -> None:
    x = smooth(2, 3, 64, 64)
    y = noisy(x, 0.1)
    torch.testing.assert_close(fsim(x, y), fsim(y, x))
    assert ((fsim(x, y) > 0) & (fsim(x, y) < 1)).all()


@pytest.mark.parametrize(
    ("shape", "chromatic", "tol"),
    [
        ((2, 1, 64, 64), False, 2e-5),
        ((2, 3, 64, 64), False, 2e-5),
        ((2, 3, 64, 64), True, 1e-4),
        ((1, 3, 63, 65), True, 1e-4),
    ],
)
def test_close_to_piq(shape, chromatic: bool, tol: float) -> None:
    piq = import_piq()
    target = smooth(*shape)
    pred = noisy(target, 0.05)
    got = fsim(pred, target, chromatic=chromatic)
    ref = piq.fsim(pred, target, data_range=1.0, reduction="none", chromatic=chromatic)
    assert (got - ref).abs().max().item() < tol, (got, ref)
    assert (got - ref).abs().max().item() > 0  # a real second implementation, not a wrapper


def test_conv_same_is_matlabs() -> None:
    """MATLAB's documented conv(u, v, 'same') = [15 5 -9 7 6 7 -1] (even kernel: the window
    reaches forward, unlike scipy.signal.convolve2d(mode='same'))."""
    u = torch.tensor([[-1.0, 2, 3, -2, 0, 1, 2]], dtype=torch.float64)
    v = torch.tensor([[2.0, 4, -1, 1]], dtype=torch.float64)
    got = _conv_same(u[None], v)[0, 0]
    torch.testing.assert_close(got, torch.tensor([15.0, 5, -9, 7, 6, 7, -1], dtype=torch.float64))


def test_large_images_are_box_filtered_then_subsampled() -> None:
    """min side >= 384: F = round(min / 256), FeatureSIM.m's conv2 'same' box + 1:F:end."""
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(0).random((2, 17, 23))
    got = _downsample(torch.from_numpy(x), 3).numpy()  # odd F: scipy's 'same' is MATLAB's
    ref = np.stack([signal.convolve2d(im, np.ones((3, 3)) / 9, mode="same")[::3, ::3] for im in x])
    np.testing.assert_allclose(got, ref, atol=1e-12)
    got2 = _downsample(torch.from_numpy(x), 2).numpy()
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1)))  # F = 2 averages pixels (i, i+1) x (j, j+1)
    ref2 = (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:] + padded[:, 1:, 1:]) / 4
    np.testing.assert_allclose(got2, ref2[:, ::2, ::2], atol=1e-12)
    x = smooth(1, 1, 384, 392)
    assert 0.5 < fsim(noisy(x, 0.05), x).item() < 1.0


def test_median_is_matlab_median() -> None:
    x = torch.tensor([[4.0, 1.0, 3.0, 2.0], [5.0, 1.0, 2.0, 9.0]])
    torch.testing.assert_close(_median(x), torch.tensor([2.5, 3.5]))
    torch.testing.assert_close(_median(x[:, :3]), torch.tensor([3.0, 2.0]))


def test_flat_images() -> None:
    x = smooth(1, 3, 32, 32)
    flat = torch.full_like(x, 0.5)
    assert 0 < fsim(flat, x).item() < 1  # defined: the reference has structure
    assert torch.isnan(fsim(flat, flat)).all()  # both flat: no phase congruency anywhere


def test_bad_inputs() -> None:
    x = smooth(1, 3, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        fsim(x, x[..., :31])
    with pytest.raises(ValueError, match="channels"):
        fsim(x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fsim(x * 255, x * 255)
    with pytest.raises(ValueError, match="4-D"):
        fsim(x[0], x[0])
