"""`bgl results ...`: list, show, query, export, plot and compare study results.

```
bgl results list
bgl results show quickstart [--sort psnr] [--top 10] [--pareto psnr:max,peak_memory_mib:min]
bgl results show transfer STUDY          # a transfer study as the paper's Table 3
bgl results query "SELECT solver, max(psnr) FROM trials GROUP BY solver" [--study quickstart]
bgl results export quickstart --format csv -o exports/quickstart
bgl results plot quickstart -o plots/quickstart
bgl results compare quickstart [--by solver] [--baseline naive] [--bootstrap 2000] [--plot]
bgl results importance quickstart [--format json]   # Optuna parameter importances
```
`--results-dir` (default `results`) goes before or after the sub-command. Every handler takes
the parsed Namespace and returns an exit code: 0 ok, 1 nothing to show, 2 a user error.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bgl.analysis.query import (
    EXPORT_FORMATS,
    STATUSES,
    TRANSFER_COLUMNS,
    ResultsError,
    best_trial,
    columns_of,
    export,
    is_number,
    is_transfer,
    list_studies,
    load_trials,
    metric_columns,
    metric_mode,
    param_columns,
    pareto_front,
    parse_objectives,
    peak_mib,
    primary_metric,
    query,
    solver_summary,
    sort_rows,
    study_directions,
    transfer_table,
)

DEFAULT_RESULTS_DIR = "results"
DEFAULT_PARETO = "psnr:max,peak_memory_mib:min"
VIEWS = ("transfer",)  # `bgl results show VIEW STUDY`
# columns every trials table has (sorting by one adds no column)
_SHOWN_ALWAYS = {"trial_id", "status", "solver", "wall_time_s", "peak_memory_mib"}
_STATUS_STYLE = {"completed": "green", "diverged": "yellow", "stopped": "cyan", "error": "red"}

Handler = Callable[[argparse.Namespace], int]


def add_results_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `results` and its sub-commands to an `add_subparsers()` object; returns `results`."""
    parser = subparsers.add_parser(
        "results",
        help="list, show, query, export, plot and compare study results",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--results-dir",
        default=DEFAULT_RESULTS_DIR,
        help=f"folder holding the study folders (default: {DEFAULT_RESULTS_DIR})",
    )
    sub = parser.add_subparsers(dest="results_command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="every study: trial counts, best metric, last change")
    _results_dir(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "show",
        help="a study's trials, per-solver summary and Pareto front; `show transfer STUDY`: "
        "Table 3",
    )
    p.add_argument("study", help="the study, or a view (transfer) followed by the study")
    p.add_argument("view_study", nargs="?", metavar="STUDY", help=argparse.SUPPRESS)
    p.add_argument("--sort", metavar="METRIC", help="sort by this column (default: the metric)")
    p.add_argument("--mode", choices=("max", "min"), help="sort direction (default: inferred)")
    p.add_argument("--top", type=int, metavar="N", help="show only the first N trials")
    p.add_argument(
        "--metrics", metavar="LIST", help="comma-separated metric columns (default: all)"
    )
    p.add_argument(
        "--pareto",
        metavar="SPEC",
        help=f"Pareto front over objectives, e.g. {DEFAULT_PARETO}",
    )
    _results_dir(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("query", help="SQL over the views `trials` and `history` (DuckDB)")
    p.add_argument("sql", help='e.g. "SELECT solver, max(psnr) FROM trials GROUP BY solver"')
    p.add_argument("--study", help="one study's views (default: every study, column `study`)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _results_dir(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="write trials and history as csv, json or parquet")
    p.add_argument("study")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument("-o", "--output", metavar="DIR", help="folder (default: <study>/export)")
    _results_dir(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "plot",
        help="PNG plots: metric vs solver parameters, curves, lower-level health, Pareto front",
    )
    p.add_argument("study")
    p.add_argument("-o", "--output", metavar="DIR", help="folder (default: <study>/plots)")
    p.add_argument("--metric", help="metric to plot (default: the study's metric)")
    p.add_argument("--pareto", metavar="SPEC", help=f"also a Pareto plot, e.g. {DEFAULT_PARETO}")
    _results_dir(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "compare",
        help="per group: mean, std and 95%% interval over seeds; paired difference to a "
        "baseline (matched by seed) with a paired t-test",
    )
    p.add_argument("study")
    p.add_argument(
        "--by",
        default="solver",
        help="trial column to group by (default: solver), e.g. param.solver.k",
    )
    p.add_argument("--metric", help="metric to compare (default: the study's metric)")
    p.add_argument(
        "--baseline",
        help="the group the others are paired with (default: naive, else the first group)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="percentile bootstrap intervals from N resamples (fixed seed) instead of Student t",
    )
    p.add_argument(
        "--plot", action="store_true", help="also a PNG of the seeds, means and intervals"
    )
    p.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    _results_dir(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "importance",
        help="Optuna parameter importances (PED-ANOVA) from the study's journal",
    )
    p.add_argument("study")
    p.add_argument("--format", choices=("table", "json"), default="table")
    _results_dir(p)
    p.set_defaults(func=cmd_importance)
    return parser


def _results_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the sub-command it wins, otherwise the `results` default stands
    parser.add_argument("--results-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _console(stderr: bool = False) -> Console:
    """Rich console on the current stdout/stderr; wide when not a terminal (pipes, tests)."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=400 if wide else None)


def _handles_errors(fn: Handler) -> Handler:
    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ResultsError as exc:
            _console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            return 2

    return wrapper


# -- list -----------------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@_handles_errors
def cmd_list(args: argparse.Namespace) -> int:
    studies = list_studies(args.results_dir)
    console = _console()
    if not studies:
        console.print(f"no studies under {args.results_dir}")
        return 1
    table = Table(title=f"studies in {args.results_dir}")
    for name in ("study", "trials", "completed", "diverged", "stopped", "errored"):
        table.add_column(name, justify="left" if name == "study" else "right")
    for name in ("metric", "best", "best trial", "disk", "last modified"):
        table.add_column(name, justify="right" if name in ("best", "disk") else "left")
    for s in studies:
        metric = f"{s['metric']} ({s['mode']})" if s["metric"] else "-"
        table.add_row(
            escape(s["study"]),
            str(s["trials"]),
            str(s["completed"]),
            str(s["diverged"]),
            str(s["stopped"]),
            str(s["errored"]),
            metric,
            _fmt(s["best"], ".4f"),
            s["best_trial"] or "-",
            human_bytes(s["disk_bytes"]),
            s["last_modified"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    for s in studies:
        if s.get("problem"):
            console.print(f"  {s['study']}: {s['problem']}", highlight=False, markup=False)
    return 0


# -- show -----------------------------------------------------------------------------------


@_handles_errors
def cmd_show(args: argparse.Namespace) -> int:
    view_study = getattr(args, "view_study", None)
    if view_study is not None:
        if args.study not in VIEWS:
            raise ResultsError(
                f"unknown view {args.study!r} (views: {', '.join(VIEWS)}); "
                "usage: bgl results show [transfer] STUDY"
            )
        rows = load_trials(args.results_dir, view_study)
        _console().print(_transfer_table(rows, view_study))
        return 0
    rows = load_trials(args.results_dir, args.study)
    console = _console()
    columns = columns_of(rows)
    metric = primary_metric(rows)
    metrics = metric_columns(rows, metric)
    if getattr(args, "metrics", None):
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in columns]
        if unknown:
            raise ResultsError(f"--metrics: no such column {', '.join(unknown)}")
    sort = args.sort or metric
    if sort and sort not in columns:
        raise ResultsError(f"--sort {sort}: no such column (metrics: {', '.join(metrics)})")
    mode = args.mode or (metric_mode(sort, rows) if sort else None)
    ordered = sort_rows(rows, sort, mode) if sort else list(rows)
    shown = ordered[: args.top] if args.top is not None and args.top >= 0 else ordered

    counts = {s: sum(r.get("status") == s for r in rows) for s in STATUSES}
    title = f"{args.study}: {len(rows)} trials (" + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n
    )
    title += ")"
    if metric:
        direction = metric_mode(metric, rows)
        best = best_trial(rows, metric, direction)
        title += f"; {metric} ({direction})"
        if best is not None:
            title += f" best {best[metric]:.4f} ({best['trial_id']}, {best.get('solver')})"
    console.print(_trials_table(shown, rows, metrics, sort, mode, title))
    _print_errors(console, shown)
    _print_health_warnings(console, shown)

    summary = solver_summary(rows, metric, metric_mode(metric, rows) if metric else None)
    console.print(_summary_table(summary, metric))

    objectives = None
    if args.pareto:
        objectives = parse_objectives(args.pareto)
    elif _has(rows, "psnr") and _has(rows, "peak_memory_mib"):
        if len(study_directions(args.results_dir, args.study)) > 1:
            objectives = parse_objectives(DEFAULT_PARETO)
        else:
            console.print(
                f"Pareto view: bgl results show {args.study} --pareto {DEFAULT_PARETO}",
                highlight=False,
            )
    if objectives:
        missing = [m for m, _ in objectives if m not in columns]
        if missing:
            raise ResultsError(f"--pareto: no such column {', '.join(missing)}")
        console.print(_pareto_table(rows, objectives))
    if is_transfer(rows):
        console.print(_transfer_table(rows, args.study))
    return 0


def _transfer_table(rows: Sequence[Mapping[str, Any]], study: str) -> Table:
    """Table 3's layout: one row per model; n/a where its target was not run."""
    entries = transfer_table(rows)
    headers = [header for *_, header in TRANSFER_COLUMNS]
    table = Table(
        title=f"{study}: transfer of the generative block (Table 3)",
        title_justify="left",
        caption="EN: enhancement, DE: detection, SE: segmentation, each trained on the frozen "
        "generative block of its row; n/a: not run",
    )
    for name in ("model", "basic task", "strategy"):
        table.add_column(name)
    for header in headers:
        table.add_column(header, justify="right")
    for e in entries:
        model = escape(str(e["model"]))
        if e["source_status"] not in (None, "completed"):
            model += f" [{_STATUS_STYLE.get(e['source_status'], 'white')}]({e['source_status']})[/]"
        cells = [_transfer_cell(e[h]) for h in headers]
        table.add_row(model, _fmt(e["basic_task"]), _fmt(e["strategy"]), *cells)
    return table


def _transfer_cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):  # a target trial that did not complete: its status
        return f"[{_STATUS_STYLE.get(value, 'white')}]{escape(value)}[/]"
    return _fmt(value, ".4f")


def _trials_table(
    shown: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    sort: str | None,
    mode: str | None,
    title: str,
) -> Table:
    params, constants = _searched_params(rows)
    caption = []
    if sort:
        caption.append(f"sorted by {sort} ({mode} first)")
    if len(shown) < len(rows):
        caption.append(f"top {len(shown)} of {len(rows)}")
    if constants:
        caption.append("constant: " + ", ".join(f"{k}={_fmt(v)}" for k, v in constants.items()))
    table = Table(title=title, caption="; ".join(caption) or None, title_justify="left")
    table.add_column("trial", no_wrap=True)
    table.add_column("status")
    table.add_column("solver")
    for p in params:
        table.add_column(p.removeprefix("param."), justify="right")
    for m in metrics:
        table.add_column(m, justify="right", style="bold" if m == sort else None)
    extra = sort if sort and sort not in metrics and sort not in _SHOWN_ALWAYS else None
    if extra and not extra.startswith("param."):
        table.add_column(extra, justify="right", style="bold")
    table.add_column("wall s", justify="right")
    table.add_column("peak MiB", justify="right")
    for r in shown:
        status = str(r.get("status"))
        cells = [
            _fmt(r.get("trial_id")),
            f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]",
            _fmt(r.get("solver")),
        ]
        cells += [_fmt(r.get(p), ".4g") for p in params]
        cells += [_fmt(r.get(m), _spec(m)) for m in metrics]
        if extra and not extra.startswith("param."):
            cells.append(_fmt(r.get(extra), _spec(extra)))
        cells += [_fmt(r.get("wall_time_s"), ".1f"), _fmt(peak_mib(r), ".0f")]
        table.add_row(*cells)
    return table


def _searched_params(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Parameter columns worth a table column, and those with one value in every trial."""
    params, constants = [], {}
    for p in param_columns(rows):
        values = [r.get(p) for r in rows]
        if p == "param.solver.name" and all(r.get(p) in (None, r.get("solver")) for r in rows):
            continue  # the solver column already says it
        distinct = {json.dumps(v, default=str) for v in values}
        if len(rows) > 1 and len(distinct) == 1 and values[0] is not None:
            constants[p.removeprefix("param.")] = values[0]
        else:
            params.append(p)
    return params, constants


def _print_errors(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    for r in rows:
        error = r.get("error")
        if r.get("status") != "completed" and error:
            last = [line for line in str(error).strip().splitlines() if line.strip()]
            text = last[-1] if last else str(error)
            console.print(
                f"  {r.get('trial_id')} {r.get('status')}: {text[:300]}",
                highlight=False,
                markup=False,
            )


def _print_health_warnings(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    """A note per trial whose run warned that IBGL's Eq. 9 left its regime (`health_warning`;
    the per-step numbers are in `bgl results plot`'s health figure)."""
    for r in rows:
        warning = r.get("health_warning")
        if isinstance(warning, str) and warning.strip():
            console.print(
                f"  {r.get('trial_id')} health warning: {warning.strip()[:300]}",
                highlight=False,
                markup=False,
            )


def _summary_table(summary: Sequence[Mapping[str, Any]], metric: str | None) -> Table:
    table = Table(title="per solver", title_justify="left")
    table.add_column("solver")
    for name in ("trials", *STATUSES):
        table.add_column(name, justify="right")
    if metric:
        table.add_column(f"best {metric}", justify="right")
        table.add_column(f"mean {metric}", justify="right")
        table.add_column("best trial")
    table.add_column("mean wall s", justify="right")
    table.add_column("mean peak MiB", justify="right")
    for s in summary:
        cells = [escape(s["solver"]), str(s["trials"]), *(str(s[k]) for k in STATUSES)]
        if metric:
            cells += [_fmt(s["best"], ".4f"), _fmt(s["mean"], ".4f"), s["best_trial"] or "-"]
        cells += [_fmt(s["mean_wall_s"], ".1f"), _fmt(s["mean_peak_mib"], ".0f")]
        table.add_row(*cells)
    return table


def _pareto_table(
    rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]
) -> Table:
    front = pareto_front(rows, objectives)
    spec = ", ".join(f"{m} {mode}" for m, mode in objectives)
    params, _ = _searched_params(rows)
    table = Table(title=f"Pareto front ({spec}): {len(front)} trials", title_justify="left")
    table.add_column("trial", no_wrap=True)
    table.add_column("solver")
    for m, _ in objectives:
        table.add_column(m, justify="right", style="bold")
    for p in params:
        table.add_column(p.removeprefix("param."), justify="right")
    for r in front:
        table.add_row(
            _fmt(r.get("trial_id")),
            _fmt(r.get("solver")),
            *(_fmt(r.get(m), _spec(m)) for m, _ in objectives),
            *(_fmt(r.get(p), ".4g") for p in params),
        )
    return table


def _has(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    return any(is_number(r.get(column)) for r in rows)


# -- query ----------------------------------------------------------------------------------


@_handles_errors
def cmd_query(args: argparse.Namespace) -> int:
    table = query(args.results_dir, args.sql, study=args.study)
    columns = table.column_names  # by position: a query may repeat a name
    data = [column.to_pylist() for column in table.columns]
    rows = list(zip(*data)) if data else []
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if _null(v) else v for v in row])
    elif args.format == "json":
        clean = [{c: _json_value(v) for c, v in zip(columns, row)} for row in rows]
        sys.stdout.write(json.dumps(clean, indent=2, default=str, allow_nan=False) + "\n")
    else:
        out = Table(caption=f"{len(rows)} row{'' if len(rows) == 1 else 's'}")
        for name, values in zip(columns, data):
            out.add_column(escape(name), justify="right" if _numeric(values) else "left")
        for row in rows:
            out.add_row(*(_fmt(v, ".6g") for v in row))
        _console().print(out)
    return 0


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) for v in present)


# -- export / plot --------------------------------------------------------------------------


@_handles_errors
def cmd_export(args: argparse.Namespace) -> int:
    paths = export(args.results_dir, args.study, args.format, args.output)
    console = _console()
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    return 0


@_handles_errors
def cmd_plot(args: argparse.Namespace) -> int:
    from bgl.analysis.plots import plot_study

    objectives = parse_objectives(args.pareto) if args.pareto else None
    report = plot_study(
        args.results_dir, args.study, args.output, metric=args.metric, pareto=objectives
    )
    console = _console()
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for path in report.paths:
        console.print(f"wrote {path}", highlight=False)
    return 0 if report.paths else 1


# -- compare / importance -------------------------------------------------------------------

_COMPARE_CSV = (
    "study",
    "metric",
    "mode",
    "by",
    "group",
    "label",
    "trials",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "failed",
    "no_value",
    "baseline",
    "n_pairs",
    "n_unmatched",
    "mean_diff",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "interval",
)


@_handles_errors
def cmd_compare(args: argparse.Namespace) -> int:
    from bgl.analysis.compare import compare_groups, plot_comparison, plot_name
    from bgl.analysis.query import study_path

    rows = load_trials(args.results_dir, args.study)
    metric = args.metric or primary_metric(rows)
    if metric is None:
        raise ResultsError("no metric found in the trials: name one with --metric")
    result = {
        "study": args.study,
        **compare_groups(
            rows, metric, by=args.by, baseline=args.baseline, bootstrap=args.bootstrap
        ),
    }
    if args.plot:
        out = study_path(args.results_dir, args.study) / "plots" / plot_name(metric, args.by)
        result["plot"] = str(plot_comparison(result, out))
    machine = args.format in ("csv", "json")
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n")
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=_COMPARE_CSV, lineterminator="\n")
        writer.writeheader()
        for entry in _compare_rows(result):
            writer.writerow({k: "" if _null(v) else v for k, v in entry.items()})
    elif args.format == "markdown":
        sys.stdout.write(_compare_markdown(result))
    else:
        console = _console()
        for part in _compare_tables(result):  # headings as lines: rich wraps a long title
            console.print(part, highlight=False)
    # notes and the plot's path: on stderr where stdout is data (csv, json)
    console = _console(stderr=machine)
    if args.format != "markdown":
        for note in result["notes"]:
            console.print(f"note: {note}", highlight=False, markup=False)
    if result.get("plot"):
        console.print(f"wrote {result['plot']}", highlight=False, markup=False)
    return 0


def _compare_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per group: its statistics, then its paired difference to the baseline."""
    diffs = {json.dumps(d["group"]): d for d in result["differences"]}
    out = []
    for g in result["groups"]:
        d = diffs.get(json.dumps(g["group"]), {})
        failed = ", ".join(f"{n} {status}" for status, n in g["failed"].items() if n)
        out.append(
            {
                "study": result.get("study"),
                "metric": result["metric"],
                "mode": result["mode"],
                "by": result["by"],
                "group": g["group"],
                "label": g["label"],
                "trials": g["trials"],
                "n": g["n"],
                "mean": g["mean"],
                "std": g["std"],
                "ci_low": g["ci_low"],
                "ci_high": g["ci_high"],
                "failed": failed,
                "no_value": g["no_value"],
                "baseline": result["baseline"],
                "n_pairs": d.get("n_pairs"),
                "n_unmatched": d.get("n_unmatched"),
                "mean_diff": d.get("mean_diff"),
                "diff_ci_low": d.get("ci_low"),
                "diff_ci_high": d.get("ci_high"),
                "p_value": d.get("p_value"),
                "interval": result["interval"],
            }
        )
    return out


def _interval_words(result: Mapping[str, Any]) -> str:
    level = f"{result['confidence']:.0%}"
    if result["interval"] == "t":
        return f"{level} t interval"
    return (
        f"{level} percentile bootstrap interval ({result['bootstrap']} resamples, "
        f"seed {result['bootstrap_seed']})"
    )


def _favours(result: Mapping[str, Any]) -> str:
    sign = ">" if result["mode"] == "max" else "<"
    return f"Δ {sign} 0 favours the group"


def _baseline_label(result: Mapping[str, Any]) -> str:
    return str(result["groups"][0]["label"])


def _ci(low: Any, high: Any, spec: str) -> str:
    return "-" if low is None else f"[{_fmt(low, spec)}, {_fmt(high, spec)}]"


def _compare_tables(result: Mapping[str, Any]) -> list[str | Table]:
    """Headings and tables: the groups, then their paired differences to the baseline."""
    metric, by, spec = result["metric"], result["by"], _spec(result["metric"])
    parts: list[str | Table] = [
        f"{escape(str(result.get('study')))}: {escape(metric)} by {escape(by)} "
        f"({result['mode']} is better); {_interval_words(result)} of the mean over seeds"
    ]
    groups = Table()
    groups.add_column(by)
    for name in ("n", "mean", "std", "95% CI", "left out"):
        groups.add_column(name, justify="right")
    for g in result["groups"]:
        failed = ", ".join(f"{n} {status}" for status, n in g["failed"].items() if n)
        if g["no_value"]:
            failed += (", " if failed else "") + f"{g['no_value']} no value"
        groups.add_row(
            escape(str(g["label"])),
            str(g["n"]),
            _fmt(g["mean"], spec),
            _fmt(g["std"], spec),
            _ci(g["ci_low"], g["ci_high"], spec),
            failed or "-",
        )
    parts.append(groups)
    if not result["differences"]:
        return parts
    base = escape(_baseline_label(result))
    parts.append(
        f"paired difference to {base} over the seeds both ran: Δ = group − {base} "
        f"({_favours(result)})"
    )
    differences = Table()
    differences.add_column(by)
    for name in ("pairs", "unmatched", "mean Δ", "95% CI of Δ", "p (paired t)", "CI excl. 0"):
        differences.add_column(name, justify="right")
    labels = {json.dumps(g["group"]): g["label"] for g in result["groups"]}
    for d in result["differences"]:
        excludes = d["excludes_zero"]
        differences.add_row(
            escape(str(labels[json.dumps(d["group"])])),
            str(d["n_pairs"]),
            str(d["n_unmatched"]),
            _fmt(d["mean_diff"], spec),
            _ci(d["ci_low"], d["ci_high"], spec),
            _fmt(d["p_value"], ".3g"),
            "-" if excludes is None else ("yes" if excludes else "no"),
        )
    parts.append(differences)
    return parts


def _compare_markdown(result: Mapping[str, Any]) -> str:
    """A GitHub/pandoc pipe table: one row per group, its paired difference to the baseline."""
    spec = _spec(result["metric"])
    base = _baseline_label(result)
    lines = [
        f"**{result['metric']} by {result['by']}** ({result['mode']} is better; "
        f"{_interval_words(result)} of the mean over seeds; Δ = group − {base}, paired by seed, "
        f"{_favours(result)})",
        "",
        f"| {result['by']} | n | mean ± std | 95% CI | Δ vs {base} | 95% CI of Δ | p (paired t) "
        "| pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in _compare_rows(result):
        is_base = entry["n_pairs"] is None
        spread = f" ± {_fmt(entry['std'], spec)}" if entry["std"] is not None else ""
        cells = [
            str(entry["label"]).replace("|", "\\|"),
            str(entry["n"]),
            _fmt(entry["mean"], spec) + spread,
            _ci(entry["ci_low"], entry["ci_high"], spec),
            "—" if is_base else _fmt(entry["mean_diff"], spec),
            "—" if is_base else _ci(entry["diff_ci_low"], entry["diff_ci_high"], spec),
            "—" if is_base else _fmt(entry["p_value"], ".3g"),
            "—" if is_base else str(entry["n_pairs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if result["notes"]:
        lines.append("")
        lines += [f"- note: {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


@_handles_errors
def cmd_importance(args: argparse.Namespace) -> int:
    from bgl.analysis.importance import param_importances

    found = param_importances(args.results_dir, args.study)
    if args.format == "json":
        sys.stdout.write(json.dumps(found, indent=2, allow_nan=False) + "\n")
        return 0
    objectives = found["objectives"]
    first = objectives[0]["importances"]
    params = sorted(
        {p for o in objectives for p in o["importances"]}, key=lambda p: -first.get(p, 0)
    )
    using = f"{found['evaluator']} over {found['complete']} complete trials"
    others = ", ".join(f"{n} {state}" for state, n in found["other_states"].items())
    if others:
        using += f" (left out: {others})"
    table = Table()
    table.add_column("parameter")
    for o in objectives:
        table.add_column(f"{escape(o['name'])} ({o['direction']})", justify="right")
    for p in params:
        table.add_row(escape(p), *(_fmt(o["importances"].get(p), ".3f") for o in objectives))
    console = _console()
    console.print(
        f"{args.study}: parameter importances (shares of 1)", highlight=False, markup=False
    )
    console.print(table)
    console.print(using, highlight=False, markup=False)
    if found["fallback"]:
        console.print(f"note: {found['fallback']}", highlight=False, markup=False)
    return 0


# -- formatting -----------------------------------------------------------------------------


def _spec(column: str) -> str:
    """Format of a metric-like column: memory and seconds to 0.1, scores to 1e-4."""
    name = column.lower()
    if "mib" in name or "memory" in name or name.endswith("_s") or "time" in name:
        return ".1f"
    return ".4f"


def _null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, spec: str = "") -> str:
    """'-' for NULL/NaN; numbers by `spec` (ints stay ints); anything else as text."""
    if _null(value):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, spec) if spec else f"{value:.6g}"
    return escape(str(value))
