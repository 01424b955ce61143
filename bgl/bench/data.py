"""`bgl bench data`: how fast samples arrive, decoded on the fly vs from the packed cache,
against how fast one training step consumes them.

For each dataset a copy of its layout is synthesised under a temporary folder at the published
frame sizes (SID: 2848 x 4256 DNG files under .ARW names, like the Sony a7S II; DARK FACE
1080 x 720 and ACDC 1920 x 1080 PNGs), then:

1. ``on-the-fly``: the loader without a cache (rawpy unpack + LibRaw development, or PNG decoding,
   plus cropping and, for the PNG datasets, unprocessing) -- seconds per sample;
2. ``cache``: ``bgl data prepare``, then the loader reading crops out of the memory-mapped cache
   (the page cache is warm, as it is after the first epoch);
3. ``train-step``: one bilevel upper step of the training loop (enhancement task, the given
   solver, generator width and batch size) on fixed batches at the same crop; it consumes
   (k + 1) x batch samples (train and validation batches; k = 1 for a solver that does not take
   k lower steps: naive, TBGL).

Targets: the cache at least 20x faster per sample than on-the-fly decoding, and loading at least
2x faster than the step consumes. The enhancement task's network is the lightest of the paper's
task networks, so its step is the fastest consumer: a margin measured against it holds for the
detection and segmentation networks too.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["CACHE_TARGET", "STEP_TARGET", "DataBenchConfig", "print_table", "run_data_bench"]

CACHE_TARGET = 20.0
STEP_TARGET = 2.0


@dataclass
class DataBenchConfig:
    datasets: tuple[str, ...] = ("sid", "darkface", "acdc")
    sid_size: tuple[int, int] = (2848, 4256)  # H, W of the Sony a7S II visible area
    sid_crop: int = 1024  # RGB side; SID's packed 512
    sid_pairs: int = 2  # short exposures of the one synthesised scene
    darkface_size: tuple[int, int] = (720, 1080)
    darkface_crop: int = 640  # DSFD's training size
    acdc_size: tuple[int, int] = (1080, 1920)
    acdc_crop: int = 768
    images: int = 3  # PNG images per dataset
    samples: int = 3  # timed on-the-fly samples
    cache_samples: int = 30  # timed cached samples
    width: int = 32
    lower_width: int = 16
    batch_size: int = 1
    solver: str = "ibgl"
    k: int = 1
    step: bool = True
    step_repeats: int = 1
    device: str = "auto"
    workdir: str | None = None
    keep: bool = False


def _time_items(dataset: Any, count: int, warm: int = 0) -> tuple[list[float], float]:
    """Wall seconds of each of ``count`` items, and the process CPU seconds per item.

    CPU time is reported too because other processes on a shared machine inflate wall time.
    """
    for i in range(warm):
        dataset[i % len(dataset)]
    times = []
    cpu = time.process_time()
    for i in range(count):
        start = time.perf_counter()
        dataset[i % len(dataset)]
        times.append(time.perf_counter() - start)
    return times, (time.process_time() - cpu) / max(count, 1)


def _prepare(name: str, root: Path) -> tuple[float, int]:
    from bgl.data.cache import PackedCache, default_cache_dir, prepare_items
    from bgl.data.prepare import prepare_plan

    items, decode, _ = prepare_plan(name, root, skip_bad=False)
    cache = PackedCache(default_cache_dir(root, name), name, root)
    summary = prepare_items(cache, items, decode)
    return summary.seconds, len(items)


def _make(name: str, root: Path, cfg: DataBenchConfig) -> None:
    from bgl.data.fixtures import make_acdc, make_darkface, make_sid

    if name == "sid":
        shots = (0.1, 0.04, 0.033)[: max(1, cfg.sid_pairs)]
        make_sid(root, {"train": 1, "val": 1, "test": 1}, shots=shots, size=cfg.sid_size)
    elif name == "darkface":
        make_darkface(root, max(cfg.images, 3), size=cfg.darkface_size, faces=5)
    else:
        n = max(cfg.images, 2)
        make_acdc(root, {"train": n, "val": n}, size=cfg.acdc_size)


def _dataset(name: str, root: Path, crop: int, cache: bool) -> Any:
    kwargs = {"cache": None if cache else False}
    if name == "sid":
        from bgl.data.sid import SIDSony

        return SIDSony(root, "train", crop, **kwargs)
    if name == "darkface":
        from bgl.data.darkface import DarkFace

        return DarkFace(root, "train", crop, **kwargs)
    from bgl.data.acdc import ACDCNight

    return ACDCNight(root, "train", crop, **kwargs)


def _step(cfg: DataBenchConfig, dataset: Any, crop: int) -> tuple[float, float, int, str]:
    """(wall s, CPU s) per upper step, samples it consumes, device; fixed batches of dataset."""
    import torch

    from bgl.config import from_dict
    from bgl.solvers import get_solver
    from bgl.train.device import device_description
    from bgl.train.loop import Trainer

    k = cfg.k if get_solver(cfg.solver).takes_k else 1  # lower steps (train batches) per step
    run = from_dict(
        {
            "name": "bench-data",
            "task": {"name": "enhance", "options": {"width": cfg.lower_width}},
            "model": {"generator_width": cfg.width},
            "data": {
                "crop": max(32, crop // 32 * 32),
                "batch_size": cfg.batch_size,
                "val_batch_size": cfg.batch_size,
            },
            "solver": {"name": cfg.solver, "k": k},
            "train": {"device": cfg.device, "warm_steps": 0, "steps": 1},
        }
    )
    trainer = Trainer(
        run, splits={"train": dataset, "val": dataset, "select": dataset, "test": dataset}
    )
    train_batch, val_batch = next(trainer.train_stream), next(trainer.val_stream)
    trainer.train_stream = itertools.repeat(train_batch)
    trainer.val_stream = itertools.repeat(val_batch)
    lr = run.optim.lower_lr
    cuda = trainer.device.type == "cuda"
    trainer.bilevel_step(lr)  # warm-up: optimiser state, kernels
    times = []
    cpu = time.process_time()
    for _ in range(cfg.step_repeats):
        if cuda:
            torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        trainer.bilevel_step(lr)
        if cuda:
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter() - start)
    consumed = (k + 1) * cfg.batch_size
    cpu_s = (time.process_time() - cpu) / max(cfg.step_repeats, 1)
    return statistics.median(times), cpu_s, consumed, device_description(trainer.device)


def run_data_bench(
    cfg: DataBenchConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Measure every dataset of ``cfg``; write one Parquet file of rows; return the rows."""
    import torch

    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="bgl-bench-data-", dir="/tmp"))
    load_before = os.getloadavg()[0]
    crops = {"sid": cfg.sid_crop, "darkface": cfg.darkface_crop, "acdc": cfg.acdc_crop}
    sizes = {"sid": cfg.sid_size, "darkface": cfg.darkface_size, "acdc": cfg.acdc_size}
    rows: list[dict[str, Any]] = []
    try:
        for name in cfg.datasets:
            root = work / name
            crop = crops[name]
            say = console.log if console else (lambda *a, **k: None)
            say(f"{name}: writing a {sizes[name][0]}x{sizes[name][1]} copy under {root}")
            _make(name, root, cfg)
            say(f"{name}: timing on-the-fly decoding ({cfg.samples} samples)")
            fly, fly_cpu = _time_items(_dataset(name, root, crop, cache=False), cfg.samples)
            say(f"{name}: bgl data prepare")
            prep_s, n_items = _prepare(name, root)
            cached_ds = _dataset(name, root, crop, cache=True)
            say(f"{name}: timing the cache ({cfg.cache_samples} samples)")
            cached, cache_cpu = _time_items(cached_ds, cfg.cache_samples, warm=len(cached_ds))
            fly_s, cache_s = statistics.mean(fly), statistics.mean(cached)
            base = {
                "benchmark": "data",
                "dataset": name,
                "crop": crop,
                "source_size": f"{sizes[name][0]}x{sizes[name][1]}",
            }
            rows.append(
                {
                    **base,
                    "mode": "on-the-fly",
                    "samples": len(fly),
                    "time_s": fly_s,
                    "cpu_s": fly_cpu,
                    "samples_per_s": 1.0 / fly_s,
                }
            )
            cache_row = {
                **base,
                "mode": "cache",
                "samples": len(cached),
                "time_s": cache_s,
                "time_s_median": statistics.median(cached),
                "cpu_s": cache_cpu,
                "cpu_speedup": fly_cpu / max(cache_cpu, 1e-9),
                "samples_per_s": 1.0 / cache_s,
                "speedup": fly_s / cache_s,
                "meets_cache_target": fly_s / cache_s >= CACHE_TARGET,
                "prepare_s_per_item": prep_s / max(n_items, 1),
            }
            rows.append(cache_row)
            if cfg.step:
                say(f"{name}: timing one {cfg.solver} step (width {cfg.width}, crop {crop})")
                step_s, step_cpu, consumed, device = _step(cfg, cached_ds, crop)
                consume_rate = consumed / step_s
                rows.append(
                    {
                        **base,
                        "mode": "train-step",
                        "samples": consumed,
                        "time_s": step_s,
                        "cpu_s": step_cpu,
                        "samples_per_s": consume_rate,
                        "device": device,
                    }
                )
                cache_row["loading_over_consumption"] = cache_row["samples_per_s"] / consume_rate
                cache_row["meets_step_target"] = (
                    cache_row["loading_over_consumption"] >= STEP_TARGET
                )
    finally:
        if not cfg.keep and cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = library_versions()
    for row in rows:
        row.update({f"config_{k}": v for k, v in dataclasses.asdict(cfg).items()})
        row.update(
            timestamp=stamp,
            git_commit=git_commit(),
            torch=versions.get("torch"),
            rawpy=versions.get("rawpy"),
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            load_avg_before=load_before,  # other processes skew CPU timings: see how busy it was
            load_avg_after=load_after,
        )
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / f"data-{stamp.replace(':', '')}.parquet")
    return rows


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    """Wall time per sample (per step for the training step), its CPU time, and the ratios."""
    load = rows[0].get("load_avg_before") if rows else None
    title = "data loading: on-the-fly decoding vs packed cache vs one training step"
    if load is not None:
        title += f" (load average {load:.1f} on {rows[0].get('cpu_count')} CPUs)"
    table = Table(title=title)
    for col in (
        "dataset",
        "mode",
        "crop",
        "wall ms",
        "CPU ms",
        "samples/s",
        "x on-the-fly",
        "loading / step",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        step = r["mode"] == "train-step"
        speed = r.get("speedup")
        margin = r.get("loading_over_consumption")
        table.add_row(
            r["dataset"],
            r["mode"] + (f" ({r['samples']} samples)" if step else ""),
            str(r["crop"]),
            f"{1e3 * r['time_s']:.1f}",
            f"{1e3 * r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "",
            f"{r['samples_per_s']:.2f}",
            f"{speed:.0f}" if speed is not None else "",
            f"{margin:.0f}x" if margin is not None else "",
        )
    console.print(table)
