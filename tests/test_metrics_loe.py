"""Lightness order error: hand-computed cases, the resizing, and loe.m written out literally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgl.metrics.loe import loe, order_flips
from tests.metric_references import load_basicsr

pytestmark = pytest.mark.usefixtures("single_thread")


def grey_row(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1) / 255


def test_reversed_order_flips_every_other_pixel() -> None:
    # lightness 10 < 20 < 30 becomes 30 > 20 > 10: each pixel's order flips against the other two
    got = loe(grey_row([30, 20, 10]), grey_row([10, 20, 30]), short_side=None)
    assert got.item() == pytest.approx(2.0)


def test_ties_count_as_greater_or_equal() -> None:
    # input [10, 10, 30] -> enhanced [10, 20, 30]: U(L0 >= L1) = 1 but U(Le0 >= Le1) = 0, the only
    # flip (pixel 0 vs 1); RD = [1, 0, 0], LOE = 1/3
    got = loe(grey_row([10, 20, 30]), grey_row([10, 10, 30]), short_side=None)
    assert got.item() == pytest.approx(1 / 3)


def test_lightness_is_the_channel_maximum() -> None:
    # RGB pixels whose maxima are 0.9, 0.5, 0.1 in the input and 0.1, 0.5, 0.9 enhanced
    inp = torch.tensor([[0.9, 0.0, 0.2], [0.1, 0.5, 0.0], [0.0, 0.0, 0.1]]).T.reshape(1, 3, 1, 3)
    enh = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.5, 0.2], [0.3, 0.9, 0.0]]).T.reshape(1, 3, 1, 3)
    assert loe(enh, inp, short_side=None).item() == pytest.approx(2.0)
    assert loe(inp, inp, short_side=None).item() == 0.0


def test_order_preserving_enhancements_score_zero() -> None:
    g = torch.Generator().manual_seed(0)
    dark = torch.rand(2, 3, 100, 120, generator=g, dtype=torch.float64) * 0.2
    # a global gain commutes with the resize, so it keeps every order of the 50x60 maps
    assert (loe(4 * dark, dark, quantize=False) == 0).all()
    # any monotone curve keeps the orders at full resolution
    small = dark[..., :30, :40]
    assert (loe((small / 0.2) ** 0.5, small, short_side=None, quantize=False) == 0).all()
    assert (loe(1 - dark, dark) > 1000).all()  # inverted: most orders flip


def test_maps_are_resized_to_50_on_the_short_side() -> None:
    x = torch.rand(1, 3, 50, 70, dtype=torch.float64)
    y = torch.rand(1, 3, 50, 70, dtype=torch.float64)
    assert loe(x, y).item() == loe(x, y, short_side=None).item()  # r = 1: untouched
    big_x = torch.rand(1, 3, 100, 140, dtype=torch.float64)
    big_y = torch.rand(1, 3, 100, 140, dtype=torch.float64)
    value = loe(big_x, big_y).item()
    assert 0 < value < 50 * 70  # at most every other pixel of a 50x70 map


def test_float_path_matches_loe_m_written_out() -> None:
    """loe.m: L = max over RGB, imresize(L, [Nd Md]), double loop of xor(>=, >=), mean."""
    _, matlab, _ = load_basicsr()
    rng = np.random.default_rng(1)
    inp, enh = rng.random((3, 100, 100)), rng.random((3, 100, 100)) ** 2
    ld = matlab.imresize(inp.max(axis=0) * 255, scale=0.5, antialiasing=True)
    led = matlab.imresize(enh.max(axis=0) * 255, scale=0.5, antialiasing=True)
    rd = np.zeros(ld.shape)
    for i in range(ld.shape[0]):
        for j in range(ld.shape[1]):
            rd[i, j] = np.sum((ld[i, j] >= ld) != (led[i, j] >= led))
    got = loe(torch.from_numpy(enh)[None], torch.from_numpy(inp)[None], quantize=False).item()
    assert got == pytest.approx(rd.mean(), abs=0.05)  # BasicSR resizes in float32: rare ties


def test_order_flips_chunks_agree_with_direct_count() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, (40, 60)), rng.integers(0, 5, (40, 60))
    direct = ((a.ravel()[:, None] >= a.ravel()) != (b.ravel()[:, None] >= b.ravel())).sum(1)
    np.testing.assert_array_equal(order_flips(a, b).ravel(), direct)


def test_bad_inputs() -> None:
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="shapes differ"):
        loe(x, x[..., :19])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loe(x * 255, x)
    with pytest.raises(ValueError, match="short_side"):
        loe(x, x, short_side=0)
