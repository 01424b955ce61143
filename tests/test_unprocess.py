"""Unprocessing (Brooks et al. 2019): closed forms, distributions, noise statistics, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgl.raw.bayer import packed_to_rgb
from bgl.raw.unprocess import (
    BROOKS_SHOT_RANGE,
    DEFAULT_RATIO_RANGE,
    DEFAULT_SHOT_RANGE,
    RGB2XYZ,
    XYZ2CAMS,
    add_noise,
    apply_ccm,
    gamma_expansion,
    inverse_smoothstep,
    random_ccm,
    random_gains,
    random_noise_levels,
    safe_invert_gains,
    synthesize_low_light,
    unprocess,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inverse_smoothstep_inverts_smoothstep() -> None:
    x = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    smooth = 3 * x**2 - 2 * x**3
    assert torch.allclose(inverse_smoothstep(smooth), x, atol=1e-9)
    y = inverse_smoothstep(x)
    assert torch.allclose(3 * y**2 - 2 * y**3, x, atol=1e-12)
    assert inverse_smoothstep(torch.tensor([-0.5, 1.5])).tolist() == [0.0, 1.0]  # clipped


def test_gamma_expansion_inverts_gamma() -> None:
    x = torch.linspace(1e-4, 1.0, 1000, dtype=torch.float64)
    assert torch.allclose(gamma_expansion(x ** (1 / 2.2)), x, rtol=1e-10, atol=0)
    assert torch.isfinite(gamma_expansion(torch.zeros(3))).all()


def _normalised_camera_matrices() -> np.ndarray:
    rgb2xyz = np.array(RGB2XYZ)
    mats = np.array([np.array(m) @ rgb2xyz for m in XYZ2CAMS])
    sums = mats.sum(axis=2, keepdims=True)
    assert (sums > 0).all()
    return mats / sums


def test_random_ccm_rows_sum_to_one_invertible_and_inside_hull() -> None:
    ccm = random_ccm(256, gen(0), dtype=torch.float64)
    assert ccm.shape == (256, 3, 3)
    assert torch.allclose(ccm.sum(dim=-1), torch.ones(256, 3, dtype=torch.float64), atol=1e-12)
    assert (torch.linalg.det(ccm).abs() > 1e-3).all()
    assert (torch.linalg.cond(ccm) < 100).all()
    # Each normalised row is a convex combination of the four cameras' normalised rows, so every
    # entry lies between the smallest and largest of those cameras' entries.
    cams = _normalised_camera_matrices()
    low = torch.from_numpy(cams.min(axis=0))
    high = torch.from_numpy(cams.max(axis=0))
    assert (ccm >= low - 1e-12).all() and (ccm <= high + 1e-12).all()
    # ...and the draws spread over that hull rather than sitting on one camera.
    assert (ccm.std(dim=0) > 0.1 * (high - low)).all()


def test_random_gains_in_range() -> None:
    rgb_gain, red_gain, blue_gain = random_gains(4000, gen(1))
    assert ((red_gain >= 1.9) & (red_gain <= 2.4)).all()
    assert ((blue_gain >= 1.5) & (blue_gain <= 1.9)).all()
    assert red_gain.min() < 1.92 and red_gain.max() > 2.38
    assert blue_gain.min() < 1.52 and blue_gain.max() > 1.88
    inverse = 1.0 / rgb_gain.double()
    assert abs(inverse.mean().item() - 0.8) < 0.01
    assert abs(inverse.std().item() - 0.1) < 0.01


def test_apply_ccm_matches_matmul() -> None:
    image = torch.rand((2, 3, 4, 5), generator=gen(2), dtype=torch.float64)
    ccm = torch.rand((2, 3, 3), generator=gen(3), dtype=torch.float64)
    out = apply_ccm(image, ccm)
    for b in range(2):
        expected = (ccm[b] @ image[b].reshape(3, -1)).reshape(3, 4, 5)
        assert torch.allclose(out[b], expected)
    shared = (ccm[0] @ image[1].reshape(3, -1)).view(3, 4, 5)
    assert torch.allclose(apply_ccm(image, ccm[0])[1], shared)


def test_safe_invert_gains_dark_bright_and_saturated() -> None:
    rgb_gain, red, blue = 1.25, 2.0, 1.6
    inverse = torch.tensor([1 / (red * rgb_gain), 1 / rgb_gain, 1 / (blue * rgb_gain)])
    dark = torch.rand((1, 3, 8, 8), generator=gen(4)) * 0.9  # mean <= 0.9: no highlight blend
    out = safe_invert_gains(dark, rgb_gain, red, blue)
    assert torch.allclose(out, dark * inverse.view(1, 3, 1, 1))

    white = torch.ones(1, 3, 2, 2)
    assert torch.allclose(safe_invert_gains(white, rgb_gain, red, blue), white)

    bright = torch.full((1, 3, 1, 1), 0.95)  # grey 0.95 -> mask ((0.95-0.9)/0.1)^2 = 0.25
    expected = 0.95 * (0.25 + 0.75 * inverse)
    assert torch.allclose(safe_invert_gains(bright, rgb_gain, red, blue).flatten(), expected)
    assert (safe_invert_gains(bright, rgb_gain, red, blue).flatten() > 0.95 * inverse).all()

    # A gain above 1 (rgb_gain < 1) is kept, never reduced by the blend.
    out = safe_invert_gains(white, 0.8, red, blue)
    assert torch.allclose(out[0, 1], torch.full((2, 2), 1.25))
    # Per-image gains broadcast over a batch.
    batch = torch.full((2, 3, 1, 1), 0.5)
    out = safe_invert_gains(batch, torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), 1.0)
    assert torch.allclose(out[:, 1].flatten(), torch.tensor([0.5, 0.25]))


def _process(raw: torch.Tensor, meta: dict[str, torch.Tensor]) -> np.ndarray:
    """A forward camera pipeline written independently, for spatially constant images."""
    cam = raw.double().mean(dim=(2, 3)).numpy()  # (B,4): R, G, B, G2
    out = []
    for b in range(cam.shape[0]):
        rgb_gain = meta["rgb_gain"][b].item()
        r = cam[b, 0] * meta["red_gain"][b].item() * rgb_gain
        g = 0.5 * (cam[b, 1] + cam[b, 3]) * rgb_gain
        bl = cam[b, 2] * meta["blue_gain"][b].item() * rgb_gain
        lin = meta["cam2rgb"][b].double().numpy() @ np.array([r, g, bl])
        srgb = np.clip(lin, 0, 1) ** (1 / 2.2)
        out.append(3 * srgb**2 - 2 * srgb**3)
    return np.array(out)


def test_unprocess_inverts_a_forward_pipeline() -> None:
    colours = torch.tensor([[0.2, 0.4, 0.3], [0.5, 0.5, 0.5], [0.6, 0.3, 0.2], [0.1, 0.1, 0.6]])
    rgb = colours.double().view(4, 3, 1, 1).expand(4, 3, 6, 6).contiguous()
    raw, meta = unprocess(rgb, gen(5))
    assert raw.shape == (4, 4, 3, 3) and raw.dtype == torch.float64
    assert set(meta) == {"cam2rgb", "rgb_gain", "red_gain", "blue_gain"}
    assert np.allclose(_process(raw, meta), colours.double().numpy(), atol=1e-6)


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "BGGR", "GBRG"])
def test_unprocess_range_and_pattern(pattern: str) -> None:
    rgb = torch.rand((2, 3, 8, 8), generator=gen(6))
    raw, _ = unprocess(rgb, gen(7), pattern=pattern)
    assert raw.shape == (2, 4, 4, 4) and raw.dtype == torch.float32
    assert raw.min() >= 0 and raw.max() <= 1


def test_seeding_and_per_image_parameters() -> None:
    rgb = torch.rand((4, 3, 8, 8), generator=gen(8))
    a, meta_a = unprocess(rgb, gen(9))
    b, _ = unprocess(rgb, gen(9))
    c, _ = unprocess(rgb, gen(10))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    for key in ("rgb_gain", "red_gain", "blue_gain"):
        assert len(set(meta_a[key].tolist())) == 4
    assert not torch.allclose(meta_a["cam2rgb"][0], meta_a["cam2rgb"][1])
    # The same scene four times still gets four different cameras.
    same = rgb[:1].expand(4, -1, -1, -1)
    raw, _ = unprocess(same, gen(11))
    assert not torch.allclose(raw[0], raw[1])

    x = synthesize_low_light(rgb, gen(12))["raw"]
    assert torch.equal(x, synthesize_low_light(rgb, gen(12))["raw"])
    assert not torch.allclose(x, synthesize_low_light(rgb, gen(13))["raw"])


def test_noise_levels_distribution() -> None:
    shot, read = random_noise_levels(4000, gen(14), BROOKS_SHOT_RANGE, dtype=torch.float64)
    assert shot.shape == read.shape == (4000,)
    lo, hi = BROOKS_SHOT_RANGE
    assert (shot >= lo).all() and (shot <= hi).all()
    log_shot = shot.log()
    assert abs(log_shot.mean().item() - 0.5 * (math.log(lo) + math.log(hi))) < 0.1
    residual = read.log() - (2.18 * log_shot + 1.20)
    assert abs(residual.mean().item()) < 0.02
    assert abs(residual.std().item() - 0.26) < 0.015


def test_add_noise_variance_matches_model() -> None:
    x = 0.3
    raw = torch.full((2, 4, 128, 128), x, dtype=torch.float64)
    shot = torch.tensor([0.01, 0.002], dtype=torch.float64)
    read = torch.tensor([1e-3, 2e-4], dtype=torch.float64)
    noisy = add_noise(raw, shot, read, gen(15))
    expected = x * shot + read
    variance = noisy.flatten(1).var(dim=1)
    assert torch.allclose(variance, expected, rtol=0.03)
    mean = noisy.flatten(1).mean(dim=1)
    assert torch.allclose(mean, torch.full((2,), x, dtype=torch.float64), atol=3e-3)
    # Heteroscedastic: a brighter pixel gets proportionally more shot noise.
    bright = add_noise(torch.full((1, 1, 256, 256), 0.9), 0.01, 0.0, gen(16))
    assert abs(bright.var().item() - 0.009) < 0.0004


def test_synthesize_low_light_shapes_range_and_ratio() -> None:
    rgb = torch.rand((6, 3, 16, 16), generator=gen(17))
    out = synthesize_low_light(rgb, gen(18), ratio_range=(10.0, 300.0), shot_range=(1e-5, 1e-4))
    assert set(out) == {"raw", "rgb", "ratio", "cam2rgb", "rgb_gain", "red_gain", "blue_gain"}
    assert out["cam2rgb"].shape == (6, 3, 3) and out["red_gain"].shape == (6,)
    assert out["raw"].shape == (6, 4, 8, 8) and out["raw"].dtype == torch.float32
    assert out["raw"].min() >= 0 and out["raw"].max() <= 1
    assert out["rgb"] is rgb
    assert out["ratio"].shape == (6,)
    assert ((out["ratio"] >= 10) & (out["ratio"] <= 300)).all()
    assert len(set(out["ratio"].tolist())) == 6
    # float64 in, float64 out.
    assert synthesize_low_light(rgb.double(), gen(18))["raw"].dtype == torch.float64


def test_defaults_are_documented_values() -> None:
    assert DEFAULT_RATIO_RANGE[0] >= 1 and DEFAULT_RATIO_RANGE[0] <= DEFAULT_RATIO_RANGE[1]
    assert BROOKS_SHOT_RANGE == (1e-4, 0.012)
    assert DEFAULT_SHOT_RANGE[1] < BROOKS_SHOT_RANGE[1]


def test_larger_ratio_is_noisier() -> None:
    rgb = torch.rand((8, 3, 32, 32), generator=gen(19)) * 0.8
    clean, _ = unprocess(rgb, gen(20))  # synthesize draws the same camera first
    errors = []
    for ratio in (5.0, 50.0, 300.0):
        out = synthesize_low_light(
            rgb, gen(20), ratio_range=(ratio, ratio), shot_range=(1e-4, 1e-4)
        )
        assert torch.allclose(out["ratio"], torch.full((8,), ratio))
        errors.append(((out["raw"] - clean) ** 2).mean().item())
    assert errors[0] < errors[1] < errors[2]
    # Mostly shot noise here: amplified variance ~ ratio * x * shot, so roughly x10 per step.
    assert errors[1] > 4 * errors[0]

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return 10 * math.log10(1.0 / ((a - b) ** 2).mean().item())

    view_clean = packed_to_rgb(clean).clamp(0, 1) ** (1 / 2.2)
    low = synthesize_low_light(rgb, gen(20), ratio_range=(10, 10), shot_range=(1e-4, 1e-4))
    high = synthesize_low_light(rgb, gen(20), ratio_range=(200, 200), shot_range=(1e-4, 1e-4))
    p_low = psnr(packed_to_rgb(low["raw"]).clamp(0, 1) ** (1 / 2.2), view_clean)
    p_high = psnr(packed_to_rgb(high["raw"]).clamp(0, 1) ** (1 / 2.2), view_clean)
    assert p_low > p_high + 5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ratio_range": (0.5, 2.0)}, "ratio_range"),
        ({"ratio_range": (10.0, 5.0)}, "ratio_range"),
        ({"shot_range": (0.0, 1e-3)}, "shot_range"),
        ({"shot_range": (1e-3,)}, "shot_range"),
    ],
)
def test_bad_ranges_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        synthesize_low_light(torch.rand(1, 3, 4, 4), gen(0), **kwargs)
