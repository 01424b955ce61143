"""Per-image PSNR / SSIM, cross-checked against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bgl.metrics import psnr, ssim


def pair(b: int, c: int, h: int, w: int, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    pred = (target + noise * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def test_psnr_per_image_matches_skimage() -> None:
    pred, target = pair(3, 3, 32, 40)
    pred[1] = (target[1] + 0.01).clamp(0, 1)  # images of very different quality
    got = psnr(pred, target)
    assert got.shape == (3,)
    for i in range(3):
        ref = peak_signal_noise_ratio(to_hwc(target[i]), to_hwc(pred[i]), data_range=1)
        # torchmetrics evaluates 10 / ln(10) in float32: agreement to ~1e-7 relative
        assert got[i].item() == pytest.approx(ref, abs=1e-5)


def test_psnr_is_per_image_not_of_concatenation() -> None:
    pred, target = pair(2, 3, 16, 16)
    pred[0] = (target[0] + 0.001).clamp(0, 1)
    per_image = psnr(pred, target).mean().item()
    pooled = 10 * math.log10(1 / float(((pred - target) ** 2).mean()))
    assert abs(per_image - pooled) > 1.0


def test_psnr_float32() -> None:
    pred, target = pair(2, 3, 16, 16)
    got = psnr(pred.float(), target.float())
    torch.testing.assert_close(got, psnr(pred, target).float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_per_image_matches_skimage(channels: int) -> None:
    pred, target = pair(2, channels, 48, 36, noise=0.15)
    got = ssim(pred, target)
    assert got.shape == (2,)
    for i in range(2):
        kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
        if channels == 3:
            ref = structural_similarity(
                to_hwc(pred[i]), to_hwc(target[i]), channel_axis=2, **kwargs
            )
        else:
            ref = structural_similarity(pred[i, 0].numpy(), target[i, 0].numpy(), **kwargs)
        assert got[i].item() == pytest.approx(ref, abs=1e-6)


def test_ssim_float32_close_to_skimage() -> None:
    pred, target = pair(1, 3, 32, 32)
    got = ssim(pred.float(), target.float()).item()
    ref = structural_similarity(
        to_hwc(pred[0]), to_hwc(target[0]), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1, channel_axis=2,
    )  # fmt: skip
    assert got == pytest.approx(ref, abs=1e-4)


def test_identical_images() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_input_validation(fn) -> None:
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="4-D"):
        fn(x[0], x[0])
    with pytest.raises(ValueError, match="shapes differ"):
        fn(x, torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match="channels"):
        fn(torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16))


def test_ssim_needs_window_sized_images() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 16), torch.rand(1, 3, 10, 16))
