"""Solvers compared at equal compute, not at equal steps: each trial's metric read off its own
learning curve where its spending reaches a level every compared trial reached.

IBGL with k = 3 runs several times the passes of naive per upper step, so its final PSNR is
bought with more compute; `at_equal_budget` gives every trial the same budget instead. The axis
is `passes` (forward + backward passes of F and G so far, in every evaluation row of the history;
see `bgl.train.budget`) or `elapsed_s` (training wall time). The common level is the smallest
final level among the trials; each trial contributes its last evaluation at or below it (its
curve is only known at evaluations, so a trial may be read earlier than the level: the notes
say how much).

```python
rows, notes = at_equal_budget(load_trials(d, s), load_history(d, s), "psnr", "passes")
compare_groups(rows, "psnr", check_budgets=False)
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bgl.analysis.query import ResultsError, is_number

#: `compare --per` choices: the history column each reads
AXES = {"budget": "passes", "wall": "elapsed_s"}
_AXIS_TEXT = {"passes": "passes of F and G", "elapsed_s": "s of training"}


def at_equal_budget(
    trials: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    metric: str,
    axis: str,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Trial rows with `metric` replaced by its value at the common level of `axis` (and the
    level it was read at in `at_<axis>`); trials without such a curve keep no value. Returns
    (rows, notes)."""
    if axis not in _AXIS_TEXT:
        raise ResultsError(f"unknown budget axis {axis} (one of {', '.join(_AXIS_TEXT)})")
    curves: dict[Any, list[tuple[float, float]]] = {}
    for h in history:
        if h.get("kind") == "eval" and is_number(h.get(axis)) and is_number(h.get(metric)):
            curves.setdefault(h.get("trial_id"), []).append((float(h[axis]), float(h[metric])))
    completed = [t for t in trials if t.get("status") == "completed"]
    finals = {
        t["trial_id"]: max(curves[t["trial_id"]])[0]
        for t in completed
        if t.get("trial_id") in curves
    }
    if not finals:
        raise ResultsError(
            f"no completed trial has evaluations with {axis} and {metric} in its history "
            f"(`{axis}` is recorded since bgl records budgets per evaluation: rerun the study)"
        )
    level = min(finals.values())
    rows, read_at, missing = [], [], 0
    for t in trials:
        row = dict(t)
        points = sorted(p for p in curves.get(t.get("trial_id"), []) if p[0] <= level)
        if t.get("trial_id") in finals and points:
            row[f"at_{axis}"], row[metric] = points[-1]
            read_at.append(points[-1][0] / level if level else 1.0)
        else:
            row[metric] = None
            missing += t.get("status") == "completed"
        rows.append(row)
    notes = [
        f"compared at equal compute: {_level(level, axis)} {_AXIS_TEXT[axis]} (the smallest "
        "final level "
        f"among the trials); each trial read at its last evaluation at or below it "
        f"({min(read_at):.0%}-{max(read_at):.0%} of the level)"
    ]
    if missing:
        notes.append(f"{missing} completed trial(s) without {axis} in their history left out")
    return rows, notes


def _level(value: float, axis: str) -> str:
    return f"{value:,.0f}" if axis == "passes" else f"{value:.1f}"
