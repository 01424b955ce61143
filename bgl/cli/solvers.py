"""`bgl solvers`: the solver registry — names, what each reads, default search ranges."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rich.table import Table

from bgl.cli.args import console


def add_solvers_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "solvers",
        help="list the hypergradient solvers, the solver.* keys each reads and their defaults",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_solvers)
    return p


def solver_listing() -> list[dict[str, Any]]:
    """One entry per registered solver: its keys with default value and search range."""
    from bgl.config import SolverConfig
    from bgl.solvers import KEYS, SOLVERS

    defaults = dataclasses.asdict(SolverConfig())
    return [
        {
            "name": s.name,
            "label": s.label,
            "summary": s.summary,
            "takes_k": s.takes_k,
            "joint": s.joint,
            "keys": {
                key: {
                    "default": defaults[key],
                    "search": None if KEYS[key].search is None else dict(KEYS[key].search),
                    "doc": KEYS[key].doc,
                }
                for key in s.keys
            },
        }
        for s in SOLVERS.values()
    ]


def _solvers(args: argparse.Namespace) -> int:
    listing = solver_listing()
    if args.format == "json":
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return 0
    table = Table(title="solvers (solver.name)", title_justify="left", show_lines=True)
    for column in ("name", "what it computes", "solver.* keys (default; search: default range)"):
        table.add_column(column)
    for entry in listing:
        keys = "\n".join(
            f"{key} = {spec['default']}"
            + (f"; search: {_range(spec['search'])}" if spec["search"] else "")
            for key, spec in entry["keys"].items()
        )
        table.add_row(entry["name"], entry["summary"], keys or "-")
    console.print(table)
    console.print(
        "A study samples a key only for the solvers that read it; "
        "`search.params: {solver.iterations: default}` uses the default range."
    )
    return 0


def _range(spec: dict[str, Any]) -> str:
    if spec["type"] == "categorical":
        return "{" + ", ".join(map(str, spec["choices"])) + "}"
    log = " log" if spec.get("log") else ""
    return f"{spec['type']} [{spec['low']}, {spec['high']}]{log}"
