"""What a paired comparison over seeds can say: the smallest effect it could detect, whether it
shows equivalence within a margin, how many seeds a planned study needs.

All for the paired t-test of `compare` (two-sided, level `ALPHA`) on n seed-paired differences
with standard deviation s:

- minimal detectable effect at power 1 − β (the noncentral-t power function, solved for the
  effect): the smallest true mean difference the test rejects with probability ≥ 1 − β;
- equivalence by two one-sided tests (TOST, Schuirmann 1987) against ±margin: equivalent when
  both one-sided tests reject at `ALPHA`, i.e. the (1 − 2α) interval lies inside (−m, m);
- seeds needed: the smallest n whose MDE is at most the effect asked for.

The verdict words follow the numbers: "differs by x [low, high]" (the interval excludes 0),
"equivalent within ±m" (TOST), else "inconclusive (MDE y)".
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05
POWER = 0.8
#: `compare --margin` default: a difference this small (in the metric's own units, dB for PSNR)
#: is taken as no difference that matters
DEFAULT_MARGIN = 0.1
MAX_SEEDS = 10_000


def paired_power(effect: float, std: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that the two-sided paired t-test at `alpha` rejects when the true mean
    difference is `effect` (noncentral t with n − 1 degrees of freedom)."""
    from scipy import stats

    if n < 2:
        return 0.0
    if std <= 0:
        return 1.0 if effect != 0 else alpha
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n) / std
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    if math.isfinite(power):
        return float(power)
    return _nct_power(crit, df, nc)  # scipy's noncentral t gives NaN far in its tails


def _nct_power(crit: float, df: int, nc: float) -> float:
    """P(|T| > crit) for T noncentral t(df, nc), as T = (Z + nc) / sqrt(V / df) integrated over
    V ~ chi²(df)."""
    from scipy import integrate, stats

    def tail(v: float) -> float:
        scale = math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (
            stats.norm.sf(crit * scale - nc) + stats.norm.cdf(-crit * scale - nc)
        )

    return float(integrate.quad(tail, 0, math.inf, limit=200)[0])


def minimal_detectable_effect(
    std: float, n: int, power: float = POWER, alpha: float = ALPHA
) -> float | None:
    """The effect the paired test detects with probability `power` (None when n < 2)."""
    from scipy.optimize import brentq

    if n < 2:
        return None
    if std <= 0:
        return 0.0
    high = std
    while paired_power(high, std, n, alpha) < power:
        high *= 2
    return float(brentq(lambda e: paired_power(e, std, n, alpha) - power, 0.0, high, xtol=1e-12))


def tost(mean: float, std: float, n: int, margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Two one-sided tests of |mean difference| < margin: both p-values, the larger one (the
    test's), and whether equivalence is shown at `alpha`."""
    from scipy import stats

    if n < 2 or margin <= 0:
        return {"p_lower": None, "p_upper": None, "p_value": None, "equivalent": None}
    se = std / math.sqrt(n)
    if se == 0:
        inside = -margin < mean < margin
        p_low = p_up = 0.0 if inside else 1.0
    else:
        p_low = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: diff <= -margin
        p_up = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: diff >= +margin
    p = max(p_low, p_up)
    return {"p_lower": p_low, "p_upper": p_up, "p_value": p, "equivalent": p < alpha}


def seeds_needed(
    std: float, effect: float, power: float = POWER, alpha: float = ALPHA
) -> int | None:
    """The fewest seeds whose paired test detects `effect` with probability `power`, for
    differences with standard deviation `std` (None beyond `MAX_SEEDS`)."""
    if effect <= 0:
        raise ValueError("the effect to detect must be positive")
    n = 2
    while paired_power(effect, std, n, alpha) < power:
        n = n + 1 if n < 64 else int(n * 1.1)
        if n > MAX_SEEDS:
            return None
    if n > 64:  # the coarse steps above: walk back to the smallest
        while n > 2 and paired_power(effect, std, n - 1, alpha) >= power:
            n -= 1
    return n


def verdict(diff: dict[str, Any], margin: float, unit: str = "") -> str:
    """The words a table may use for one paired comparison (see the module docstring)."""
    mean, low, high = diff.get("mean_diff"), diff.get("ci_low"), diff.get("ci_high")
    if mean is None or low is None or high is None:
        return "inconclusive (too few paired seeds)"
    if diff.get("excludes_zero"):
        return f"differs by {mean:+.3g}{unit} [{low:+.3g}, {high:+.3g}]"
    if diff.get("equivalent"):
        return f"equivalent within ±{margin:g}{unit}"
    mde = diff.get("mde")
    return f"inconclusive (MDE {mde:.3g}{unit})" if mde is not None else "inconclusive"
