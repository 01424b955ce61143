"""`bgl study run`: run, resume or extend a study (local Ray, or a cluster)."""

from __future__ import annotations

import argparse
from typing import Any

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
        "--dashboard", action="store_true", help="local mode: Ray dashboard on 127.0.0.1"
    )
    s.set_defaults(func=study_run_command)


def study_run_command(args: argparse.Namespace) -> int:
    from bgl.study.runner import run_study
    from bgl.study.schema import load_study

    study = load_study(args.study, args.set)  # fails before Ray starts, naming the key
    folder = run_study(
        study,
        address=args.address,
        resume=args.resume,
        extend=args.extend,
        live=not args.no_live,
        dashboard=args.dashboard,
    )
    show = "show transfer" if study.transfer is not None else "show"
    console.print(f"results: {folder} (bgl results {show} {study.name})")
    return 0
