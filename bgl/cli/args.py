"""What the command modules share: the console, error lines, and arguments several commands
declare (`--set`, the model and crop sizes of the benchmarks, `--output-dir`)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

console = Console()

BENCH_DIR = "results/bench"


def error(message: str) -> None:
    """An error line that is never wrapped (paths stay copyable) nor read as markup."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {example} (repeatable)",
    )


def add_size_arguments(
    parser: argparse.ArgumentParser,
    *,
    crop: int,
    batch_size: int,
    width: int,
    lower_width: int | None = None,
    batch_help: str | None = None,
) -> None:
    """--crop, --batch-size, --width (F's base width) and, if given, --lower-width (G's)."""
    parser.add_argument("--crop", type=int, default=crop, help="RGB crop side (px)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--width", type=int, default=width, help="generative block base width")
    if lower_width is not None:
        parser.add_argument(
            "--lower-width", type=int, default=lower_width, help="enhancement network width"
        )


def add_output_dir(parser: argparse.ArgumentParser, default: str = BENCH_DIR) -> None:
    parser.add_argument("--output-dir", default=default, help=f"where rows go (default {default})")
