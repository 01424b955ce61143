"""Study plots (PNG, matplotlib's Agg canvas; no pyplot, no display needed).

- `<metric>_vs_k.png`: trials of the solvers that take k lower steps (IBGL, AID), metric
  against k; `<metric>_vs_delta.png`: TBGL trials against the finite-difference delta (log x);
  likewise `<metric>_vs_<key>.png` for any other numeric `solver.<key>` the trials searched.
  Which solvers a key applies to, its log axis and its description come from the registry;
- `<metric>_curves.png`: eval metric against step from the history, one line per trial,
  coloured by solver (trials that did not complete are dashed);
- `<study>-health.png`: the lower level's health per upper step from the history's train rows:
  ‖∇θL_G‖ (log), cos(∇θL_F, ∇θL_G) and IBGL's Eq. 9 coefficient (symlog), one line per trial
  that reports them (not naive, nor runs from before the columns existed);
- `pareto.png`: with two objectives, every completed trial and the Pareto front.

Solver names, labels and colours come from `bgl.solvers.registry`.

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
    solver_label,
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
        for param in swept_params(trials):
            path = out / f"{_safe(metric)}_vs_{_safe(param)}.png"
            _collect(report, plot_vs_param(trials, metric, param, path))
        _collect(report, plot_curves(trials, history, metric, out / f"{_safe(metric)}_curves.png"))
    _collect(report, plot_health(trials, history, out / f"{_safe(study)}-health.png"))
    if pareto:
        _collect(report, plot_pareto(trials, pareto, out / "pareto.png"))
    return report


#: the paper's two sweeps: always attempted, so a study without them gets a note saying so
ALWAYS_SWEPT = ("k", "delta")


def swept_params(trials: Sequence[Row]) -> list[str]:
    """`solver.*` keys to plot a metric against: k and delta, then any other numeric key
    (int or float search range in the registry) that some trial has a value for."""
    from bgl.solvers.registry import KEYS

    found = []
    for name, key in KEYS.items():
        column = f"param.solver.{name}"
        numeric = key.search is not None and key.search.get("type") in ("int", "float")
        if name in ALWAYS_SWEPT or (numeric and any(is_number(r.get(column)) for r in trials)):
            found.append(name)
    return found


def plot_vs_param(trials: Sequence[Row], metric: str, param: str, path: Path) -> Path | str:
    """Metric against a `solver.<param>` key for the solvers that read it (from the registry);
    a note (str) when there is nothing to plot."""
    from bgl.solvers.registry import KEYS, solvers_using

    key = KEYS[param]
    solvers = solvers_using(param)
    column = f"param.solver.{param}"
    log = bool(key.search and key.search.get("log"))
    integer = bool(key.search and key.search.get("type") == "int")
    points = [
        (float(r[column]), float(r[metric]), str(r.get("solver")))
        for r in trials
        if r.get("solver") in solvers
        and r.get("status", "completed") == "completed"
        and is_number(r.get(column))
        and is_number(r.get(metric))
        and (not log or float(r[column]) > 0)
    ]
    names = "/".join(str(solver_label(s)) for s in solvers) or "no solver reads it"
    if not points:
        return f"skipped {metric} vs {param}: no completed {names} trial with {column} and {metric}"
    fig, ax = new_figure()
    present = [s for s in solvers if any(p[2] == s for p in points)]
    xs_all: set[float] = set()
    for solver in present:
        group = [(x, y) for x, y, s in points if s == solver]
        colour = _colour(solver, present)
        label = solver_label(solver)
        ax.scatter(*zip(*group), color=colour, label=f"{label} trials", zorder=3)
        means: dict[float, list[float]] = {}
        for x, y in group:
            means.setdefault(x, []).append(y)
        xs_all.update(means)
        if len(means) > 1:
            xm = sorted(means)
            ym = [sum(means[x]) / len(means[x]) for x in xm]
            ax.plot(xm, ym, color=colour, lw=1, alpha=0.6, label=f"{label} mean")
    if log:
        ax.set_xscale("log")
    elif integer and len(xs_all) <= 20:
        ax.set_xticks(sorted(xs_all))
    ax.set_xlabel(f"{param} ({key.doc})")
    ax.set_ylabel(f"{metric} ({metric_mode(metric, trials)} is better)")
    labels = ", ".join(str(solver_label(s)) for s in present)
    ax.set_title(f"{metric} vs {param} ({labels}; {_count(len(points), 'trial')})")
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
            label=None if solver in labelled else solver_label(solver),
        )
        labelled.add(solver)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training ({_count(len(lines), 'trial')}; dashed: not completed)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="solver")
    return save_figure(fig, path)


#: history columns of the health plot: (column, axis label, y scale; symlog: see `_coef_scale`)
HEALTH_PANELS = (
    ("lower_grad_norm", r"$\|\nabla_\theta L_G\|$", "log"),
    ("upper_lower_cos", r"$\cos(\nabla_\theta L_F, \nabla_\theta L_G)$", "linear"),
    ("ibgl_coef", "IBGL coefficient $c$ (Eq. 9)", "symlog"),
    ("coupling_ratio", r"coupling $\|h - \nabla_\omega L_F\| / \|\nabla_\omega L_F\|$", "log"),
)


@dataclass
class HealthFigure:
    """The drawn health figure, what it holds, and why some trials are not in it."""

    figure: Any
    trials: list[str]  # trial ids drawn, in drawing order
    skipped: list[str]  # trial ids with history rows but none of the health columns
    lines: dict[str, int]  # column -> lines drawn in its panel
    scales: dict[str, str]  # column -> its panel's y scale


def plot_health(trials: Sequence[Row], history: Sequence[Row], path: Path) -> Path | str:
    """Write the lower-level health figure (`health_figure`); a note when no trial has the
    columns."""
    drawn = health_figure(trials, history)
    if isinstance(drawn, str):
        return drawn
    return save_figure(drawn.figure, path)


def health_figure(trials: Sequence[Row], history: Sequence[Row]) -> HealthFigure | str:
    """Four panels against the upper step, one line per trial coloured by solver: ‖∇θL_G‖ (log
    y), cos(∇θL_F, ∇θL_G) with the health monitor's ±limit, IBGL's Eq. 9 coefficient (symlog y
    when it changes sign or spans decades: it can explode) and the coupling ratio (log y; naive's
    is exactly 0, so it has no line). Train rows only; a trial without any of the columns (a
    run from before they existed) is skipped. A note (str) when none has them."""
    from bgl.train.health import COEF_FLOOR, COS_LIMIT

    status = {r.get("trial_id"): r.get("status") for r in trials}
    warned = {r.get("trial_id") for r in trials if r.get("health_warning")}
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    solver_of: dict[str, str] = {}
    seen: set[str] = set()
    for h in history:
        if h.get("kind", "train") != "train" or not is_number(h.get("step")):
            continue
        trial_id = str(h.get("trial_id"))
        seen.add(trial_id)
        for column, _, scale in HEALTH_PANELS:
            value = h.get(column)
            if is_number(value) and (scale != "log" or float(value) > 0):
                per_trial = series.setdefault(trial_id, {})
                per_trial.setdefault(column, []).append((float(h["step"]), float(value)))
                solver_of[trial_id] = str(h.get("solver"))
    skipped = sorted(seen - set(series))
    if not series:
        columns = ", ".join(c for c, _, _ in HEALTH_PANELS)
        return (
            f"skipped lower-level health plot: no train rows with {columns} in the history "
            "(naive trials and runs from before these columns do not report them)"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(7, 8.5), dpi=100)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.07, top=0.93, hspace=0.12)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(HEALTH_PANELS), 1, sharex=True)
    solvers = sorted(set(solver_of.values()))
    order = sorted(series, key=lambda t: (solver_of[t], t))
    lines = {column: 0 for column, _, _ in HEALTH_PANELS}
    for trial_id in order:
        solver = solver_of[trial_id]
        for ax, (column, _, _) in zip(axes, HEALTH_PANELS):
            points = sorted(series[trial_id].get(column, []))
            if not points:
                continue
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=_colour(solver, solvers),
                ls="-" if status.get(trial_id, "completed") == "completed" else "--",
                marker="o" if len(points) == 1 else None,
                lw=1.2,
                alpha=0.85,
            )
            lines[column] += 1
    scales = {}
    for ax, (column, label, scale) in zip(axes, HEALTH_PANELS):
        if scale == "symlog":
            values = [v for t in order for _, v in series[t].get(column, [])]
            scale = _coef_scale(values, COEF_FLOOR)
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=COEF_FLOOR)
                label += " (symlog)"
        elif lines[column]:
            ax.set_yscale(scale)
        scales[column] = scale
        if column == "upper_lower_cos":
            for limit in (COS_LIMIT, -COS_LIMIT):
                ax.axhline(limit, color="0.5", ls=":", lw=1)
            ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")
    handles = [Line2D([], [], color=_colour(s, solvers), lw=1.2) for s in solvers]
    labels = [str(solver_label(s)) for s in solvers]
    axes[0].legend(handles, labels, title="solver", fontsize="small")
    title = f"lower-level health ({_count(len(series), 'trial')}; dashed: not completed"
    drawn_warned = len(warned & set(series))
    if drawn_warned:
        title += f"; {drawn_warned} with a health warning"
    fig.suptitle(title + ")")
    return HealthFigure(fig, order, skipped, lines, scales)


def _coef_scale(values: Sequence[float], linthresh: float) -> str:
    """symlog when the coefficients change sign or span more than a decade above `linthresh`
    (an exploding c stays readable next to a healthy one); linear otherwise, where symlog would
    leave the axis without ticks."""
    magnitudes = [abs(v) for v in values if v != 0]
    if not magnitudes:
        return "linear"
    crosses = min(values) < 0 < max(values)
    return (
        "symlog" if crosses or max(magnitudes) > 10 * max(min(magnitudes), linthresh) else "linear"
    )


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
            label=solver_label(solver),
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


_PALETTE = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _colour(solver: str, solvers: Sequence[str]) -> str:
    """The registry's colour for a known solver; an unknown one (a study from a renamed or
    removed solver) gets the next colour no registered solver uses."""
    from bgl.solvers.registry import SOLVERS

    if solver in SOLVERS:
        return SOLVERS[solver].colour
    taken = {s.colour for s in SOLVERS.values()}
    spare = [c for c in _PALETTE if c not in taken] or _PALETTE
    others = [s for s in solvers if s not in SOLVERS]
    index = others.index(solver) if solver in others else 0
    return spare[index % len(spare)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "metric"


def _collect(report: PlotReport, result: Path | str) -> None:
    if isinstance(result, Path):
        report.paths.append(result)
    else:
        report.notes.append(result)
