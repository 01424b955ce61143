"""`bgl eval segment`: the paper's Table 2 (per-class IoU and mIoU) of a trained checkpoint.

    bgl eval segment --checkpoint results/runs/paper_segment/checkpoint.pt --data-root /data/ACDC

prints one row in the layout of the paper's Table 2: the IoU (in %) of the 19 Cityscapes
classes, RO SI BU WA FE PO TL TS VE TE SK PE RI CA TR BU TR MO BI, then mIoU. A class that
occurs neither in the test labels nor in the predictions has no IoU and is shown as "-" (it is
left out of the mIoU). --json writes IoUs as fractions under unique keys (iou_bu = building,
iou_bu2 = bus, iou_tr = truck, iou_tr2 = train; see `bgl.metrics.segmentation`).

`add_eval_segment_command` adds the command to the `eval` subparsers that
`bgl.cli.eval.add_eval_command` returns; library imports happen inside the handler so
`bgl --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bgl.cli.eval_args import add_checkpoint_arguments, load_for_eval, split_batches


def add_eval_segment_command(eval_subparsers: Any) -> argparse.ArgumentParser:
    """Add `segment` to the `eval` subparsers; returns its parser."""
    p = eval_subparsers.add_parser(
        "segment",
        help="the paper's Table 2: per-class IoU and mIoU on a test split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(p, "acdc", crop=False)
    p.add_argument("--json", dest="json_path", default=None, help="also write the row as JSON")
    p.set_defaults(func=run_eval_segment)
    return p


def run_eval_segment(args: argparse.Namespace, console: Console | None = None) -> int:
    """Handler of `bgl eval segment`: load, evaluate on the test split, print; exit code."""
    from bgl.metrics.segmentation import CITYSCAPES_CLASSES, IOU_KEYS, TABLE2_ABBREVIATIONS

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: room for all 21 columns
            console = Console(width=160)
    run, test = load_for_eval(args, "segment")
    cfg, n_images = run.cfg, len(test)
    results = run.task.evaluate(run.upper, run.lower, split_batches(run, test, console))

    title = f"{cfg.name}: {cfg.data.name} test split, {n_images} images (step {run.step})"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("Method", no_wrap=True)
    for abbr in TABLE2_ABBREVIATIONS:
        table.add_column(abbr, justify="right", no_wrap=True)
    table.add_column("mIoU", justify="right", no_wrap=True)
    row = [f"{cfg.name} ({cfg.solver.name.upper()})"]
    row += [f"{100 * results[k]:.1f}" if k in results else "-" for k in IOU_KEYS]
    row.append(f"{100 * results['miou']:.1f}")
    table.add_row(*row)
    console.print(table)
    console.print(
        "IoU in %; "
        + ", ".join(f"{a} {c}" for a, c in zip(TABLE2_ABBREVIATIONS, CITYSCAPES_CLASSES))
    )
    if args.json_path:
        row_json = {
            "checkpoint": str(args.checkpoint),
            "run": cfg.name,
            "solver": cfg.solver.name,
            "data": cfg.data.name,
            "images": n_images,
            "miou": results["miou"],
            "iou": {k: results.get(k) for k in IOU_KEYS},
            "extra": {k: v for k, v in results.items() if k != "miou" and k not in IOU_KEYS},
        }
        Path(args.json_path).write_text(json.dumps(row_json, indent=2) + "\n")
        console.print(f"written: {args.json_path}")
    return 0
