"""`bgl bench scaling`: the real Trainer's bilevel step on 1 vs N gloo workers, and `bgl develop`
throughput on a full frame.

Workers: each is a process in one gloo group (`torch.distributed`, file rendezvous) running
`Trainer.bilevel_step` with `bgl.train.distributed.default_reduce` (one flat all-reduce per
gradient list), on its own shard of fixed synthetic batches; the per-worker batch is fixed, so N
workers process N times the samples per step (weak scaling, as data parallel training is used).
By default the machine's cores are split evenly between the workers (`threads` in total), so on
CPU the question answered is whether N workers with 1/N of the cores each beat one worker with all
of them -- the all-reduce and per-process overheads against intra-op threading;
`threads_per_worker` fixes the threads instead (on a loaded machine, 2 OpenMP threads can stall
on each other's barriers and make the 1-worker baseline look worse than it is). Ray's own overhead
is measured by `bgl bench study`, not here.

Develop: `bgl.develop.develop_tiled` (the code behind `bgl develop`) on a synthetic packed RAW
frame of the given size with a generative block and enhancement net, tile 512: seconds per frame
and megapixels per second. A 24-megapixel frame takes minutes on a CPU, so the suite runs it on a
GPU only unless asked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


@dataclass
class ScalingConfig:
    crop: int = 128
    batch_size: int = 2  # per worker
    width: int = 32
    lower_width: int = 16
    solver: str = "ibgl"
    k: int = 1
    workers: tuple[int, ...] = (1, 2)
    threads: int = 2  # in total, split evenly between the workers ...
    threads_per_worker: int = 0  # ... unless this is set (> 0)
    repeats: int = 3
    warmup: int = 1
    rounds: int = 2  # the worker counts alternate this many times; medians reported


def _worker(rank: int, world: int, cfg_dict: dict[str, Any], init: str, out: str) -> None:
    """One of `world` gloo processes; measures 1 worker (rank 0 alone) and `world` workers.

    Both setups run inside the same processes, alternating over the rounds, so process start-up
    is paid once. While rank 0 measures alone the others wait in a barrier (a blocking wait).
    """
    import torch.distributed as dist

    from bgl.bench.solvers import SolverBenchConfig, bench_run_config, fixed_batch_trainer
    from bgl.solvers import identity_reduce
    from bgl.train.distributed import default_reduce

    cfg = ScalingConfig(**cfg_dict)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    size = SolverBenchConfig(
        crop=cfg.crop,
        batch_size=cfg.batch_size,
        width=cfg.width,
        lower_width=cfg.lower_width,
        k=cfg.k,
        device="cpu",
    )
    run = bench_run_config(size, cfg.solver)
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in cfg.workers}
    try:
        trainers: dict[int, Any] = {}
        for rnd in range(cfg.rounds):
            for n in cfg.workers if rnd % 2 == 0 else cfg.workers[::-1]:
                if rank < n:
                    torch.set_num_threads(_threads(cfg, n))
                    if n not in trainers:
                        reduce = default_reduce() if n > 1 else identity_reduce
                        trainers[n], *_ = fixed_batch_trainer(
                            run, rank=rank, world=n, reduce=reduce
                        )
                    results[n].append(_time_steps(trainers[n], cfg, dist if n > 1 else None))
                dist.barrier()
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _threads(cfg: ScalingConfig, workers: int) -> int:
    return cfg.threads_per_worker or max(1, cfg.threads // workers)


def _time_steps(trainer: Any, cfg: ScalingConfig, dist: Any) -> dict[str, Any]:
    """Warm-up, then `repeats` timed bilevel steps; with a group, a step ends at the slowest."""
    lr = trainer.cfg.optim.lower_lr
    for _ in range(cfg.warmup):
        trainer.bilevel_step(lr)
    times = []
    cpu = time.process_time()
    for _ in range(cfg.repeats):
        if dist is not None:
            dist.barrier()
        start = time.perf_counter()
        trainer.bilevel_step(lr)
        if dist is not None:
            dist.barrier()
        times.append(time.perf_counter() - start)
    return {
        "times": times,
        "cpu_s": (time.process_time() - cpu) / cfg.repeats,
        "threads_per_worker": torch.get_num_threads(),
        "k": trainer.cfg.solver.k,
        "load_avg": os.getloadavg()[0],
    }


def _measure(cfg: ScalingConfig) -> dict[int, list[dict[str, Any]]]:
    import torch.multiprocessing as mp

    world = max(cfg.workers)
    if set(cfg.workers) - {1, world}:
        raise ValueError(f"workers must be 1 and/or one larger count, got {cfg.workers}")
    with tempfile.TemporaryDirectory(prefix="bgl-scaling-") as tmp:
        out = Path(tmp) / "result.json"
        args = (world, dataclasses.asdict(cfg), str(Path(tmp) / "init"), str(out))
        mp.spawn(_worker, args=args, nprocs=world, join=True)
        return {int(n): r for n, r in json.loads(out.read_text()).items()}


def run_scaling_bench(
    cfg: ScalingConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """1 vs N workers, alternating over `rounds`; one row per worker count (medians)."""
    say = console.log if console else (lambda *a, **k: None)
    load_before = os.getloadavg()[0]
    say(f"{cfg.rounds} alternating rounds of {' vs '.join(map(str, cfg.workers))} gloo workers ...")
    measured = _measure(cfg)
    loads = [r["load_avg"] for results in measured.values() for r in results]
    rows = []
    for world, results in measured.items():
        times = [t for r in results for t in r["times"]]
        step_s = statistics.median(times)
        k = results[0]["k"]
        samples = world * cfg.batch_size * (k + 1)  # k train batches and one val batch per worker
        rows.append(
            {
                "mode": "train-step",
                "workers": world,
                "threads_per_worker": results[0]["threads_per_worker"],
                "k": k,
                "time_s": step_s,
                "time_s_min": min(times),
                "cpu_s_rank0": statistics.median(r["cpu_s"] for r in results),
                "samples_per_step": samples,
                "samples_per_s": samples / step_s,
                "device": "cpu",
                "backend": "gloo",
            }
        )
    base = next((r for r in rows if r["workers"] == min(cfg.workers)), rows[0])
    for r in rows:
        r["throughput_ratio"] = r["samples_per_s"] / base["samples_per_s"]
        r["scaling_efficiency"] = r["throughput_ratio"] / (r["workers"] / base["workers"])
    _stamp_and_write(rows, cfg, "scaling", out_dir, load_before, loads)
    return rows


def _stamp_and_write(
    rows: list[dict[str, Any]],
    cfg: Any,
    name: str,
    out_dir: str | Path | None,
    load_before: float,
    loads: list[float],
) -> None:
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        row.update({f"config_{k}": v for k, v in dataclasses.asdict(cfg).items()})
        row.update(
            benchmark=name,
            timestamp=stamp,
            git_commit=git_commit(),
            torch=library_versions().get("torch"),
            cpu_count=os.cpu_count(),
            load_avg_before=load_before,
            load_avg_median=statistics.median(loads) if loads else load_before,
            load_avg_after=os.getloadavg()[0],
        )
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / f"{name}-{stamp.replace(':', '')}.parquet")


@dataclass
class DevelopBenchConfig:
    height: int = 2848  # RGB frame (Sony a7S II visible area); packed RAW is half of each side
    width_px: int = 4256
    width: int = 32  # generative block base width
    lower_width: int = 16
    tile: int = 512
    overlap: int = 64
    repeats: int = 1
    device: str = "auto"


def run_develop_bench(
    cfg: DevelopBenchConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Seconds per full frame through `develop_tiled` (F then G, tiled); one row."""
    from bgl.develop import develop_tiled
    from bgl.models.enhance import IlluminationNet
    from bgl.models.generator import build_generator
    from bgl.train.device import device_description, peak_memory_bytes, resolve_device

    device = resolve_device(cfg.device)
    say = console.log if console else (lambda *a, **k: None)
    load_before = os.getloadavg()[0]
    upper = build_generator(cfg.width).to(device).eval()
    lower = IlluminationNet(cfg.lower_width).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    packed = torch.rand(4, cfg.height // 2, cfg.width_px // 2, generator=gen)
    say(f"developing a {cfg.height}x{cfg.width_px} frame on {device_description(device)} ...")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(cfg.repeats + (device.type == "cuda")):  # one warm-up on a GPU
        start = time.perf_counter()
        develop_tiled(upper, packed, lower=lower, tile=cfg.tile, overlap=cfg.overlap, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times = times[-cfg.repeats :]
    frame_s = statistics.median(times)
    megapixels = cfg.height * cfg.width_px / 1e6
    rows = [
        {
            "mode": "develop",
            "device": device_description(device),
            "megapixels": megapixels,
            "time_s": frame_s,
            "megapixels_per_s": megapixels / frame_s,
            "peak_bytes": peak_memory_bytes(device),
        }
    ]
    _stamp_and_write(rows, cfg, "develop", out_dir, load_before, [os.getloadavg()[0]])
    return rows


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    first = rows[0]
    table = Table(
        title=f"{first['config_solver']} step, 1 vs N gloo workers (crop {first['config_crop']}, "
        f"batch {first['config_batch_size']}/worker, width {first['config_width']}, "
        f"{first['config_threads']} threads in all; load {first['load_avg_median']:.1f} on "
        f"{first['cpu_count']} CPUs)"
    )
    for col in ("workers", "threads each", "s / step", "samples / s", "x 1 worker", "efficiency"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["workers"]),
            str(r["threads_per_worker"]),
            f"{r['time_s']:.2f}",
            f"{r['samples_per_s']:.2f}",
            f"{r['throughput_ratio']:.2f}",
            f"{r['scaling_efficiency']:.2f}",
        )
    console.print(table)
