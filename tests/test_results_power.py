"""Power, minimal detectable effect and equivalence of a paired comparison, each checked against
an independent computation: a seeded simulation of the paired t-test, and the (1 − 2α) interval
that TOST's verdict must agree with."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bgl.analysis.compare import compare_groups
from bgl.analysis.power import (
    minimal_detectable_effect,
    paired_power,
    seeds_needed,
    tost,
    verdict,
)


def _simulated_power(effect: float, std: float, n: int, runs: int = 40_000) -> float:
    rng = np.random.default_rng(0)
    d = rng.normal(effect, std, size=(runs, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    return float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))


@pytest.mark.parametrize(("std", "n"), [(0.12, 5), (0.22, 5), (1.0, 3), (0.05, 12)])
def test_the_mde_is_detected_four_times_in_five_by_simulation(std, n):
    mde = minimal_detectable_effect(std, n)
    assert _simulated_power(mde, std, n) == pytest.approx(0.8, abs=0.01)
    assert paired_power(mde, std, n) == pytest.approx(0.8, abs=1e-6)
    # a smaller effect is detected less often
    assert _simulated_power(0.5 * mde, std, n) < 0.5


def test_the_mde_of_five_seeds_matches_the_ablation_spread():
    # issue figures: paired spreads 0.12 and 0.22 dB over 5 seeds -> about 0.19 and 0.36 dB
    # under a normal approximation; the noncentral t gives slightly more
    assert minimal_detectable_effect(0.12, 5) == pytest.approx(0.2018, abs=1e-3)
    assert minimal_detectable_effect(0.22, 5) == pytest.approx(0.3700, abs=1e-3)
    assert minimal_detectable_effect(0.1, 1) is None


def test_seeds_needed_is_the_smallest_n_with_enough_power():
    for std, effect in ((0.12, 0.1), (0.22, 0.15), (0.05, 0.2), (1.0, 0.1)):
        n = seeds_needed(std, effect)
        assert paired_power(effect, std, n) >= 0.8
        assert n == 2 or paired_power(effect, std, n - 1) < 0.8


def test_tost_agrees_with_the_ninety_percent_interval():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(3, 15))
        d = rng.normal(rng.normal(0, 0.1), rng.uniform(0.01, 0.2), size=n)
        mean, std = d.mean(), d.std(ddof=1)
        half = stats.t.ppf(0.95, n - 1) * std / np.sqrt(n)
        inside = -0.1 < mean - half and mean + half < 0.1
        assert tost(mean, std, n, 0.1)["equivalent"] == inside


def test_compare_words_follow_the_numbers():
    rows = []
    rng = np.random.default_rng(2)
    for seed in range(8):
        base = rng.normal(20, 1)
        noise = rng.normal(0, 0.02, size=3)
        for solver, shift, e in (("naive", 0, 0), ("aid", 0.5, noise[0]), ("tbgl", 0, noise[1])):
            rows.append({"trial_id": f"{solver}{seed}", "solver": solver, "seed": seed,
                         "status": "completed", "psnr": base + shift + e})  # fmt: skip
        rows.append({"trial_id": f"ibgl{seed}", "solver": "ibgl", "seed": seed,
                     "status": "completed", "psnr": base + rng.normal(0, 1.0)})  # fmt: skip
    result = compare_groups(rows, "psnr", margin=0.1)
    words = {d["group"]: d["verdict"] for d in result["differences"]}
    assert words["aid"].startswith("differs by +0.5")
    assert words["tbgl"] == "equivalent within ±0.1"
    assert words["ibgl"].startswith("inconclusive (MDE ")
    ibgl = next(d for d in result["differences"] if d["group"] == "ibgl")
    assert ibgl["mde"] == pytest.approx(minimal_detectable_effect(ibgl["std_diff"], 8))
    assert verdict({"mean_diff": None, "ci_low": None, "ci_high": None}, 0.1).startswith(
        "inconclusive"
    )
