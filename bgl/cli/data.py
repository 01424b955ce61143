"""`bgl data prepare`: decode a dataset once into its packed cache (resumable).

`add_data_commands` adds the parser; the handler returns an exit code (0 ok, 2 bad input).
Heavy imports happen inside the handler so `bgl --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bgl.cli.args import console, error
from bgl.data.splits import REAL_DATASETS

log = logging.getLogger(__name__)


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """``bgl data prepare {sid,darkface,acdc} --root DIR [--cache DIR] [--skip-bad] ...``."""
    data = subparsers.add_parser("data", help="datasets: decode once into the packed cache")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser(
        "prepare",
        help="decode a dataset once into memory-mappable arrays (resumable)",
        description="Decode every RAW/PNG file of a dataset once into .npy arrays with a Parquet "
        "manifest; a second run skips what is done, an interrupted run leaves no partial entry.",
    )
    p.add_argument("dataset", choices=REAL_DATASETS)
    p.add_argument("--root", required=True, help="the dataset folder, in its published layout")
    p.add_argument(
        "--cache",
        default=None,
        help="cache base folder; arrays go to CACHE/<dataset> (default: ROOT/.bgl-cache)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable files and broken lists/labels, count and list them "
        "(default: stop at the first, naming the file and line)",
    )
    p.add_argument("--verify", action="store_true", help="re-hash cached arrays, redo bad ones")
    p.add_argument("--force", action="store_true", help="decode everything again")
    p.set_defaults(func=prepare_command)
    return data


def prepare_command(args: argparse.Namespace) -> int:
    """Decode a dataset into its packed cache and print a summary (bad items listed)."""
    from bgl.data.cache import PackedCache, default_cache_dir, prepare_items
    from bgl.data.errors import DataError
    from bgl.data.prepare import prepare_plan

    root = Path(args.root)
    if not root.is_dir():
        error(f"--root {root} is not a folder")
        return 2
    cache_dir = default_cache_dir(root, args.dataset, args.cache)
    try:
        items, decode, bad = prepare_plan(args.dataset, root, args.skip_bad)
        cache = PackedCache(cache_dir, args.dataset, root)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task(f"prepare {args.dataset}", total=len(items))

            def advance(done: int, total: int, key: str) -> None:
                progress.update(task, completed=done, description=f"prepare {args.dataset}")

            summary = prepare_items(
                cache,
                items,
                decode,
                skip_bad=args.skip_bad,
                verify=args.verify,
                force=args.force,
                progress=advance,
            )
    except DataError as exc:
        error(str(exc))
        if not args.skip_bad:
            console.print("(rerun with --skip-bad to skip such items and list them)")
        return 2
    bad_items = [*bad.items, *summary.bad]
    table = Table(title=f"bgl data prepare {args.dataset}")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_row("cache", str(cache_dir))
    table.add_row("items", str(summary.total))
    table.add_row("decoded now", str(summary.decoded))
    table.add_row("already cached", str(summary.reused))
    table.add_row("failed checksum, redone", str(len(summary.corrupt)))
    table.add_row("bad, skipped", str(len(bad_items)))
    table.add_row("written (GiB)", f"{summary.bytes_written / 2**30:.3f}")
    table.add_row("time (s)", f"{summary.seconds:.1f}")
    console.print(table)
    if bad_items:
        console.print(f"[yellow]{len(bad_items)} bad item(s) skipped:[/yellow]")
        for item in bad_items:
            console.print(f"  {item}", markup=False, highlight=False, soft_wrap=True)
    return 0
