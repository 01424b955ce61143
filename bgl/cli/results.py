"""`bgl results ...`: list, show, query, export, plot and compare study results.

```
bgl results list
bgl results show quickstart [--sort psnr] [--top 10] [--pareto psnr:max,peak_memory_mib:min]
bgl results show quickstart --wide       # every column at full length (the default fits 80)
bgl results show transfer STUDY          # a transfer study as the paper's Table 3
bgl results query "SELECT solver, max(psnr) FROM trials GROUP BY solver" [--study quickstart]
bgl results export quickstart --format csv -o exports/quickstart
bgl results plot quickstart -o plots/quickstart
bgl results compare quickstart [--by solver] [--baseline naive] [--bootstrap 2000] [--plot]
bgl results importance quickstart [--format json]   # Optuna parameter importances
```
`--results-dir` (default `results`) and `--wide` go before or after the sub-command. In a
terminal a table fits the console (80 columns included): short headers, its essential columns
and the others while they fit; `--wide`, and output to a pipe or file, print every column with
its full name. Every handler takes
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
    reported_metric,
    solver_summary,
    sort_rows,
    study_directions,
    transfer_table,
)
from bgl.results.tables import WIDE_WIDTH, Column, fit_table, natural_width, short_names

DEFAULT_RESULTS_DIR = "results"
DEFAULT_PARETO = "psnr:max,peak_memory_mib:min"
VIEWS = ("transfer",)  # `bgl results show VIEW STUDY`
# columns every trials table has (sorting by one adds no column)
_SHOWN_ALWAYS = {"trial_id", "status", "solver", "wall_time_s", "peak_memory_mib"}
_STATUS_STYLE = {"completed": "green", "diverged": "yellow", "stopped": "cyan", "error": "red"}
_MORE = "more columns: --wide"

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
    parser.add_argument("--wide", action="store_true", help=_WIDE_HELP)
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
    p.add_argument(
        "--metric",
        help="metric to compare (default: test_<metric>, the test split's score of the "
        "study's metric)",
    )
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
        "--per",
        choices=("trial", "budget", "wall"),
        default="trial",
        help="trial: each trial's final metric; budget / wall: each trial's metric at the same "
        "number of F and G passes / seconds of training (the smallest final among the trials)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="equivalence margin for the two one-sided tests, in the metric's units "
        "(default 0.1: dB for PSNR)",
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


_WIDE_HELP = "every column, full headers (default: the columns that fit the console)"


def _results_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the sub-command it wins, otherwise the `results` default stands
    parser.add_argument("--results-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--wide", action="store_true", default=argparse.SUPPRESS, help=_WIDE_HELP)


def _width(args: argparse.Namespace, console: Console) -> int | None:
    """The width a default view fits; None (every column, full headers) under `--wide` and
    where the output is not a terminal (pipes, files: the full table, as before)."""
    wide = getattr(args, "wide", False) or console.width >= WIDE_WIDTH
    return None if wide else console.width


def _console(stderr: bool = False, wide: bool = False) -> Console:
    """Rich console on the current stdout/stderr; wide under `--wide` and when not a terminal
    (pipes, tests), so that no table is squeezed there."""
    stream = sys.stderr if stderr else sys.stdout
    wide = wide or (not stream.isatty() and "COLUMNS" not in os.environ)
    return Console(stderr=stderr, width=WIDE_WIDTH if wide else None)


def _out(args: argparse.Namespace) -> Console:
    """The stdout console of a table-printing command (`--wide`: 400 columns)."""
    return _console(wide=getattr(args, "wide", False))


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
    console = _out(args)
    if not studies:
        console.print(f"no studies under {args.results_dir}")
        return 1
    console.print(_list_table(studies, args.results_dir, _width(args, console)))
    for s in studies:
        if s.get("problem"):
            console.print(f"  {s['study']}: {s['problem']}", highlight=False, markup=False)
    return 0


def _list_table(studies: Sequence[Mapping[str, Any]], root: str, width: int | None) -> Table:
    """Narrow: study, counts (failure counts where any), metric, best; then trial, date, disk."""
    narrow = width is not None
    counts = ("trials", "completed", "diverged", "stopped", "errored")
    failures = counts[2:]
    cols = {
        "study": Column("study", justify="left"),
        **{name: Column(name, rank=1 if name in failures else 0) for name in counts},
        "metric": Column("metric", justify="left"),
        "best": Column("best"),
        "best trial": Column("best trial", justify="left", rank=1),
        "disk": Column("disk", rank=3),
        "last modified": Column("modified" if narrow else "last modified", justify="left", rank=2),
    }
    for s in studies:
        metric = f"{s['metric']} ({s['mode']})" if s["metric"] else "-"
        cells = {
            "study": escape(s["study"]),
            **{name: str(s[name]) for name in counts},
            "metric": metric,
            "best": _fmt(s["best"], ".4f"),
            "best trial": s["best_trial"] or "-",
            "disk": human_bytes(s["disk_bytes"]),
            "last modified": s["last_modified"].strftime(
                "%Y-%m-%d %H:%M" if narrow else "%Y-%m-%d %H:%M:%S"
            ),
        }
        for name, cell in cells.items():
            cols[name].cells.append(cell)
    shown = [c for name, c in cols.items() if not (narrow and name in failures and _zeros(c))]
    return fit_table(shown, width, title=f"studies in {root}", more=_MORE)


def _zeros(column: Column) -> bool:
    """Every cell 0 or '-': a column the narrow view leaves out."""
    return all(cell in ("0", "-") for cell in column.cells)


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
        console = _out(args)
        console.print(_transfer_table(rows, view_study, _width(args, console)))
        return 0
    rows = load_trials(args.results_dir, args.study)
    console = _out(args)
    width = _width(args, console)
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
    chosen = bool(getattr(args, "metrics", None))
    console.print(_trials_table(shown, rows, metrics, sort, mode, title, width, chosen))
    _print_errors(console, shown)
    _print_health_warnings(console, shown)

    summary = solver_summary(rows, metric, metric_mode(metric, rows) if metric else None)
    console.print(_summary_table(summary, metric, width))

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
        console.print(_pareto_table(rows, objectives, width))
    if is_transfer(rows):
        console.print(_transfer_table(rows, args.study, width))
    return 0


def _transfer_table(
    rows: Sequence[Mapping[str, Any]], study: str, width: int | None = None
) -> Table:
    """Table 3's layout: one row per model; n/a where its target was not run."""
    entries = transfer_table(rows)
    headers = [header for *_, header in TRANSFER_COLUMNS]
    cols = [
        Column("model", justify="left"),
        Column("basic task", justify="left"),
        Column("strategy", justify="left"),
        *(Column(header) for header in headers),
    ]
    for e in entries:
        model = escape(str(e["model"]))
        if e["source_status"] not in (None, "completed"):
            model += f" [{_STATUS_STYLE.get(e['source_status'], 'white')}]({e['source_status']})[/]"
        cells = [model, _fmt(e["basic_task"]), _fmt(e["strategy"])]
        cells += [_transfer_cell(e[h]) for h in headers]
        for col, cell in zip(cols, cells):
            col.cells.append(cell)
    return fit_table(
        cols,
        width,
        title=f"{study}: transfer of the generative block (Table 3)",
        title_justify="left",
        caption="EN: enhancement, DE: detection, SE: segmentation, each trained on the frozen "
        "generative block of its row; n/a: not run",
    )


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
    width: int | None = None,
    chosen: bool = False,
) -> Table:
    """One row per trial. Narrow (`width`): trial, status, solver, the sort metric and the step
    always, short parameter headers (`k`, `lr_F`); two parameters, the other metrics, wall time
    and memory, then the other parameters while they fit. `width` None: every column, full
    names. `chosen`: the metrics were asked for by name (all kept)."""
    narrow = width is not None
    params, constants = _searched_params(rows)
    caption = []
    if sort:
        caption.append(f"sorted by {sort} ({mode} first)")
    if len(shown) < len(rows):
        caption.append(f"top {len(shown)} of {len(rows)}")
    if constants:
        caption.append("constant: " + ", ".join(f"{k}={_fmt(v)}" for k, v in constants.items()))
    names = short_names(params) if narrow else {p: p.removeprefix("param.") for p in params}
    cols: list[tuple[Column, Callable[[Mapping[str, Any]], str]]] = [
        (Column("trial", justify="left"), lambda r: _fmt(r.get("trial_id"))),
        (Column("status", justify="left"), _status_cell),
        (Column("solver", justify="left"), lambda r: _fmt(r.get("solver"))),
    ]
    for i, p in enumerate(params):
        rank = 1 if i < 2 else 4
        cols.append((Column(names[p], rank=rank), lambda r, p=p: _fmt(r.get(p), ".4g")))
    for m in metrics:
        rank = 0 if m == sort or chosen or not narrow else 2
        cols.append(
            (
                Column(m, rank=rank, style="bold" if m == sort else None),
                lambda r, m=m: _fmt(r.get(m), _spec(m)),
            )
        )
    extra = sort if sort and sort not in metrics and sort not in _SHOWN_ALWAYS else None
    if extra and not extra.startswith("param."):
        cols.append((Column(extra, style="bold"), lambda r: _fmt(r.get(extra), _spec(extra))))
    cols.append((Column("step" if narrow else "steps"), lambda r: _fmt(r.get("steps"))))
    cols += [
        (Column("wall s", rank=3), lambda r: _fmt(r.get("wall_time_s"), ".1f")),
        (Column("MiB" if narrow else "peak MiB", rank=3), lambda r: _fmt(peak_mib(r), ".0f")),
    ]
    for r in shown:
        for col, cell in cols:
            col.cells.append(cell(r))
    return fit_table(
        [c for c, _ in cols],
        width,
        title=title,
        caption="; ".join(caption) or None,
        title_justify="left",
        more=_MORE,
    )


def _status_cell(row: Mapping[str, Any]) -> str:
    status = str(row.get("status"))
    return f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


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


def _summary_table(
    summary: Sequence[Mapping[str, Any]], metric: str | None, width: int | None = None
) -> Table:
    """Per solver. Narrow (`width`): the failure counts only where some trial failed so, and
    mean wall time and memory while they fit."""
    narrow = width is not None
    cols = {"solver": Column("solver", justify="left")}
    for name in ("trials", *STATUSES):
        cols[name] = Column(name, rank=0 if name in ("trials", "completed") else 1)
    if metric:
        cols["best"] = Column(f"best {metric}")
        cols["mean"] = Column(f"mean {metric}")
        cols["best_trial"] = Column("best trial", justify="left")
    cols["mean_wall_s"] = Column("wall s" if narrow else "mean wall s", rank=2)
    cols["mean_peak_mib"] = Column("MiB" if narrow else "mean peak MiB", rank=2)
    for s in summary:
        cells = {"solver": escape(s["solver"]), "trials": str(s["trials"])}
        cells |= {k: str(s[k]) for k in STATUSES}
        if metric:
            cells |= {
                "best": _fmt(s["best"], ".4f"),
                "mean": _fmt(s["mean"], ".4f"),
                "best_trial": s["best_trial"] or "-",
            }
        cells |= {
            "mean_wall_s": _fmt(s["mean_wall_s"], ".1f"),
            "mean_peak_mib": _fmt(s["mean_peak_mib"], ".0f"),
        }
        for name, cell in cells.items():
            cols[name].cells.append(cell)
    shown = [c for name, c in cols.items() if not (narrow and name in STATUSES[1:] and _zeros(c))]
    return fit_table(shown, width, title="per solver", title_justify="left", more=_MORE)


def _pareto_table(
    rows: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    width: int | None = None,
) -> Table:
    """The front's trials: trial, solver, objectives; the parameters while they fit."""
    front = pareto_front(rows, objectives)
    spec = ", ".join(f"{m} {mode}" for m, mode in objectives)
    params, _ = _searched_params(rows)
    narrow = width is not None
    names = short_names(params) if narrow else {p: p.removeprefix("param.") for p in params}
    cols = [Column("trial", justify="left"), Column("solver", justify="left")]
    cols += [Column(m, style="bold") for m, _ in objectives]
    cols += [Column(names[p], rank=1) for p in params]
    for r in front:
        cells = [_fmt(r.get("trial_id")), _fmt(r.get("solver"))]
        cells += [_fmt(r.get(m), _spec(m)) for m, _ in objectives]
        cells += [_fmt(r.get(p), ".4g") for p in params]
        for col, cell in zip(cols, cells):
            col.cells.append(cell)
    return fit_table(
        cols,
        width,
        title=f"Pareto front ({spec}): {len(front)} trials",
        title_justify="left",
        more=_MORE,
    )


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
    else:  # every column the query asked for: folded, never cut, where the console is narrow
        cols = [
            Column(
                escape(name),
                [_fmt(v, ".6g") for v in values],
                justify="right" if _numeric(values) else "left",
            )
            for name, values in zip(columns, data)
        ]
        console = _out(args)
        width = _width(args, console)
        caption = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
        table = fit_table(cols, width, caption=caption)
        if width is not None and natural_width(table) > width:
            for part in _records(columns, rows):  # too wide for the terminal: a row at a time
                console.print(part, highlight=False)
            console.print(f"{caption}; a row per table (as one table: --wide)", highlight=False)
        else:
            console.print(table)
    return 0


def _records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str | Table]:
    """Query rows as `column | value` tables, one per row: readable at any width."""
    parts: list[str | Table] = []
    for i, row in enumerate(rows, 1):
        parts.append(f"row {i}")
        cells = [escape(c) for c in columns], [_fmt(v, ".6g") for v in row]
        table = fit_table(
            [Column("column", cells[0], justify="left"), Column("value", cells[1], justify="left")],
            None,
            show_header=False,
        )
        parts.append(table)
    return parts


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
    "mde",
    "tost_p",
    "margin",
    "verdict",
    "interval",
)


@_handles_errors
def cmd_compare(args: argparse.Namespace) -> int:
    from bgl.analysis.compare import compare_groups, plot_comparison, plot_name
    from bgl.analysis.query import study_path

    rows = load_trials(args.results_dir, args.study)
    metric = args.metric or reported_metric(rows)
    if metric is None:
        raise ResultsError("no metric found in the trials: name one with --metric")
    per_notes: list[str] = []
    if args.per != "trial":
        from bgl.analysis.budget import AXES, at_equal_budget
        from bgl.analysis.query import load_history

        history = load_history(args.results_dir, args.study)
        rows, per_notes = at_equal_budget(rows, history, metric, AXES[args.per])
    result = {
        "study": args.study,
        "per": args.per,
        **compare_groups(
            rows,
            metric,
            by=args.by,
            baseline=args.baseline,
            bootstrap=args.bootstrap,
            check_budgets=args.per == "trial",
            **({} if args.margin is None else {"margin": args.margin}),
        ),
    }
    result["notes"] = per_notes + result["notes"]
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
        console = _out(args)
        for part in _compare_tables(result, _width(args, console)):  # headings as lines
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
                "mde": d.get("mde"),
                "tost_p": d.get("tost_p"),
                "margin": result["margin"],
                "verdict": d.get("verdict"),
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


def _per_words(result: Mapping[str, Any]) -> str:
    """How the values were read: final (nothing said), or at equal compute."""
    return {"budget": " at equal F+G passes", "wall": " at equal training time"}.get(
        result.get("per", "trial"), ""
    )


def _compare_tables(result: Mapping[str, Any], width: int | None = None) -> list[str | Table]:
    """Headings and tables: the groups, then their paired differences to the baseline.
    Narrow (`width`): short headers; `left out` and `unmatched` only where not all empty."""
    metric, by, spec = result["metric"], result["by"], _spec(result["metric"])
    narrow = width is not None
    by_header = short_names([by])[by] if narrow else by
    parts: list[str | Table] = [
        f"{escape(str(result.get('study')))}: {escape(metric)}{_per_words(result)} by "
        f"{escape(by)} ({result['mode']} is better); {_interval_words(result)} of the mean over "
        "seeds"
    ]
    cols = [Column(escape(by_header), justify="left")]
    cols += [Column(n) for n in ("n", "mean", "std", "95% CI")]
    cols.append(Column("left out", rank=1))
    for g in result["groups"]:
        failed = ", ".join(f"{n} {status}" for status, n in g["failed"].items() if n)
        if g["no_value"]:
            failed += (", " if failed else "") + f"{g['no_value']} no value"
        cells = [
            escape(str(g["label"])),
            str(g["n"]),
            _fmt(g["mean"], spec),
            _fmt(g["std"], spec),
            _ci(g["ci_low"], g["ci_high"], spec),
            failed or "-",
        ]
        for col, cell in zip(cols, cells):
            col.cells.append(cell)
    parts.append(fit_table(_drop_empty(cols, narrow), width, more=_MORE))
    if not result["differences"]:
        return parts
    base = escape(_baseline_label(result))
    parts.append(
        f"paired difference to {base} over the seeds both ran: Δ = group − {base} "
        f"({_favours(result)})"
    )
    parts[-1] += (
        f"; MDE: the smallest Δ the test detects at 80% power; equivalence: two one-sided "
        f"tests against ±{result['margin']:g}"
    )
    headers = (
        "pairs", "unmatched", "mean Δ", "95% CI of Δ", "p (paired t)", "CI excl. 0", "MDE",
        "TOST p", "verdict",
    )  # fmt: skip
    short = (
        "pairs", "unmatched", "mean Δ", "95% CI of Δ", "p (t)", "excl. 0", "MDE", "TOST p",
        "verdict",
    )  # fmt: skip
    cols = [Column(escape(by_header), justify="left")]
    for name in short if narrow else headers:
        rank = 1 if name in ("unmatched", "excl. 0", "CI excl. 0", "TOST p") else 0
        cols.append(Column(name, rank=rank, justify="left" if name == "verdict" else "right"))
    labels = {json.dumps(g["group"]): g["label"] for g in result["groups"]}
    for d in result["differences"]:
        excludes = d["excludes_zero"]
        cells = [
            escape(str(labels[json.dumps(d["group"])])),
            str(d["n_pairs"]),
            str(d["n_unmatched"]),
            _fmt(d["mean_diff"], spec),
            _ci(d["ci_low"], d["ci_high"], spec),
            _fmt(d["p_value"], ".3g"),
            "-" if excludes is None else ("yes" if excludes else "no"),
            _fmt(d["mde"], spec),
            _fmt(d["tost_p"], ".3g"),
            escape(d["verdict"]),
        ]
        for col, cell in zip(cols, cells):
            col.cells.append(cell)
    parts.append(fit_table(_drop_empty(cols, narrow), width, more=_MORE))
    return parts


def _drop_empty(cols: list[Column], narrow: bool) -> list[Column]:
    """Narrow view: without the optional columns whose cells are all 0 or '-'."""
    return [c for c in cols if not (narrow and c.rank > 0 and _zeros(c))]


def _compare_markdown(result: Mapping[str, Any]) -> str:
    """A GitHub/pandoc pipe table: one row per group, its paired difference to the baseline."""
    spec = _spec(result["metric"])
    base = _baseline_label(result)
    lines = [
        f"**{result['metric']}{_per_words(result)} by {result['by']}** ({result['mode']} is "
        "better; "
        f"{_interval_words(result)} of the mean over seeds; Δ = group − {base}, paired by seed, "
        f"{_favours(result)})",
        "",
        f"| {result['by']} | n | mean ± std | 95% CI | Δ vs {base} | 95% CI of Δ | p (paired t) "
        f"| pairs | MDE (80%) | verdict (margin ±{result['margin']:g}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
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
            "—" if is_base else _fmt(entry["mde"], spec),
            "—" if is_base else str(entry["verdict"]),
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
    cols = [Column("parameter", [escape(p) for p in params], justify="left")]
    for o in objectives:
        cells = [_fmt(o["importances"].get(p), ".3f") for p in params]
        cols.append(Column(f"{escape(o['name'])} ({o['direction']})", cells))
    console = _out(args)
    table = fit_table(cols, _width(args, console))
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
