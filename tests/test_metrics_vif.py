"""VIF-P through torchmetrics on 8-bit-scaled luma, cross-checked against piq's vif_p."""

from __future__ import annotations

import pytest
import torch

from bgl.metrics.vif import luma, vif
from tests.metric_references import import_piq

pytestmark = pytest.mark.usefixtures("single_thread")


def pair(channels: int, size: int = 64, noise: float = 0.08, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, channels, size // 8, size // 8, generator=g, dtype=torch.float64)
    target = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)
    pred = (target + noise * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(
        0, 1
    )
    return pred, target


@pytest.mark.parametrize("channels", [3, 1])
def test_matches_piq(channels: int) -> None:
    piq = import_piq()
    pred, target = pair(channels)
    got = vif(pred, target)
    assert got.shape == (2,)
    ref = piq.vif_p(pred, target, data_range=1.0, reduction="none")
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_identity_noise_and_float32() -> None:
    pred, target = pair(3)
    torch.testing.assert_close(vif(target, target), torch.ones(2, dtype=torch.float64))
    noisier, _ = pair(3, noise=0.2)
    assert (vif(noisier, target) < vif(pred, target)).all()
    torch.testing.assert_close(
        vif(pred.float(), target.float()), vif(pred, target), rtol=1e-5, atol=1e-6
    )


def test_colour_is_scored_on_luma() -> None:
    pred, target = pair(3)
    torch.testing.assert_close(vif(pred, target), vif(luma(pred), luma(target)))


def test_bad_inputs() -> None:
    pred, target = pair(3)
    with pytest.raises(ValueError, match="at least 41x41"):
        vif(pred[..., :40, :], target[..., :40, :])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vif(pred * 255, target * 255)
    with pytest.raises(ValueError, match="shapes differ"):
        vif(pred, target[:1])
