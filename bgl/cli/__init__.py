"""The `bgl` command: thin argument parsing over the library; heavy imports happen lazily.

One module per command group (train, study, data, develop, eval, results, solvers, bench), each
adding its parsers with `add_*` and handling them; shared arguments and the console in
`bgl.cli.args`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rich.logging import RichHandler

from bgl.cli.args import console


def build_parser() -> argparse.ArgumentParser:
    from bgl.cli.bench import add_bench_commands
    from bgl.cli.data import add_data_commands
    from bgl.cli.develop import add_develop_command
    from bgl.cli.eval import add_eval_command, add_eval_detect_command, add_eval_segment_command
    from bgl.cli.results import add_results_command
    from bgl.cli.solvers import add_solvers_command
    from bgl.cli.study import add_study_command
    from bgl.cli.train import add_train_command

    parser = argparse.ArgumentParser(
        prog="bgl", description="Bilevel generative learning for low-light vision"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_study_command(sub)
    add_data_commands(sub)
    add_develop_command(sub)
    eval_sub = add_eval_command(sub)
    add_eval_detect_command(eval_sub)
    add_eval_segment_command(eval_sub)
    add_results_command(sub)
    add_solvers_command(sub)
    add_bench_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    from bgl.config import ConfigError
    from bgl.results.parquet import ResultsWriteError
    from bgl.train.local import RunExistsError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, RunExistsError, ResultsWriteError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
