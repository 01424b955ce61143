"""CLI commands of the data layer: ``bgl data prepare``, ``bgl develop``, ``bgl bench data``.

Each ``add_*`` function adds its parser(s) to an argparse sub-parser group and sets ``func=`` to a
handler that takes the parsed Namespace and returns an exit code (0 ok, 2 bad input). Heavy
imports happen inside the handlers so ``bgl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = [
    "DATASETS",
    "add_data_bench_command",
    "add_data_commands",
    "add_develop_command",
    "bench_data_command",
    "develop_command",
    "prepare_command",
]

log = logging.getLogger(__name__)
console = Console()

DATASETS = ("sid", "darkface", "acdc")


def _error(message: str) -> None:
    """An error line that is never wrapped (paths stay copyable) nor read as markup."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


# -- bgl data prepare -----------------------------------------------------------------------------


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
    p.add_argument("dataset", choices=DATASETS)
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


def _prepare_plan(dataset: str, root: Path, skip_bad: bool) -> tuple[list, Any, Any]:
    """(items, decoder, bad-item log) of one dataset."""
    from bgl.data.errors import BadItemLog

    bad = BadItemLog(skip_bad, dataset)
    if dataset == "sid":
        from bgl.data.sid import decode_sid, sid_prepare_items

        return sid_prepare_items(root, bad), decode_sid(root), bad
    if dataset == "darkface":
        from bgl.data.darkface import darkface_prepare_items, decode_darkface

        return darkface_prepare_items(root, bad), decode_darkface(root), bad
    if dataset == "acdc":
        from bgl.data.acdc import acdc_prepare_items, decode_acdc

        return acdc_prepare_items(root, bad), decode_acdc(root), bad
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


def prepare_command(args: argparse.Namespace) -> int:
    """Decode a dataset into its packed cache and print a summary (bad items listed)."""
    from bgl.data.cache import PackedCache, default_cache_dir, prepare_items
    from bgl.data.errors import DataError

    root = Path(args.root)
    if not root.is_dir():
        _error(f"--root {root} is not a folder")
        return 2
    cache_dir = default_cache_dir(root, args.dataset, args.cache)
    try:
        items, decode, bad = _prepare_plan(args.dataset, root, args.skip_bad)
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
        _error(str(exc))
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


# -- bgl develop ------------------------------------------------------------------------------


def _ratio(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the ratio must be positive, got {value}")
    return value


def add_develop_command(subparsers: Any) -> argparse.ArgumentParser:
    """``bgl develop PHOTO --checkpoint GB.pt [--ratio R] -o out.png``."""
    p = subparsers.add_parser(
        "develop",
        help="develop a camera RAW file (ARW, DNG, NEF, CR2, ...) with a trained generative block",
        description="Runs the generative block (and optionally the enhancement network) on a "
        "full-resolution RAW file, tiled with overlap so any frame fits in memory.",
    )
    p.add_argument("photo", help="camera RAW file LibRaw can read (Bayer sensors)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint (checkpoint.pt) or a GenerativeBlock state dict",
    )
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: PHOTO.png)")
    p.add_argument(
        "--ratio",
        type=_ratio,
        default="auto",
        help="exposure amplification, as SID's ratio (default: auto, mean linear RAW -> 0.1)",
    )
    p.add_argument("--width", type=int, default=None, help="generator width (checked vs weights)")
    p.add_argument("--enhance", action="store_true", help="also run the enhancement network G")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.add_argument("--tile", type=int, default=512, help="tile side in packed pixels")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in packed pixels")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=develop_command)
    return p


def develop_command(args: argparse.Namespace) -> int:
    """Develop one photo and print what was done."""
    from bgl.develop import develop_file
    from bgl.raw.read import RawReadError

    output = args.output or str(Path(args.photo).with_suffix(".png"))
    try:
        result = develop_file(
            args.photo,
            args.checkpoint,
            output,
            ratio=args.ratio,
            width=args.width,
            enhance=args.enhance,
            bits=args.bits,
            tile=args.tile,
            overlap=args.overlap,
            device=args.device,
        )
    except (RawReadError, FileNotFoundError, ValueError) as exc:
        _error(str(exc))
        return 2
    table = Table(title=f"bgl develop {Path(args.photo).name}")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_row("output", result.output)
    table.add_row("size", f"{result.output_shape[1]} x {result.output_shape[0]}, {result.bits} bit")
    table.add_row("CFA", result.pattern)
    table.add_row("ratio", f"{result.ratio:.1f}")
    table.add_row("generator width", str(result.width))
    table.add_row("enhancement network", "yes" if result.enhanced else "no")
    table.add_row("time (s)", f"{result.seconds:.1f}")
    console.print(table)
    return 0


# -- bgl bench data ---------------------------------------------------------------------------


def add_data_bench_command(bench_subparsers: Any) -> argparse.ArgumentParser:
    """``bgl bench data``: on-the-fly decoding vs the packed cache vs the training step."""
    from bgl.bench.data import DataBenchConfig

    d = DataBenchConfig()
    b = bench_subparsers.add_parser(
        "data",
        help="samples/s: on-the-fly decoding vs the packed cache vs one training step",
    )
    b.add_argument(
        "--datasets", default=",".join(d.datasets), help="comma-separated: sid,darkface,acdc"
    )
    b.add_argument("--sid-crop", type=int, default=d.sid_crop, help="RGB crop (packed = half)")
    b.add_argument("--darkface-crop", type=int, default=d.darkface_crop)
    b.add_argument("--acdc-crop", type=int, default=d.acdc_crop)
    b.add_argument(
        "--sid-size",
        type=int,
        nargs=2,
        default=list(d.sid_size),
        metavar=("H", "W"),
        help="synthesised SID frame (default: the a7S II's 2848 x 4256)",
    )
    b.add_argument("--darkface-size", type=int, nargs=2, default=list(d.darkface_size))
    b.add_argument("--acdc-size", type=int, nargs=2, default=list(d.acdc_size))
    b.add_argument("--samples", type=int, default=d.samples, help="timed on-the-fly samples")
    b.add_argument("--cache-samples", type=int, default=d.cache_samples)
    b.add_argument("--width", type=int, default=d.width, help="generator width of the step")
    b.add_argument("--lower-width", type=int, default=d.lower_width)
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--solver", default=d.solver, choices=("naive", "tbgl", "ibgl"))
    b.add_argument("--no-step", action="store_true", help="skip timing the training step")
    b.add_argument("--device", default=d.device)
    b.add_argument("--workdir", default=None, help="where to write the files (default: a temp dir)")
    b.add_argument("--keep", action="store_true", help="keep the synthesised files")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=bench_data_command)
    return b


def bench_data_command(args: argparse.Namespace) -> int:
    from bgl.bench.data import DataBenchConfig, print_table, run_data_bench

    datasets = tuple(s.strip() for s in args.datasets.split(",") if s.strip())
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        _error(f"unknown dataset(s) {unknown}; choose from {DATASETS}")
        return 2
    cfg = DataBenchConfig(
        datasets=datasets,
        sid_crop=args.sid_crop,
        darkface_crop=args.darkface_crop,
        acdc_crop=args.acdc_crop,
        sid_size=tuple(args.sid_size),
        darkface_size=tuple(args.darkface_size),
        acdc_size=tuple(args.acdc_size),
        samples=args.samples,
        cache_samples=args.cache_samples,
        width=args.width,
        lower_width=args.lower_width,
        batch_size=args.batch_size,
        solver=args.solver,
        step=not args.no_step,
        device=args.device,
        workdir=args.workdir,
        keep=args.keep,
    )
    rows = run_data_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
    return 0
