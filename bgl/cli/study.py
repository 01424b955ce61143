"""`bgl study run`: run, resume or extend a study (local Ray, or a cluster); `bgl study plan`: the
trials it will run, without Ray."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from bgl.cli.args import add_set_argument, console


def add_study_command(subparsers: Any) -> None:
    study = subparsers.add_parser("study", help="Ray Tune + Optuna studies")
    ssub = study.add_subparsers(dest="study_command", required=True)
    s = ssub.add_parser("run", help="run or resume a study (local Ray, or a cluster)")
    s.add_argument("study", help="study YAML (e.g. studies/quickstart.yaml)")
    s.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto, or ray://host:10001 (default: start a local Ray)",
    )
    s.add_argument("--resume", action="store_true", help="finish an interrupted study")
    s.add_argument(
        "--extend",
        type=int,
        default=None,
        metavar="N",
        help="run N more trials on a finished study (same Optuna study and tables)",
    )
    add_set_argument(s, "a study key, e.g. --set search.num_samples=12")
    s.add_argument("--no-live", action="store_true", help="no live trial table")
    s.add_argument(
        "--wide", action="store_true", help="the live table with every column at full names"
    )
    s.add_argument(
        "--dashboard", action="store_true", help="local mode: Ray dashboard on 127.0.0.1"
    )
    s.set_defaults(func=study_run_command)
    p = ssub.add_parser("plan", help="list the trials a study will run (starts no Ray)")
    p.add_argument("study", help="study YAML (e.g. studies/solver_ablation.yaml)")
    add_set_argument(p, "a study key, e.g. --set search.num_samples=12")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument(
        "--wide", action="store_true", help="the table at full width (default: fits the terminal)"
    )
    p.add_argument(
        "--detect",
        type=float,
        metavar="EFFECT",
        help="with --pilot: the seeds each paired comparison needs to detect a difference of "
        "EFFECT (the metric's units) at 80%% power, from the pilot's spread",
    )
    p.add_argument("--pilot", metavar="STUDY", help="a finished study whose spread plans --detect")
    p.add_argument("--metric", help="with --detect: the metric (default: the study's first)")
    p.set_defaults(func=study_plan_command)


def study_run_command(args: argparse.Namespace) -> int:
    from bgl.study.runner import run_study
    from bgl.study.schema import load_study

    study = load_study(args.study, args.set)  # fails before Ray starts, naming the key
    folder = run_study(
        study,
        address=args.address,
        resume=args.resume,
        extend=args.extend,
        live=False if args.no_live else ("wide" if args.wide else True),
        dashboard=args.dashboard,
    )
    show = "show transfer" if study.transfer is not None else "show"
    console.print(f"results: {folder} (bgl results {show} {study.name})")
    return 0


def study_plan_command(args: argparse.Namespace) -> int:
    from bgl.study.preview import plan_trials
    from bgl.study.schema import load_study

    with contextlib.redirect_stdout(sys.stderr if args.format == "json" else sys.stdout):
        study = load_study(args.study, args.set)  # log lines (warnings) stay out of the JSON
        plan = plan_trials(study)
        detect = _detect(args, study)
    if args.format == "json":
        print(json.dumps({**plan, "detect": detect}, indent=2, default=str))
        return 0
    _print_plan(plan, wide=getattr(args, "wide", False))
    if detect is not None:
        _print_detect(detect, args.pilot)
    return 0


def _detect(args: argparse.Namespace, study: Any) -> list[dict[str, Any]] | None:
    """`--detect EFFECT --pilot STUDY`: seeds needed per paired comparison (None unless asked)."""
    from bgl.config import ConfigError

    if args.detect is None and args.pilot is None:
        return None
    if args.detect is None or args.pilot is None:
        raise ConfigError("--detect and --pilot go together: the effect, and whose spread")
    from bgl.analysis.compare import seeds_to_detect
    from bgl.analysis.query import load_trials

    rows = load_trials(study.output_dir, args.pilot)
    metric = args.metric or study.objectives[0].metric
    return seeds_to_detect(rows, metric, args.detect)


def _print_detect(detect: list[dict[str, Any]], pilot: str) -> None:
    from rich.table import Table

    table = Table(title=f"seeds to detect a paired difference (80% power; spread from {pilot})")
    for name in ("comparison", "pilot pairs", "std of Δ", "pilot MDE", "effect", "seeds needed"):
        table.add_column(name, justify="left" if name == "comparison" else "right")
    for d in detect:
        table.add_row(
            escape(f"{d['group']} vs {d['baseline']}"),
            str(d["pilot_pairs"]),
            _g(d["std_diff"]),
            _g(d["pilot_mde"]),
            _g(d["effect"]),
            "-" if d["seeds_needed"] is None else str(d["seeds_needed"]),
        )
    console.print(table)


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _print_plan(plan: dict[str, Any], wide: bool = False, out: Console | None = None) -> None:
    """The plan's header lines and trial table. Cells wrap, then fold, where the terminal is
    narrow (never an ellipsis); `wide`: a 400-column console, nothing wrapped."""
    from rich.table import Table

    from bgl.results.tables import WIDE_WIDTH

    out = out or (Console(width=WIDE_WIDTH) if wide else console)

    r = plan["resources"]
    trials = plan["trials"]
    transfer = plan["type"] == "transfer"
    objectives = ", ".join(f"{o['metric']} ({o['mode']})" for o in plan["objectives"])
    if transfer:
        stage1 = sum(row["stage"] == 1 for row in trials)
        sampler = (
            f"fixed two-stage design: {stage1} stage-1 sources (rows 1-{stage1}) train F, then "
            f"{len(trials) - stage1} stage-2 targets on each frozen F"
        )
        objectives = f"each trial's task metric: {objectives}"
    else:
        sampler = plan["sampler"] + (
            f", scheduler {plan['scheduler']}" if plan["scheduler"] else ""
        )
    # a setting every trial shares goes in the header, not in a column
    shared = {
        name: values.pop()
        for name, values in (
            ("task", {row["task"] for row in trials}),
            ("data", {_value(row["settings"]["data.name"]) for row in trials}),
        )
        if len(values) == 1 and None not in values and not transfer
    }
    lines = [
        f"[bold]{escape(plan['study'])}[/bold] ({plan['type']}) from {escape(str(plan['source']))}",
        f"sampler: {sampler}",
        f"objective: {escape(objectives)}",
        f"trials: {plan['num_trials']}; per trial: {r['workers_per_trial']} worker(s) x "
        f"{r['cpus_per_worker']:g} CPU, {r['gpus_per_worker']:g} GPU ({r['launcher']}); "
        f"at most {r['max_concurrent_trials']} at once",
    ]
    if shared:
        lines.append("; ".join(f"{name}: {escape(str(value))}" for name, value in shared.items()))
    if plan["space"]:
        ranges = "; ".join(
            f"{s['path']} {s['type']} {s['range']}"
            + (f" ({', '.join(s['solvers'])} only)" if s.get("solvers") else "")
            for s in plan["space"]
        )
        lines.append(f"sampled by {plan['sampler']}: {escape(ranges)}")
    for line in lines:
        out.print(line, highlight=False)
    if transfer:
        columns = ["#", "trial", "source F", "metric", "data"]
    else:
        columns = ["#", "trial"] + (["task"] if "task" not in shared else [])
        columns += ["solver", "parameters"] + (["data"] if "data" not in shared else [])
    table = Table()
    for column in [*columns, "k", "warm+steps"]:
        justify = "right" if column in ("#", "k") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for first, last, row in _collapse(trials):
        s = row["settings"]
        cells = {
            "#": str(first) if first == last else f"{first}-{last}",
            "k": _value(s["solver.k"]),
            "warm+steps": f"{_value(s['train.warm_steps'])}+{_value(s['train.steps'])}",
            "data": _value(s["data.name"]),
        }
        if transfer:
            target = row["target_task"]
            cells["trial"] = row["model"] + (f" -> {target}" if target else "")
            cells["source F"] = f"{row['source_task']}/{row['strategy']}"
            cells["metric"] = row["objective"]["metric"]
        else:
            cells["trial"] = _kind(row, plan["sampler"], last - first + 1)
            cells["task"] = row["task"] or "sampled"
            cells["solver"] = row["solver"] or "sampled"
            cells["parameters"] = _params(row)
        table.add_row(*(escape(cells[c]) for c in [*columns, "k", "warm+steps"]))
    out.print(table)


def _collapse(trials: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """Consecutive sampled rows that are alike become one row (first index, last index, row)."""
    out: list[tuple[int, int, dict[str, Any]]] = []
    for row in trials:
        if out and row["kind"] == "sampled" and out[-1][2]["kind"] == "sampled":
            first, _, prev = out[-1]
            if {**prev, "index": 0} == {**row, "index": 0}:
                out[-1] = (first, row["index"], prev)
                continue
        out.append((row["index"], row["index"], row))
    return out


def _kind(row: dict[str, Any], sampler: str, count: int) -> str:
    if row["kind"] == "sampled":
        return sampler + (f" x{count}" if count > 1 else "")
    if row["kind"] == "grid" and row.get("sample", 1) > 1:
        return f"grid #{row['sample']}"
    return row["kind"]


def _params(row: dict[str, Any]) -> str:
    """One line each: the fixed values, what the sampler draws, the unused keys of a point."""
    lines = [
        f"{path}={value}"
        for path, value in row["params"].items()
        if path not in ("task.name", "solver.name")
    ]
    sampled = [p for p in row["sampled"] if p not in ("task.name", "solver.name")]
    if sampled:
        lines.append("sampled: " + ", ".join(sampled))
    if row.get("ignored"):
        lines.append("ignored (never asked): " + ", ".join(row["ignored"]))
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A setting: its value, or per solver where it differs (`naive 1, ibgl 1..4`)."""
    if isinstance(value, dict):
        return "\n".join(f"{solver} {v}" for solver, v in value.items())
    return str(value)
