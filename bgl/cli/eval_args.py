"""What every `bgl eval <task>` command shares: checkpoint and test-split arguments, loading the
trained pair with its test split, and iterating the split under a progress bar."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from typing import Any

from rich.console import Console


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
