"""BRISQUE with LIVE's SVR from the PyPI `brisque` wheel, against that package's own code path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgl.metrics import _nss
from bgl.metrics._packages import package_file
from bgl.metrics.brisque import MATLAB_GRAY, brisque, brisque_features, load_model
from tests.metric_references import (
    brisque_package_score,
    load_basicsr,
    natural_image,
    to_tensor,
)

pytestmark = pytest.mark.usefixtures("single_thread")

IMAGES = [("astronaut", (96, 96), (40, 180)), ("chelsea", (64, 80), (100, 150))]


@pytest.mark.parametrize(("name", "size", "offset"), IMAGES)
def test_pypi_features_match_the_package(name: str, size, offset) -> None:
    image = natural_image(name, size, offset)
    ref = brisque_package_score(image)
    got = brisque(to_tensor(image), features="pypi").item()
    assert got == pytest.approx(ref, abs=1e-6)


def test_svr_matches_libsvm_on_the_same_features() -> None:
    svmutil = pytest.importorskip("libsvm.svmutil")
    model = load_model()
    svm = svmutil.svm_load_model(str(model_path("svm.txt")))
    rng = np.random.default_rng(0)
    for _ in range(3):
        features = model.low + rng.random(36) * (model.high - model.low)
        x, _ = svmutil.gen_svm_nodearray([float(v) for v in model.scale(features)])
        prob = (svmutil.c_double * 1)()
        ref = svmutil.libsvm.svm_predict_probability(svm, x, prob)
        assert model.predict(features) == pytest.approx(ref, abs=1e-9)


def model_path(name: str):
    return package_file("brisque", f"models/{name}", distribution="brisque", install="")


def test_live_features_give_plausible_ordered_scores() -> None:
    """Natural image < its noisy and its blurred versions (lower is better)."""
    x = to_tensor(natural_image("astronaut", (96, 96), (40, 180)))
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.08 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    k = torch.ones(3, 1, 5, 5, dtype=x.dtype) / 25
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (2,) * 4, "replicate"), k, groups=3
    )
    clean, bad, soft = brisque(torch.cat([x, noisy, blurred])).tolist()
    assert 0 < clean < 60
    assert bad > clean + 10 and soft > clean + 10


def brisque_feature_m(image: np.ndarray, imresize) -> np.ndarray:
    """LIVE's brisque_feature.m / estimate(a)ggdparam.m written out literally (independent code)."""
    from scipy.signal import correlate2d
    from scipy.special import gamma

    gam = np.arange(0.2, 10.0005, 0.001)
    window = np.exp(
        -(np.arange(-3, 4)[:, None] ** 2 + np.arange(-3, 4)[None, :] ** 2) / (2 * (7 / 6) ** 2)
    )
    window /= window.sum()
    feat = []
    for _ in range(2):
        mu = correlate2d(image, window, mode="same")
        sigma = np.sqrt(np.abs(correlate2d(image * image, window, mode="same") - mu * mu))
        s = (image - mu) / (sigma + 1)
        vec = s.ravel(order="F")
        r_gam = gamma(1 / gam) * gamma(3 / gam) / gamma(2 / gam) ** 2
        sigma_sq = np.mean(vec**2)
        feat += [gam[np.argmin(np.abs(sigma_sq / np.mean(np.abs(vec)) ** 2 - r_gam))], sigma_sq]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            pair = vec * np.roll(s, shift, axis=(0, 1)).ravel(order="F")
            left, right = (
                np.sqrt(np.mean(pair[pair < 0] ** 2)),
                np.sqrt(np.mean(pair[pair > 0] ** 2)),
            )
            g = left / right
            rhat = np.mean(np.abs(pair)) ** 2 / np.mean(pair**2)
            rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
            alpha = gam[
                np.argmin((gamma(2 / gam) ** 2 / (gamma(1 / gam) * gamma(3 / gam)) - rnorm) ** 2)
            ]
            const = np.sqrt(gamma(1 / alpha)) / np.sqrt(gamma(3 / alpha))
            feat += [
                alpha,
                (right - left) * (gamma(2 / alpha) / gamma(1 / alpha)) * const,
                left**2,
                right**2,
            ]
        image = imresize(image / 255, scale=0.5, antialiasing=True).astype(np.float64) * 255
    return np.asarray(feat)


def test_live_features_match_brisque_feature_m() -> None:
    _, matlab, _ = load_basicsr()
    image = natural_image("chelsea", (64, 80), (100, 150)).astype(np.float64)
    grey = np.floor(image @ np.asarray(MATLAB_GRAY) + 0.5)  # rgb2gray of uint8
    ref = brisque_feature_m(grey, matlab.imresize)
    got = brisque_features(grey, "live")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)  # BasicSR resizes in float32
    x = torch.from_numpy(image).permute(2, 0, 1)[None] / 255
    assert brisque(x).item() == pytest.approx(load_model().predict(ref), abs=0.05)
    assert abs(brisque(x).item() - brisque(x, features="pypi").item()) > 1  # really different


def test_ggd_table_fit_recovers_known_shapes() -> None:
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal(200_000)
    laplace = rng.laplace(size=200_000)
    assert _nss.ggd_fit(gauss)[0] == pytest.approx(2.0, abs=0.05)
    assert _nss.ggd_fit(laplace)[0] == pytest.approx(1.0, abs=0.05)
    assert _nss.ggd_fit(gauss)[1] == pytest.approx(np.mean(gauss**2))
    # the asymmetric fit of a symmetric sample agrees; table and root solutions agree
    a_grid, left, right = _nss.aggd_fit(laplace, right="positive", solver="matlab-grid")
    a_root, _, _ = _nss.aggd_fit(laplace, right="positive", solver="root")
    assert a_grid == pytest.approx(1.0, abs=0.05) and abs(a_grid - a_root) < 1e-3
    assert left == pytest.approx(right, rel=0.02)


def test_rho_is_the_ggd_moment_ratio() -> None:
    assert _nss.rho(2.0) == pytest.approx(2 / math.pi)  # Gaussian: (E|x|)^2 / E x^2
    assert _nss.rho(1.0) == pytest.approx(0.5)  # Laplace


def test_flat_image_is_undefined_and_grey_accepted() -> None:
    flat = torch.full((1, 3, 32, 32), 0.4)
    assert torch.isnan(brisque(flat)).all()
    grey = to_tensor(natural_image("astronaut", (64, 64), (40, 180)))[:, :1]
    assert torch.isfinite(brisque(grey)).all()


def test_bad_inputs() -> None:
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 14x14"):
        brisque(x[..., :13, :])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brisque(x * 255)
    with pytest.raises(ValueError, match="channels"):
        brisque(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="'live' or 'pypi'"):
        brisque(x, features="matlab")  # type: ignore[arg-type]


def test_missing_package_says_how_to_install() -> None:
    with pytest.raises(FileNotFoundError, match="pip install nothing-here"):
        package_file(
            "no_such_pkg_bgl",
            "x.txt",
            distribution="no-such-pkg",
            install="pip install nothing-here",
        )
