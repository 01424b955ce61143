"""Physics-based noise (ELD, Wei et al. 2020): moments against closed forms, Poisson counts, row
structure in mosaic space, the ADC grid, seeding, argument checks and the wiring into
synthesize_low_light, SyntheticLowLight and the config's ``data.noise``.

Tolerances are z-scores of the estimators' own sampling distributions (computed from the model's
cumulants below), not fudge factors: every check allows Z standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from bgl.config import ConfigError, from_dict
from bgl.data.splits import build_splits
from bgl.data.synthetic import SyntheticLowLight
from bgl.raw.bayer import PATTERNS, unpack
from bgl.raw.noise import (
    DEFAULT_BITS,
    NOISE_MODELS,
    ROW_READ_RATIO,
    PhysicsLevels,
    add_physics_noise,
    physics_levels,
    quantize,
)
from bgl.raw.unprocess import synthesize_low_light

Z = 5.0  # standard errors allowed per check (two-sided p ~ 6e-7)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(levels: list[float], per_level: int, h: int, w: int) -> torch.Tensor:
    """(len(levels) * per_level, 4, h, w) float64 images, each flat at one level."""
    values = torch.tensor(levels, dtype=torch.float64).repeat_interleave(per_level)
    return values.view(-1, 1, 1, 1).expand(-1, 4, h, w).clone()


def test_variance_matches_closed_form_and_linear_fit() -> None:
    gain, read_std, row_std, bits = 1e-3, 1e-2, 5e-3, 6
    step = 1.0 / (2**bits - 1)
    signals = [0.0, 0.02, 0.05, 0.1, 0.3, 0.6, 0.9]
    per_level, h, w = 8, 256, 16
    dark = flat(signals, per_level, h, w)
    out = add_physics_noise(dark, PhysicsLevels(gain, read_std, row_std), gen(0), bits=bits)
    err = (out - dark).view(len(signals), -1)  # per level, deviation from the known mean
    observed = (err**2).mean(dim=1)  # variance estimate about the known mean s

    s = torch.tensor(signals, dtype=torch.float64)
    v_row = row_std**2
    v_pix = gain * s + read_std**2 + step**2 / 12  # independent per-pixel part
    expected = v_pix + v_row
    # Var of the estimate: rows are independent; a mosaic row holds n = 2w pixels sharing one
    # offset r. Per row, mean (e + r)^2 has variance (2 v^2 + k4 + 4 v v_row) / n + 2 v_row^2,
    # where k4 (4th cumulant of e) = K^3 s (Poisson) - step^4 / 120 (uniform rounding error).
    rows, n = per_level * 2 * h, 2 * w
    k4 = gain**3 * s - step**4 / 120
    var_est = ((2 * v_pix**2 + k4 + 4 * v_pix * v_row) / n + 2 * v_row**2) / rows
    se = var_est.sqrt()
    assert ((observed - expected).abs() <= Z * se).all(), (observed, expected, se)
    # the mean is the signal (Poisson, read, row and rounding are all unbiased)
    mean_se = ((v_pix / n + v_row) / rows).sqrt()
    assert ((err.mean(dim=1)).abs() <= Z * mean_se).all()

    # OLS fit: slope -> K, intercept -> read^2 + row^2 + step^2/12; SEs by propagating var_est.
    centred = s - s.mean()
    c_slope = centred / (centred**2).sum()
    c_icept = 1.0 / len(signals) - s.mean() * c_slope
    slope, intercept = (c_slope * observed).sum(), (c_icept * observed).sum()
    slope_se = (c_slope**2 * var_est).sum().sqrt()
    icept_se = (c_icept**2 * var_est).sum().sqrt()
    assert abs(slope - gain) <= Z * slope_se, (slope, slope_se)
    constant = read_std**2 + row_std**2 + step**2 / 12
    assert abs(intercept - constant) <= Z * icept_se, (intercept, constant, icept_se)
    # the fit would miss either small constant term (row noise, rounding) by over 2Z SEs
    assert min(step**2 / 12, row_std**2) > 2 * Z * icept_se


def test_per_image_levels_apply_to_their_own_image() -> None:
    dark = flat([0.2, 0.2], 1, 128, 128)
    gains = torch.tensor([1e-4, 1e-2])
    out = add_physics_noise(dark, PhysicsLevels(gains, 0.0, 0.0), gen(1), bits=None)
    var = (out - dark).flatten(1).pow(2).mean(dim=1)
    expected = gains.double() * 0.2
    n = 4 * 128 * 128
    se = ((2 * expected**2 + gains.double() ** 3 * 0.2) / n).sqrt()  # Poisson 4th cumulant K^3 s
    assert ((var - expected).abs() <= Z * se).all()


def test_shot_noise_is_poisson_counts() -> None:
    gain, signal = 1e-3, 2.5e-3  # lam = 2.5 electrons: discreteness is visible
    lam = signal / gain
    dark = torch.full((4, 4, 128, 128), signal, dtype=torch.float64)
    out = add_physics_noise(dark, PhysicsLevels(gain, 0.0, 0.0), gen(2), bits=None)
    counts = out / gain
    assert torch.allclose(counts, counts.round(), atol=1e-9, rtol=0)  # integers
    counts = counts.round().flatten()
    n = counts.numel()
    assert counts.min() >= 0
    assert abs(counts.mean().item() - lam) <= Z * math.sqrt(lam / n)
    # Var of the sample variance for Poisson: (mu4 - sigma^4) / n = (lam + 2 lam^2) / n
    assert abs(counts.var().item() - lam) <= Z * math.sqrt((lam + 2 * lam**2) / n)
    for k in range(5):  # the pmf, count by count
        p = math.exp(-lam) * lam**k / math.factorial(k)
        freq = (counts == k).double().mean().item()
        assert abs(freq - p) <= Z * math.sqrt(p * (1 - p) / n), (k, freq, p)


def test_row_offsets_are_shared_along_mosaic_rows_only() -> None:
    gain, read_std, row_std = 1e-4, 1e-2, 1e-2
    batch, h, w = 4, 128, 128
    dark = torch.full((batch, 4, h, w), 0.3, dtype=torch.float64)
    out = add_physics_noise(dark, PhysicsLevels(gain, read_std, row_std), gen(3), bits=None)
    mosaic = unpack(out - dark)[:, 0]  # (B, 2h, 2w), computed by bayer.unpack, not noise.py
    width = mosaic.shape[-1]

    row_means = mosaic.mean(dim=-1).flatten()  # B * 2h independent rows
    within = mosaic.var(dim=-1).mean().item()  # within-row variance (offsets cancel)
    expected = row_std**2 + within / width
    observed = (row_means**2).mean().item()  # about the known mean 0
    assert abs(observed - expected) <= Z * expected * math.sqrt(2 / row_means.numel())
    assert within == pytest.approx(gain * 0.3 + read_std**2, rel=0.02)

    # Columns: within an image, column means differ only by pixel noise (no column offsets).
    col_means = mosaic.mean(dim=-2)  # (B, 2w)
    col_var = col_means.var(dim=-1).mean().item()
    dof = batch * (col_means.shape[-1] - 1)
    expected_col = within / mosaic.shape[-2]
    assert abs(col_var - expected_col) <= Z * expected_col * math.sqrt(2 / dof)
    assert col_var < row_std**2 / 50

    # Packed view: R and G (same mosaic row) share the offset, B and G2 share the other one;
    # correlation of per-row means = row^2 / (row^2 + pixel variance / w) if shared, else 0.
    packed_means = (out - dark).mean(dim=-1)  # (B, 4, h)
    pixel_var = gain * 0.3 + read_std**2
    rho = row_std**2 / (row_std**2 + pixel_var / w)
    count = batch * h

    def corr(a: int, b: int) -> float:
        x, y = packed_means[:, a].flatten(), packed_means[:, b].flatten()
        return torch.corrcoef(torch.stack([x, y]))[0, 1].item()

    shared_se, free_se = (1 - rho**2) / math.sqrt(count), 1 / math.sqrt(count)
    assert abs(corr(0, 1) - rho) <= Z * shared_se  # R, G
    assert abs(corr(2, 3) - rho) <= Z * shared_se  # B, G2
    for a, b in ((0, 2), (0, 3), (1, 2), (1, 3)):  # the two mosaic rows of a packed row differ
        assert abs(corr(a, b)) <= Z * free_se


def test_row_noise_lives_in_mosaic_space_for_every_pattern() -> None:
    # Zero signal, no read noise: each mosaic row is one constant, rows differ, and the row field
    # on the mosaic is the same whatever the CFA layout (mosaic row j gets draw j).
    dark = torch.zeros((2, 4, 8, 6), dtype=torch.float64)
    levels = PhysicsLevels(1e-3, 0.0, 0.01)
    mosaics = []
    for pattern in PATTERNS:
        out = add_physics_noise(dark, levels, gen(4), bits=None, pattern=pattern)
        mosaic = unpack(out, pattern)[:, 0]
        assert torch.equal(mosaic, mosaic[..., :1].expand_as(mosaic))  # constant along rows
        assert (mosaic[:, 1:, 0] != mosaic[:, :-1, 0]).all()  # every row its own offset
        mosaics.append(mosaic)
    for mosaic in mosaics[1:]:
        assert torch.equal(mosaic, mosaics[0])


def test_quantize_grid_and_uniform_error() -> None:
    bits = 8
    step = 1.0 / (2**bits - 1)
    x = torch.rand(200_000, generator=gen(5), dtype=torch.float64) * 0.7 + 0.1
    q = quantize(x, bits)
    assert torch.allclose(q / step, (q / step).round(), atol=1e-9, rtol=0)
    err = q - x
    assert err.abs().max() <= step / 2 + 1e-12
    n = err.numel()
    assert abs(err.mean().item()) <= Z * math.sqrt(step**2 / 12 / n)
    # Var of the sample variance of U(-d/2, d/2): (mu4 - sigma^4) / n = d^4 (1/80 - 1/144) / n
    se = math.sqrt(step**4 * (1 / 80 - 1 / 144) / n)
    assert abs(err.var().item() - step**2 / 12) <= Z * se
    # Uniform across the step: chi-square over 10 bins (9 dof; 99.99% quantile 33.7).
    hist = torch.histc(err / step + 0.5, bins=10, min=0.0, max=1.0)
    chi2 = ((hist - n / 10) ** 2 / (n / 10)).sum().item()
    assert chi2 < 33.7
    assert torch.equal(quantize(x, None), x)


def test_quantisation_is_the_last_step_on_the_adc_grid() -> None:
    dark = torch.rand((2, 4, 16, 16), generator=gen(6), dtype=torch.float64) * 0.01
    levels = PhysicsLevels(torch.tensor([1e-4, 3e-4]), torch.tensor([1e-3, 2e-3]), 2e-4)
    for bits in (12, DEFAULT_BITS):
        out = add_physics_noise(dark, levels, gen(7), bits=bits)
        grid = out * (2**bits - 1)
        assert torch.allclose(grid, grid.round(), atol=1e-6, rtol=0)
        unrounded = add_physics_noise(dark, levels, gen(7), bits=None)
        assert torch.equal(out, quantize(unrounded, bits))
        assert not torch.equal(out, unrounded)


def test_seeded_determinism_shapes_and_dtypes() -> None:
    dark = torch.rand((3, 4, 8, 10), generator=gen(8)) * 0.01
    levels = physics_levels(torch.tensor([1e-5, 1e-4, 3e-4]), torch.tensor([1e-9, 1e-8, 1e-7]))
    a = add_physics_noise(dark, levels, gen(9))
    assert a.shape == dark.shape and a.dtype == torch.float32
    assert torch.equal(a, add_physics_noise(dark, levels, gen(9)))
    assert not torch.equal(a, add_physics_noise(dark, levels, gen(10)))
    assert add_physics_noise(dark.double(), levels, gen(9)).dtype == torch.float64
    # float64 and float32 inputs draw the same noise (draws are float64 on the generator)
    assert torch.allclose(add_physics_noise(dark.double(), levels, gen(9)).float(), a, atol=1e-6)


def test_physics_levels_maps_brooks_levels_and_eld_ratio() -> None:
    shot, read = torch.tensor([1e-5, 2e-4]), torch.tensor([4e-10, 9e-8])
    levels = physics_levels(shot, read)
    assert torch.equal(levels.gain, shot)
    assert torch.allclose(levels.read_std, read.sqrt())
    assert torch.allclose(levels.row_std, ROW_READ_RATIO * read.sqrt())
    assert physics_levels(1e-4, 1e-8, row_ratio=0.0).row_std == 0
    # ELD's Sony A7S2 Profile-1 fits (log sigma = slope log K + bias): R_scale over g_scale,
    # at the geometric middle of its calibrated K range (0.094-6.0 DN/e-).
    log_k = 0.5 * (math.log(0.0939) + math.log(6.0106))
    ratio = math.exp((0.5275 - 0.5407) * log_k + (-0.5917 - 1.2182))
    assert ROW_READ_RATIO == pytest.approx(ratio, abs=0.01)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d, lv: add_physics_noise(d[:, :3], lv), "dark"),
        (lambda d, lv: add_physics_noise(d.long(), lv), "floating"),
        (lambda d, lv: add_physics_noise(d, (1e-3, 0.0, 0.0)), "PhysicsLevels"),
        (lambda d, lv: add_physics_noise(d, lv._replace(gain=torch.ones(3))), "gain"),
        (lambda d, lv: add_physics_noise(d, lv._replace(gain=0.0)), "gain"),
        (lambda d, lv: add_physics_noise(d, lv._replace(read_std=-1.0)), "read_std"),
        (lambda d, lv: add_physics_noise(d, lv._replace(row_std=math.nan)), "row_std"),
        (lambda d, lv: add_physics_noise(d, lv, bits=0), "bits"),
        (lambda d, lv: add_physics_noise(d, lv, bits=True), "bits"),
        (lambda d, lv: add_physics_noise(d, lv, bits=12.0), "bits"),
        (lambda d, lv: add_physics_noise(d, lv, pattern="XYZW"), "pattern"),
        (lambda d, lv: quantize(d, bits=-3), "bits"),
        (lambda d, lv: physics_levels(0.0, 1e-8), "shot"),
        (lambda d, lv: physics_levels(1e-4, -1e-8), "read"),
        (lambda d, lv: physics_levels(1e-4, 1e-8, row_ratio=-0.1), "row_ratio"),
        (
            lambda d, lv: synthesize_low_light(torch.rand(1, 3, 4, 4), noise_model="poisson"),
            "noise_model",
        ),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    dark = torch.zeros((2, 4, 2, 2))
    with pytest.raises(ValueError, match=match):
        call(dark, PhysicsLevels(1e-3, 1e-3, 1e-4))


def test_synthesize_low_light_physics_end_to_end() -> None:
    rgb = torch.rand((3, 3, 16, 16), generator=gen(11), dtype=torch.float64)
    kwargs = {"ratio_range": (100.0, 100.0), "shot_range": (1e-4, 1e-4)}
    phys = synthesize_low_light(rgb, gen(12), noise_model="physics", **kwargs)
    again = synthesize_low_light(rgb, gen(12), noise_model="physics", **kwargs)
    gauss = synthesize_low_light(rgb, gen(12), **kwargs)
    assert phys["raw"].shape == (3, 4, 8, 8) and phys["raw"].dtype == torch.float64
    assert phys["raw"].min() >= 0 and phys["raw"].max() <= 1
    assert torch.equal(phys["raw"], again["raw"])
    assert torch.equal(phys["ratio"], gauss["ratio"])  # same draws up to the noise law
    assert not torch.equal(phys["raw"], gauss["raw"])
    # the dark signal went through a 14-bit ADC: amplified values are multiples of 100 * step
    grid = phys["raw"] / 100.0 * (2**DEFAULT_BITS - 1)
    inside = phys["raw"] < 1
    assert torch.allclose(grid[inside], grid[inside].round(), atol=1e-6, rtol=0)
    assert not torch.allclose(gauss["raw"] / 100.0 * (2**DEFAULT_BITS - 1), grid, atol=1e-3)


def test_dataset_and_config_pass_the_noise_model() -> None:
    assert NOISE_MODELS == ("gaussian", "physics")
    phys = SyntheticLowLight(2, size=32, seed=0, noise_model="physics")
    gauss = SyntheticLowLight(2, size=32, seed=0)
    assert phys.noise_model == "physics" and gauss.noise_model == "gaussian"
    assert torch.equal(phys.tensors()["rgb"], gauss.tensors()["rgb"])
    assert not torch.equal(phys.tensors()["raw"], gauss.tensors()["raw"])
    with pytest.raises(ValueError, match="noise_model"):
        SyntheticLowLight(2, size=32, noise_model="poisson")

    sizes = {"train_size": 2, "val_size": 1, "select_size": 1, "test_size": 1, "crop": 32}
    cfg = from_dict({"data": {**sizes, "noise": "physics"}})
    assert cfg.data.noise == "physics" and from_dict({}).data.noise == "gaussian"
    splits = build_splits(cfg.data)
    assert all(split.noise_model == "physics" for split in splits.values())
    assert torch.equal(splits["train"].tensors()["raw"], phys.tensors()["raw"][:2])
    with pytest.raises(ConfigError, match="data.noise"):
        from_dict({"data": {"noise": "poisson"}})
    faces = from_dict({"data": {**sizes, "name": "synthetic_faces", "noise": "physics"}})
    with pytest.raises(ConfigError, match="data.noise"):
        build_splits(faces.data)
