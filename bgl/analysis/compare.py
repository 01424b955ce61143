"""Is a difference larger than the seed-to-seed spread? Groups of trials compared over seeds
(parameter importances: `bgl.analysis.importance`).

`compare_groups` takes trial rows (`load_trials`) and, per group (a solver, or the value of any
trial column such as `param.solver.k`), reports n, mean, std (ddof=1) and a 95% interval of the
mean over the completed trials (Student t, or a percentile bootstrap with a fixed seed); then,
for each group against the baseline group, the paired difference over the seeds both ran
(`group - baseline`, seed by seed) with its interval and a paired t-test p-value. Notes say
what makes two groups not comparable: seeds without a partner (left out of the pairing), budgets
that differ, a group with fewer than two values, trials that failed (left out). Each paired
difference also carries what it can say (`bgl.analysis.power`): the minimal detectable effect at
80% power for its n and spread, an equivalence test (TOST) against `margin`, and the verdict in
words ("differs by", "equivalent within", "inconclusive (MDE ...)").

```python
result = compare_groups(load_trials("results", "solver_ablation"), "psnr", baseline="naive")
result["groups"][0]["ci_low"], result["differences"][0]["p_value"], result["notes"]
plot_comparison(result, Path("results/solver_ablation/plots/compare_psnr_by_solver.png"))
```
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bgl.analysis.power import DEFAULT_MARGIN, minimal_detectable_effect, tost, verdict
from bgl.analysis.query import (
    ResultsError,
    columns_of,
    is_number,
    metric_mode,
    solver_label,
)

Row = Mapping[str, Any]

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
#: columns that must agree for two groups to have had the same budget (those present)
BUDGET_COLUMNS = (
    "steps",
    "warm_steps",
    "lower_steps",
    "upper_steps",
    "budget_warm_steps",
    "budget_lower_steps",
    "budget_upper_steps",
    "param.solver.k",
)
#: mean wall times further apart than this factor make two groups' budgets differ
WALL_RATIO = 2.0
_FAILED = ("diverged", "error", "stopped")


# -- intervals ------------------------------------------------------------------------------


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean (needs two values): mean ± t(n-1) · s / √n."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError("an interval needs at least two values")
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(
    values: Sequence[float],
    n_resamples: int,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `n_resamples` resamples with replacement drawn
    by `np.random.default_rng(seed)` as one (n_resamples, n) index array, so a rerun gives the
    same interval."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError("an interval needs at least two values")
    if n_resamples < 1:
        raise ValueError("the bootstrap needs at least one resample")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def describe(values: Sequence[float], bootstrap: int = 0) -> dict[str, Any]:
    """n, mean, std (ddof=1) and the interval of the mean (None where n < 2)."""
    x = [float(v) for v in values]
    out: dict[str, Any] = {"n": len(x), "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if x:
        out["mean"] = float(np.mean(x))
    if len(x) >= 2:
        out["std"] = float(np.std(x, ddof=1))
        low, high = bootstrap_interval(x, bootstrap) if bootstrap else t_interval(x)
        out.update(ci_low=low, ci_high=high)
    return out


# -- comparison -----------------------------------------------------------------------------


def compare_groups(
    rows: Sequence[Row],
    metric: str,
    by: str = "solver",
    baseline: Any = None,
    bootstrap: int = 0,
    check_budgets: bool = True,
    margin: float = DEFAULT_MARGIN,
) -> dict[str, Any]:
    """Per group of `rows` (by the value of column `by`): the metric over its completed trials;
    per other group: the paired difference to `baseline` (default: `naive` when grouping by
    solver and there is one, else the first group) over the seeds both ran.

    Returns a dict (JSON-ready: numbers are finite or None) with metric, mode, by, baseline,
    confidence, interval ("t" or "bootstrap"), bootstrap, bootstrap_seed, groups (one dict per
    group, baseline first: group, label, trials, n, mean, std, ci_low, ci_high, failed {status:
    count}, no_value, points [{trial_id, seed, value}]), differences (one per other group:
    group, baseline, n_pairs, mean_diff, std_diff, ci_low, ci_high, p_value, excludes_zero,
    unmatched {group: [seeds], baseline: [seeds]}, n_unmatched, mde (80% power), tost_p,
    equivalent (within ±`margin`), verdict), margin, notes (text) and comparable
    (False when seeds were unmatched, budgets differ, a group has n < 2 or trials failed).
    `check_budgets=False` where the values were read at equal compute (`bgl.analysis.budget`).
    """
    if bootstrap < 0:
        raise ResultsError(f"--bootstrap {bootstrap}: the number of resamples must be >= 0")
    if margin <= 0:
        raise ResultsError(f"--margin {margin}: the equivalence margin must be positive")
    if by == "seed":
        raise ResultsError("--by seed: groups are paired seed by seed; group by another column")
    columns = columns_of(rows)
    for name, what in ((by, "--by"), (metric, "--metric")):
        if name not in columns:
            raise ResultsError(f"{what} {name}: no such trial column ({', '.join(columns)})")
    mode = metric_mode(metric, rows)
    notes: list[str] = []
    issues: set[str] = set()

    grouped: dict[Any, list[Row]] = {}
    ungrouped = 0
    for r in rows:
        if r.get(by) is None or _nan(r.get(by)):
            ungrouped += 1
        else:
            grouped.setdefault(r[by], []).append(r)
    if ungrouped:
        notes.append(f"{plural(ungrouped, 'trial')} without a {by} value left out")
    if not grouped:
        raise ResultsError(f"no trial has a value of {by}")
    keys = sorted(grouped, key=_order)
    base_key = _pick_baseline(keys, by, baseline)
    keys = [base_key, *(k for k in keys if k != base_key)]

    groups = [_group(k, grouped[k], metric, by, bootstrap) for k in keys]
    if not any(g["n"] for g in groups):
        raise ResultsError(f"no completed trial has a value of {metric}")
    failed = [
        f"{g['label']}: {n} {status}" for g in groups for status, n in g["failed"].items() if n
    ]
    if failed:
        issues.add("failed")
        notes.append("failed trials left out: " + ", ".join(failed))
    for g in groups:
        if g["no_value"]:
            notes.append(
                f"{g['label']}: {plural(g['no_value'], 'completed trial')} without {metric}"
            )
        if g["n"] < 2:
            issues.add("small")
            notes.append(
                f"{g['label']}: n={g['n']}, no interval (a spread over seeds needs two values)"
            )
        seeds_seen = Counter(p["seed"] for p in g["points"] if p["seed"] is not None)
        repeated = {s: c for s, c in seeds_seen.items() if c > 1}
        if repeated and len(groups) > 1:
            seeds = ", ".join(f"seed {s} ×{c}" for s, c in sorted(repeated.items(), key=_order_kv))
            notes.append(
                f"{g['label']}: several trials per seed ({seeds}); their mean is paired "
                "(a finer --by separates them)"
            )

    differences = []
    base = groups[0]
    for g in groups[1:]:
        diff = _paired(g, base, bootstrap, margin)
        differences.append(diff)
        if diff["n_unmatched"]:
            issues.add("unmatched")
            only_g, only_b = diff["unmatched"]["group"], diff["unmatched"]["baseline"]
            parts = [
                f"{label} {_seeds(seeds)}"
                for seeds, label in ((only_g, g["label"]), (only_b, base["label"]))
                if seeds
            ]
            notes.append(
                f"{g['label']} vs {base['label']}: seeds without a partner left out of the "
                f"pairing ({plural(diff['n_unmatched'], 'trial')}): {'; '.join(parts)}"
            )
        if diff["n_pairs"] < 2 and g["n"] and base["n"]:
            notes.append(
                f"{g['label']} vs {base['label']}: {plural(diff['n_pairs'], 'matched seed')}, "
                "no interval or test"
            )
        elif diff["n_pairs"] >= 2 and diff["p_value"] is None:
            notes.append(
                f"{g['label']} vs {base['label']}: every paired difference is the same, no t-test"
            )
    if len(groups) == 1:
        notes.append(f"one group only ({base['label']}): nothing to compare it with")

    budget = _budget_notes(groups, by) if check_budgets else []
    if budget:
        issues.add("budget")
        notes.extend(budget)

    return {
        "metric": metric,
        "mode": mode,
        "by": by,
        "baseline": _json_key(base_key),
        "confidence": CONFIDENCE,
        "interval": "bootstrap" if bootstrap else "t",
        "bootstrap": bootstrap,
        "bootstrap_seed": BOOTSTRAP_SEED if bootstrap else None,
        "margin": margin,
        "groups": [_public(g) for g in groups],
        "differences": differences,
        "notes": notes,
        "comparable": not issues,
    }


def seeds_to_detect(
    rows: Sequence[Row], metric: str, effect: float, by: str = "solver", baseline: Any = None
) -> list[dict[str, Any]]:
    """From a pilot study's trials: per paired comparison to the baseline, the spread of its
    differences, what the pilot's seeds could detect (MDE) and the seeds it takes to detect
    `effect` at 80% power (`seeds_needed`; None when the pilot has fewer than two pairs)."""
    from bgl.analysis.power import seeds_needed

    if effect <= 0:
        raise ResultsError(f"--detect {effect}: the effect to detect must be positive")
    result = compare_groups(rows, metric, by=by, baseline=baseline, check_budgets=False)
    labels = {repr(g["group"]): g["label"] for g in result["groups"]}
    out = []
    for d in result["differences"]:
        std = d["std_diff"]
        out.append(
            {
                "group": labels[repr(d["group"])],
                "baseline": labels[repr(d["baseline"])],
                "pilot_pairs": d["n_pairs"],
                "std_diff": std,
                "pilot_mde": d["mde"],
                "effect": effect,
                "seeds_needed": seeds_needed(std, effect) if std is not None else None,
            }
        )
    return out


def _pick_baseline(keys: Sequence[Any], by: str, baseline: Any) -> Any:
    if baseline is None:
        if by == "solver" and "naive" in keys:
            return "naive"
        return keys[0]
    for k in keys:
        if k == baseline or _text(k) == str(baseline):
            return k
    raise ResultsError(
        f"--baseline {baseline}: no such {by} among the trials ({', '.join(map(_text, keys))})"
    )


def _group(key: Any, rows: Sequence[Row], metric: str, by: str, bootstrap: int) -> dict[str, Any]:
    completed = [r for r in rows if _completed(r)]
    points = [
        {"trial_id": r.get("trial_id"), "seed": r.get("seed"), "value": float(r[metric])}
        for r in completed
        if is_number(r.get(metric))
    ]
    statuses = Counter(str(r.get("status")) for r in rows if not _completed(r))
    label = solver_label(key) if by == "solver" else key
    return {
        "group": _json_key(key),
        "label": _text(label),
        "trials": len(rows),
        **describe([p["value"] for p in points], bootstrap),
        "failed": {
            s: statuses.get(s, 0) for s in (*_FAILED, *sorted(set(statuses) - set(_FAILED)))
        },
        "no_value": len(completed) - len(points),
        "points": points,
        "_rows": rows,
    }


def _public(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if not k.startswith("_")}


def _paired(
    group: Mapping[str, Any], base: Mapping[str, Any], bootstrap: int, margin: float
) -> dict[str, Any]:
    """`group - baseline` over the seeds both have (a seed's trials averaged in each group),
    with its power and equivalence (`bgl.analysis.power`)."""
    from scipy import stats

    a, b = _by_seed(group["points"]), _by_seed(base["points"])
    seeds = sorted(set(a) & set(b), key=_order)
    only_a = sorted(set(a) - set(b), key=_order) + [None] * _no_seed(group["points"])
    only_b = sorted(set(b) - set(a), key=_order) + [None] * _no_seed(base["points"])
    x = np.array([a[s] for s in seeds])
    y = np.array([b[s] for s in seeds])
    out: dict[str, Any] = {
        "group": group["group"],
        "baseline": base["group"],
        "n_pairs": len(seeds),
        "seeds": seeds,
        "mean_diff": float((x - y).mean()) if seeds else None,
        "std_diff": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "excludes_zero": None,
        "mde": None,
        "tost_p": None,
        "equivalent": None,
        "unmatched": {"group": only_a, "baseline": only_b},
        "n_unmatched": _unmatched_trials(group["points"], set(seeds))
        + _unmatched_trials(base["points"], set(seeds)),
    }
    if len(seeds) >= 2:
        d = x - y
        low, high = bootstrap_interval(d, bootstrap) if bootstrap else t_interval(d)
        with warnings.catch_warnings():  # equal differences: scipy warns and returns NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_rel(x, y).pvalue)
        out.update(
            std_diff=float(d.std(ddof=1)),
            ci_low=low,
            ci_high=high,
            p_value=p if math.isfinite(p) else None,
            excludes_zero=bool(low > 0 or high < 0),
        )
        std = float(d.std(ddof=1))
        equivalence = tost(float(d.mean()), std, len(seeds), margin)
        out.update(
            mde=minimal_detectable_effect(std, len(seeds)),
            tost_p=equivalence["p_value"],
            equivalent=equivalence["equivalent"],
        )
    out["verdict"] = verdict(out, margin)
    return out


def _by_seed(points: Sequence[Mapping[str, Any]]) -> dict[Any, float]:
    values: dict[Any, list[float]] = {}
    for p in points:
        if p["seed"] is not None:
            values.setdefault(p["seed"], []).append(p["value"])
    return {s: float(np.mean(v)) for s, v in values.items()}


def _no_seed(points: Sequence[Mapping[str, Any]]) -> int:
    return sum(p["seed"] is None for p in points)


def _unmatched_trials(points: Sequence[Mapping[str, Any]], matched: set[Any]) -> int:
    return sum(p["seed"] is None or p["seed"] not in matched for p in points)


def _budget_notes(groups: Sequence[Mapping[str, Any]], by: str) -> list[str]:
    """Budget columns whose values differ between groups; mean wall times more than
    WALL_RATIO apart. Only completed trials count, and only groups that report the column."""
    notes = []
    for column in BUDGET_COLUMNS:
        if column == by:
            continue
        values = {}
        for g in groups:
            seen = {r[column] for r in g["_rows"] if _completed(r) and is_number(r.get(column))}
            if seen:
                values[g["label"]] = sorted(seen)
        if len({tuple(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{label} {_values(v)}" for label, v in values.items())
            notes.append(f"budgets differ: {column} {shown}")
    walls = {}
    for g in groups:
        times = [
            float(r["wall_time_s"])
            for r in g["_rows"]
            if _completed(r) and is_number(r.get("wall_time_s"))
        ]
        if times and np.mean(times) > 0:
            walls[g["label"]] = float(np.mean(times))
    if walls and max(walls.values()) > WALL_RATIO * min(walls.values()):
        shown = ", ".join(f"{label} {t:.3g} s" for label, t in walls.items())
        notes.append(f"budgets differ: mean wall_time_s more than {WALL_RATIO:g}x apart ({shown})")
    return notes


# -- plot -----------------------------------------------------------------------------------


def plot_comparison(result: Mapping[str, Any], path: Path) -> Path:
    """Per group: every seed's value (points), the mean and its interval (bar); written
    atomically (`bgl.analysis.plots.save_figure`)."""
    from bgl.analysis.plots import new_figure, save_figure

    fig, ax = new_figure()
    fig.subplots_adjust(bottom=0.18)  # room for two-line group labels
    groups = result["groups"]
    colours = _colours(result)
    for i, g in enumerate(groups):
        values = [p["value"] for p in g["points"]]
        if values:  # a fixed spread around the group's x, so reruns draw the same figure
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(
                [i + o for o in offsets], values, color=colours[i], alpha=0.6, s=24, zorder=3
            )
        if g["mean"] is not None:
            if g["ci_low"] is not None:
                ax.errorbar(
                    i + 0.28,
                    g["mean"],
                    yerr=[[g["mean"] - g["ci_low"]], [g["ci_high"] - g["mean"]]],
                    fmt="o",
                    color="black",
                    capsize=5,
                    zorder=4,
                )
            else:
                ax.plot(i + 0.28, g["mean"], "o", color="black", mfc="white", zorder=4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g['label']}\n(n={g['n']})" for g in groups])
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_xlabel(result["by"])
    ax.set_ylabel(f"{result['metric']} ({result['mode']} is better)")
    method = "t" if result["interval"] == "t" else f"bootstrap ({result['bootstrap']})"
    ax.set_title(
        f"{result['metric']} by {result['by']}: seeds (points), mean and "
        f"{result['confidence']:.0%} {method} interval (bar)"
    )
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)


def _colours(result: Mapping[str, Any]) -> list[str]:
    if result["by"] == "solver":
        from bgl.solvers.registry import SOLVERS

        known = [
            SOLVERS[g["group"]].colour if g["group"] in SOLVERS else None for g in result["groups"]
        ]
    else:
        known = [None] * len(result["groups"])
    return [c or f"C{i % 10}" for i, c in enumerate(known)]


def plot_name(metric: str, by: str) -> str:
    """The comparison plot's file name, e.g. compare_psnr_by_solver.png."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", name) for name in (metric, by)]
    return f"compare_{safe[0]}_by_{safe[1]}.png"


def _completed(row: Row) -> bool:
    return row.get("status", "completed") == "completed"


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _order(key: Any) -> tuple[int, Any]:
    return (0, float(key)) if is_number(key) else (1, str(key))


def _order_kv(item: tuple[Any, Any]) -> tuple[int, Any]:
    return _order(item[0])


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def _json_key(value: Any) -> Any:
    """A group key for JSON: numbers and text as they are, anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return str(value)
    return value


def _seeds(seeds: Sequence[Any]) -> str:
    named = [str(s) for s in seeds if s is not None]
    missing = len(seeds) - len(named)
    text = "seed " + ", ".join(named) if named else ""
    if missing:
        text += ("; " if text else "") + f"{missing} without a seed"
    return text


def _values(values: Sequence[Any]) -> str:
    return "/".join(_text(v) for v in values)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
