"""`bgl train`: one training run on this machine (CPU or one GPU)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from bgl.cli.args import add_set_argument, console


def add_train_command(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="one training run on this machine (CPU or one GPU)")
    p.add_argument("config", help="run YAML (e.g. studies/quickstart.yaml)")
    add_set_argument(p, "a config key, e.g. --set solver.name=tbgl")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from bgl.config import load
    from bgl.train.local import train_local

    cfg = load(args.config, args.set)
    summary = train_local(cfg, resume=args.resume, overwrite=args.overwrite, console=console)
    table = Table(title=f"{cfg.name}: {summary['status']} after {summary['steps']} steps")
    table.add_column("metric")
    table.add_column("final", justify="right")
    for key, value in summary["final"].items():
        table.add_row(key, f"{value:.4f}")
    if summary["best"]:
        b = summary["best"]
        table.add_row(f"best {b['metric']} (step {b['step']})", f"{b['value']:.4f}")
    table.add_row("wall time (s)", f"{summary['wall_time_s']:.1f}")
    table.add_row("peak memory (MiB)", f"{summary['peak_memory_bytes'] / 2**20:.0f}")
    console.print(table)
    console.print(f"outputs: {summary['run_dir']}")
    if summary["status"] != "completed":
        console.print(f"[red]{summary['status']}: {summary['error']}")
        return 1
    return 0
