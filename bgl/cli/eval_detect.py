"""`bgl eval detect`: DARK FACE AP of a trained checkpoint on a test split, and its PR curve.

    bgl eval detect --checkpoint results/runs/detect/checkpoint.pt --data-root /data/DarkFace

prints AP at IoU 0.5 (VOC all-point, the DARK FACE protocol) and writes, to --output-dir
(default: the checkpoint's folder), `pr_curve.parquet` (one row per ranked detection: rank,
score, true_positive, precision, recall, num_gt) and `pr_curve.png`.

Wired into the CLI by `bgl.cli` through `add_eval_detect_command`; imports of the library happen
inside the handler so `bgl --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from bgl.cli.eval_args import add_checkpoint_arguments, load_for_eval, split_batches


def add_eval_detect_command(eval_subparsers: Any) -> Any:
    """Add `detect` to `eval`'s subparsers (see `bgl.cli.eval.add_eval_command`)."""
    p = eval_subparsers.add_parser(
        "detect",
        help="face detection AP (IoU 0.5, VOC all-point) and the PR curve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(p, "darkface")
    p.add_argument(
        "--output-dir",
        default=None,
        help="folder for pr_curve.parquet and pr_curve.png (default: the checkpoint's folder)",
    )
    p.set_defaults(func=run_eval_detect)
    return p


def plot_pr_curve(curve: Any, path: Path, title: str) -> Path:
    """The precision-recall curve as a PNG (matplotlib's Agg canvas; written atomically)."""
    from bgl.analysis.plots import new_figure, save_figure

    fig, ax = new_figure()
    ax.plot([0.0, *curve.recall.tolist()], [1.0, *curve.precision.tolist()], color="tab:blue")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run_eval_detect(args: argparse.Namespace, console: Console | None = None) -> int:
    """Handler of `bgl eval detect`: load, evaluate the test split, print AP, write the curve."""
    from bgl.results.parquet import write_rows

    console = console or Console()
    run, test = load_for_eval(args, "detect")
    cfg, n_images = run.cfg, len(test)
    metrics, curve = run.task.evaluate_curve(  # type: ignore[attr-defined]
        run.upper, run.lower, split_batches(run, test, console)
    )
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent
    table = write_rows(curve.rows(), out_dir / "pr_curve.parquet")
    title = (
        f"{cfg.name} ({cfg.solver.name.upper()}): {cfg.data.name} test, {n_images} images, "
        f"{curve.num_gt} faces - AP {metrics['ap']:.4f}"
    )
    png = plot_pr_curve(curve, out_dir / "pr_curve.png", title)
    console.print(
        f"{cfg.name} ({cfg.solver.name.upper()}) step {run.step}: {cfg.data.name} test split, "
        f"{n_images} images, {curve.num_gt} faces"
    )
    console.print(
        f"AP@0.5 (VOC all-point) {metrics['ap']:.4f}   recall {metrics['recall']:.4f}   "
        f"detections/image {metrics['detections_per_image']:.1f}"
    )
    console.print(f"written: {table}\nwritten: {png}")
    return 0
