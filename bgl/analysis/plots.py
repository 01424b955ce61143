"""Study plots (PNG, matplotlib's Agg canvas; no pyplot, no display needed).

- `<metric>_vs_k.png`: IBGL trials, metric against the number of lower steps k;
- `<metric>_vs_delta.png`: TBGL trials, metric against the finite-difference delta (log x);
- `<metric>_curves.png`: eval metric against step from the history, one line per trial,
  coloured by solver (trials that did not complete are dashed);
- `pareto.png`: with two objectives, every completed trial and the Pareto front.

A plot whose data is absent is skipped with a note; NULL/NaN values are left out, never fatal.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgl.analysis.query import (
    Objectives,
    is_number,
    load_history,
    load_trials,
    metric_mode,
    pareto_front,
    primary_metric,
    study_path,
)

Row = Mapping[str, Any]


@dataclass
class PlotReport:
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plot_study(
    results_dir: str | Path,
    study: str,
    out_dir: str | Path | None = None,
    *,
    metric: str | None = None,
    pareto: Objectives | None = None,
) -> PlotReport:
    """Write the study's plots to `out_dir` (default `<study>/plots`); paths and skip notes."""
    folder = study_path(results_dir, study)
    trials = load_trials(results_dir, study)
    history = load_history(results_dir, study)
    out = Path(out_dir) if out_dir is not None else folder / "plots"
    out.mkdir(parents=True, exist_ok=True)
    report = PlotReport()
    metric = metric or primary_metric(trials)
    if metric is None:
        report.notes.append("no metric found in the trials: only a Pareto plot can be drawn")
    else:
        _collect(report, plot_vs_param(trials, metric, "k", out / f"{_safe(metric)}_vs_k.png"))
        _collect(
            report,
            plot_vs_param(trials, metric, "delta", out / f"{_safe(metric)}_vs_delta.png"),
        )
        _collect(report, plot_curves(trials, history, metric, out / f"{_safe(metric)}_curves.png"))
    if pareto:
        _collect(report, plot_pareto(trials, pareto, out / "pareto.png"))
    return report


# parameter -> (solver it belongs to, column, log x axis, label)
_PARAMS = {
    "k": ("ibgl", "param.solver.k", False, "k (lower steps per upper step)"),
    "delta": ("tbgl", "param.solver.delta", True, "delta (finite-difference step)"),
}


def plot_vs_param(trials: Sequence[Row], metric: str, param: str, path: Path) -> Path | str:
    """Metric against an IBGL/TBGL parameter; a note (str) when there is nothing to plot."""
    solver, column, log, label = _PARAMS[param]
    points = [
        (float(r[column]), float(r[metric]), r.get("trial_id"))
        for r in trials
        if r.get("solver") == solver
        and r.get("status", "completed") == "completed"
        and is_number(r.get(column))
        and is_number(r.get(metric))
        and (not log or float(r[column]) > 0)
    ]
    if not points:
        return (
            f"skipped {metric} vs {param}: no completed {solver} trial with {column} and {metric}"
        )
    fig, ax = new_figure()
    xs, ys, _ = zip(*points)
    ax.scatter(xs, ys, color=_colour(solver, [solver]), label=f"{solver} trials", zorder=3)
    means: dict[float, list[float]] = {}
    for x, y, _ in points:
        means.setdefault(x, []).append(y)
    if len(means) > 1:
        xm = sorted(means)
        ax.plot(xm, [sum(means[x]) / len(means[x]) for x in xm], color="0.4", lw=1, label="mean")
    if log:
        ax.set_xscale("log")
    elif param == "k":
        ax.set_xticks(sorted(means))
    ax.set_xlabel(label)
    ax.set_ylabel(f"{metric} ({metric_mode(metric, trials)} is better)")
    ax.set_title(f"{metric} vs {param} ({solver}, {_count(len(points), 'trial')})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_curves(
    trials: Sequence[Row], history: Sequence[Row], metric: str, path: Path
) -> Path | str:
    """Eval metric against step per trial from the history, coloured by solver."""
    status = {r.get("trial_id"): r.get("status") for r in trials}
    lines: dict[Any, list[tuple[float, float]]] = {}
    solver_of: dict[Any, str] = {}
    for h in history:
        if h.get("kind", "eval") != "eval":
            continue
        if not (is_number(h.get(metric)) and is_number(h.get("step"))):
            continue
        lines.setdefault(h.get("trial_id"), []).append((float(h["step"]), float(h[metric])))
        solver_of[h.get("trial_id")] = str(h.get("solver"))
    if not lines:
        return f"skipped {metric} curves: no eval rows with {metric} in the history"
    solvers = sorted(set(solver_of.values()))
    fig, ax = new_figure()
    labelled: set[str] = set()
    for trial_id, points in sorted(lines.items(), key=lambda kv: str(kv[0])):
        points.sort()
        solver = solver_of[trial_id]
        done = status.get(trial_id, "completed") == "completed"
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=_colour(solver, solvers),
            ls="-" if done else "--",
            marker="o" if len(points) == 1 else None,
            lw=1.2,
            alpha=0.85,
            label=None if solver in labelled else solver,
        )
        labelled.add(solver)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training ({_count(len(lines), 'trial')}; dashed: not completed)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="solver")
    return save_figure(fig, path)


def plot_pareto(trials: Sequence[Row], objectives: Objectives, path: Path) -> Path | str:
    """All completed trials in the first two objectives, the front highlighted and joined."""
    if len(objectives) < 2:
        return "skipped Pareto plot: it needs two objectives"
    (mx, mode_x), (my, mode_y) = objectives[0], objectives[1]
    points = [
        r
        for r in trials
        if r.get("status", "completed") == "completed"
        and is_number(r.get(mx))
        and is_number(r.get(my))
    ]
    if not points:
        return f"skipped Pareto plot: no completed trial with both {mx} and {my}"
    front = pareto_front(points, objectives)
    solvers = sorted({str(r.get("solver")) for r in points})
    fig, ax = new_figure()
    for solver in solvers:
        group = [r for r in points if str(r.get("solver")) == solver]
        ax.scatter(
            [float(r[mx]) for r in group],
            [float(r[my]) for r in group],
            color=_colour(solver, solvers),
            alpha=0.6,
            label=solver,
        )
    ordered = sorted(front, key=lambda r: float(r[mx]))
    ax.plot(
        [float(r[mx]) for r in ordered],
        [float(r[my]) for r in ordered],
        color="black",
        marker="o",
        mfc="none",
        ms=10,
        lw=1,
        label=f"Pareto front ({len(front)})",
    )
    ax.set_xlabel(f"{mx} ({mode_x})")
    ax.set_ylabel(f"{my} ({mode_y})")
    extra = f"; front over {len(objectives)} objectives" if len(objectives) > 2 else ""
    ax.set_title(f"{mx} vs {my} ({len(points)} completed trials{extra})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# -- helpers --------------------------------------------------------------------------------


def new_figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.91)  # no layout pass: fast
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_SOLVER_COLOURS = {"naive": "tab:gray", "tbgl": "tab:blue", "ibgl": "tab:orange"}
_OTHER = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _colour(solver: str, solvers: Sequence[str]) -> str:
    if solver in _SOLVER_COLOURS:
        return _SOLVER_COLOURS[solver]
    others = [s for s in solvers if s not in _SOLVER_COLOURS]
    index = others.index(solver) if solver in others else 0
    return _OTHER[index % len(_OTHER)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "metric"


def _collect(report: PlotReport, result: Path | str) -> None:
    if isinstance(result, Path):
        report.paths.append(result)
    else:
        report.notes.append(result)
