"""`bgl bench gpu`: the one-shot GPU check (`scripts/gpu_check.sh`), sized to run in minutes.

Three measurements, every row in one `results/bench/gpu-<UTC stamp>.parquet` (column `kind`):

- `step`: one upper-level step (`Trainer.bilevel_step`, its k lower steps included) of every
  solver in `bgl.solvers.registry` on every task, at the paper's sizes: each task's
  `studies/paper_<task>.yaml` is loaded and only what a benchmark must change is overridden
  (the task's procedural dataset instead of the real one, no pretrained-weight files, the
  device; see `paper_overrides`); the solver's run config comes from the study's own
  `trial_config` with the study's constant parameters for that solver (`solver_run`), so k is
  the paper's where the study pins it (IBGL: 80 enhance, 30 detect) and the base's (1)
  elsewhere, AID included (the paper has no AID). One batch of procedural scenes per task
  (`task_data`) serves every solver. Timing and memory are `bgl.bench.solvers.measure_steps`:
  warm-up, `reset_peak_memory_stats`, then CUDA-synchronised steps on fixed batches. Every
  (task, solver) runs in this process, one after another: the previous trainer is freed and the
  CUDA cache emptied first, and the peak counter is reset before the timed steps.
  `cuda_max_allocated_bytes` is `torch.cuda.max_memory_allocated` (the paper's Table 4
  figure); it is null (NaN) on CPU. `memory_bytes` is that figure on CUDA
  and, on CPU, `bgl bench solvers`' tensor peak (weights, optimiser state, batches plus the step's
  own resident peak; here measured in one process without pinning malloc, so only indicative).
- `ray_train`: a one-trial study (`launcher: ray_train`, one worker) on a local Ray instance:
  `bgl.study.trial` gives a worker that has a GPU the nccl backend, gloo otherwise. `wall_s`
  is the driver's whole `run_study` (Ray start and shutdown included), `trial_wall_s` the
  trial's, `train_s` the training inside it.
- `develop`: `bgl.bench.scaling.run_develop_bench` (`bgl develop`'s tiled F + G pass) on a
  synthetic 6000×4000 frame (24 MP) packed in memory: seconds per frame and megapixels/s.

`quick` shrinks every measurement to seconds (32 px crops, k = 1, tiny networks, one warm-up
and one timed step, the tiny Ray study, a 0.1-megapixel frame) so the tests can run each code
path on a CPU (`device="cpu"`, where the Ray trial uses gloo). A part that fails becomes a row
with `status: error` and its message, and the others still run.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bgl.solvers.registry import SOLVER_NAMES, get_solver

TASKS = ("enhance", "detect", "segment")
PARTS = ("steps", "ray", "develop")
STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
#: Table 4 of the paper compares these two solvers' GPU memory (IBGL / TBGL).
TABLE4_PAIR = ("ibgl", "tbgl")
#: quick mode: the smallest networks each task accepts, and crops its network can take
QUICK_TASK_OPTIONS = {
    "enhance": {"width": 4},
    "detect": {"width_mult": 0.0625},
    "segment": {"width": 4},
}
QUICK_CROP = {"enhance": 32, "detect": 64, "segment": 32}
QUICK_FRAME = (256, 384)  # RGB height × width: 0.098 MP, 3:2 like the full frame
FULL_FRAME = (4000, 6000)  # 24 MP


@dataclass
class GpuBenchConfig:
    device: str = "cuda"
    quick: bool = False
    tasks: tuple[str, ...] = TASKS
    solvers: tuple[str, ...] = ()  # registry names; empty: every registered solver
    warmup: int = 1
    repeats: int = 3
    skip: tuple[str, ...] = ()  # of PARTS
    studies_dir: str = str(STUDIES_DIR)

    def __post_init__(self) -> None:
        if self.quick:
            self.warmup, self.repeats = 1, 1
        unknown = sorted(set(self.skip) - set(PARTS)) + sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown part(s) or task(s) {unknown}; parts {PARTS}, tasks {TASKS}")
        for name in self.solvers:
            get_solver(name)


def skip_reason(device: str) -> str | None:
    """Why the check cannot run on `device` (one line), or None when it can."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return (
            f"bgl bench gpu: skipped, no CUDA device (torch {torch.__version__}: "
            "torch.cuda.is_available() is False); nothing measured, no rows written"
        )
    return None


def solver_names(cfg: GpuBenchConfig) -> list[str]:
    """The registry's solvers, in its order (those of `cfg.solvers` when given)."""
    wanted = set(cfg.solvers) or set(SOLVER_NAMES)
    return [name for name in SOLVER_NAMES if name in wanted]


def paper_overrides(task: str, cfg: GpuBenchConfig) -> list[str]:
    """`--set`-style overrides of `studies/paper_<task>.yaml` for a benchmark run.

    Always: the task's procedural dataset (`bgl.study.design.DEFAULT_DATASETS`; the crops and
    batch sizes stay the paper's), no pretrained-weight files (`Task.weight_options`: random
    weights cost the same), the device. Quick: also small crops, batch 2, k = 1,
    two AID iterations and the task's smallest network.
    """
    from bgl.study.design import DEFAULT_DATASETS
    from bgl.tasks import task_class

    out = [
        f"base.data.name={DEFAULT_DATASETS[task]}",
        "base.data.root=null",
        f"base.train.device={cfg.device}",
        *(f"base.task.options.{key}=null" for key in task_class(task).weight_options),
    ]
    if cfg.quick:
        out += [
            f"base.data.crop={QUICK_CROP[task]}",
            "base.data.batch_size=2",
            "base.data.val_batch_size=2",
            "base.model.generator_width=4",
            "base.solver.iterations=2",
            *(f"base.task.options.{k}={v}" for k, v in QUICK_TASK_OPTIONS[task].items()),
        ]
    return out


def _study_path(task: str, cfg: GpuBenchConfig) -> Path:
    return Path(cfg.studies_dir) / f"paper_{task}.yaml"


def paper_study(task: str, cfg: GpuBenchConfig) -> Any:
    """`studies/paper_<task>.yaml` with `paper_overrides` applied (a StudyConfig)."""
    from bgl.study.schema import load_study

    return load_study(_study_path(task, cfg), paper_overrides(task, cfg))


def task_data(run: Any) -> Any:
    """One procedural dataset of `run.data.name` (`bgl.data.splits.SYNTHETIC_DATASETS`) at the
    run's crop, one batch large, to serve as train, val and test split (as `bgl bench solvers`
    does). Why not `build_splits`: a procedural set renders scenes 32 at a time whatever its
    size, which at the paper's crops takes long on a CPU (a minute or more for 1024 px here), and
    a benchmark needs one batch, not three splits."""
    import importlib
    import inspect

    from bgl.data.splits import SYNTHETIC_DATASETS

    d = run.data
    module, _, attr = SYNTHETIC_DATASETS[d.name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    accepted = inspect.signature(cls.__init__).parameters
    given = {"max_boxes": d.max_boxes, "ratio_range": d.ratio_range, "raw_space": d.raw_space}
    extra = {k: v for k, v in given.items() if k in accepted and v is not None}
    n = max(d.batch_size, d.val_batch_size)
    return cls(n, size=d.crop, seed=d.seed, camera_seed=d.camera_seed, **extra)


def solver_run(study: Any, solver: str, cfg: GpuBenchConfig) -> Any:
    """The run config a trial of `study` with `solver` gets: the base with the study's constant
    parameters that apply to that solver (the paper's k = 80 / 30 is IBGL's: `solver.k: {value:
    80, solvers: [ibgl]}`), through `drop_inapplicable` and `trial_config` as `bgl.study.trial`
    does. Quick: k = 1."""
    from bgl.study.space import drop_inapplicable

    constants = {p.path: p.value for p in study.params if p.type == "constant"}
    params = drop_inapplicable(study, {**constants, "solver.name": solver})
    if cfg.quick:
        params["solver.k"] = 1
    return study.trial_config(params, trial_name=f"gpu-{solver}")


def measure_step(run: Any, cfg: GpuBenchConfig, data: Any) -> dict[str, Any]:
    """One (task, solver): a Trainer on one fixed train and one fixed val batch of `data`; the
    solver benchmark's `measure_steps` (synchronised, peak reset after the warm-up)."""
    import torch

    from bgl.bench.solvers import (
        PRODUCTS_KEY,
        held_tensor_bytes,
        repeat_one_batch,
        timed_bilevel_steps,
    )
    from bgl.train.loop import Trainer

    trainer = Trainer(run, splits={"train": data, "val": data, "select": data, "test": data})
    train_batch, val_batch = repeat_one_batch(trainer)
    m, infos = timed_bilevel_steps(trainer, cfg.repeats, cfg.warmup)
    held = held_tensor_bytes(
        [trainer.upper, trainer.lower],
        [trainer.upper_opt, trainer.lower_opt],
        [train_batch, val_batch],
    )
    row = m.row(held)
    products = [i[PRODUCTS_KEY] for i in infos[cfg.warmup :] if PRODUCTS_KEY in i]
    row.update(
        k=trainer.cfg.solver.k,
        products=statistics.mean(products) if products else None,
        cuda_max_allocated_bytes=m.peak if m.cuda else None,
        memory_bytes=m.peak if m.cuda else row["tensor_peak_bytes"],
        threads=torch.get_num_threads(),
    )
    return row


def run_steps(cfg: GpuBenchConfig, say: Callable[..., None]) -> list[dict[str, Any]]:
    """A `step` row per task × registered solver (an `error` row for one that fails)."""
    rows = []
    for task in cfg.tasks:
        study = paper_study(task, cfg)
        start = time.perf_counter()
        data = task_data(study.trial_config({}))
        data_s = time.perf_counter() - start
        for solver in solver_names(cfg):
            run = solver_run(study, solver, cfg)
            d = run.data
            say(f"{task} / {solver}: crop {d.crop}, batch {d.batch_size}, k {run.solver.k} ...")
            row: dict[str, Any] = {
                "kind": "step",
                "task": task,
                "solver": solver,
                "label": get_solver(solver).label,
                "study": str(study.source),
                "crop": d.crop,
                "batch_size": d.batch_size,
                "val_batch_size": d.val_batch_size,
                "generator_width": run.model.generator_width,
                "task_options": dict(run.task.options),
                "data_s": data_s,
                "warmup": cfg.warmup,
                "repeats": cfg.repeats,
            }
            row.update(_attempt(lambda run=run, data=data: measure_step(run, cfg, data)))
            rows.append(row)
            _free()
        del data
        _free()
    for task in cfg.tasks:  # ratios against naive within a task
        mine = [r for r in rows if r["task"] == task and r["status"] == "ok"]
        base = next((r for r in mine if r["solver"] == "naive"), None)
        for r in mine:
            if base is not None:
                r["time_ratio"] = r["time_s"] / base["time_s"]
                r["memory_ratio"] = r["memory_bytes"] / base["memory_bytes"]
    return rows


#: the one-trial study's training: `bgl bench study`'s tiny run (quick: the faults bench's tinier)
def _ray_base(cfg: GpuBenchConfig) -> dict[str, Any]:
    from bgl.bench.faults import TINY_BASE
    from bgl.bench.study import BASE

    base = copy.deepcopy(TINY_BASE if cfg.quick else BASE)
    base["train"]["device"] = cfg.device
    base.setdefault("solver", {"name": "ibgl", "k": 1})
    return base


def run_ray_trial(cfg: GpuBenchConfig, say: Callable[..., None]) -> dict[str, Any]:
    """A one-worker `launcher: ray_train` study; nccl where the worker has a GPU."""
    import pyarrow.parquet as pq

    from bgl.study.runner import run_study
    from bgl.study.schema import parse_study

    gpu = cfg.device.startswith("cuda")
    backend = "nccl" if gpu else "gloo"  # bgl.study.trial's rule: nccl iff gpus_per_worker > 0
    base = _ray_base(cfg)
    with tempfile.TemporaryDirectory(prefix="bgl-gpu-") as tmp:
        study = parse_study(
            {
                "name": "gpu-check",
                "output_dir": tmp,
                "base": base,
                "search": {"solvers": [base["solver"]["name"]], "num_samples": 1},
                "resources": {
                    "workers_per_trial": 1,
                    "cpus_per_worker": 1.0,
                    "gpus_per_worker": 1.0 if gpu else 0.0,
                    "max_concurrent_trials": 1,
                    "launcher": "ray_train",
                },
                "logging": {"tensorboard": False},
            }
        )
        say(f"one-trial Ray Train study, 1 worker, {backend} ...")
        start = time.perf_counter()
        folder = run_study(study, live=False)
        wall = time.perf_counter() - start
        (trial,) = [pq.read_table(p).to_pylist()[0] for p in (folder / "trials").glob("*")]
    if trial.get("status") != "completed":
        raise RuntimeError(f"the Ray Train trial ended {trial.get('status')}: {trial.get('error')}")
    return {
        "kind": "ray_train",
        "backend": backend,
        "workers": 1,
        "solver": base["solver"]["name"],
        "crop": base["data"]["crop"],
        "batch_size": base["data"]["batch_size"],
        "steps": base["train"]["warm_steps"] + base["train"]["steps"],
        "wall_s": wall,
        "time_s": wall,
        "trial_wall_s": trial.get("trial_wall_s"),
        "train_s": trial.get("wall_time_s"),
        "trial_status": trial.get("status"),
    }


def run_develop(cfg: GpuBenchConfig, say: Callable[..., None]) -> dict[str, Any]:
    """`bgl develop`'s tiled pass on a synthetic frame (24 MP; quick: 0.1 MP, small tiles)."""
    from bgl.bench.scaling import DevelopBenchConfig, run_develop_bench

    height, width = QUICK_FRAME if cfg.quick else FULL_FRAME
    dev = (
        DevelopBenchConfig(
            height=height, width_px=width, width=4, lower_width=4, tile=64, overlap=8
        )
        if cfg.quick
        else DevelopBenchConfig(height=height, width_px=width, repeats=cfg.repeats)
    )
    dev.device = cfg.device
    (r,) = run_develop_bench(dev, out_dir=None, console=None)
    say(f"developed a {height}x{width} frame: {r['megapixels_per_s']:.2f} MP/s")
    return {
        "kind": "develop",
        "height": height,
        "width_px": width,
        "megapixels": r["megapixels"],
        "time_s": r["time_s"],
        "megapixels_per_s": r["megapixels_per_s"],
        "peak_bytes": r["peak_bytes"],
        "generator_width": dev.width,
        "lower_width": dev.lower_width,
        "tile": dev.tile,
        "overlap": dev.overlap,
        "repeats": dev.repeats,
    }


def _free() -> None:
    """Drop what the last measurement left: a new peak starts from what is still referenced."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()`'s row with status ok, or an error row (the message, the traceback's tail)."""
    try:
        return {**fn(), "status": "ok"}
    except Exception as exc:  # noqa: BLE001 - a GPU check reports every failure, then goes on
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }


def run_gpu_bench(
    cfg: GpuBenchConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run the parts not in `cfg.skip`; write every row to one Parquet file; return the rows."""
    import torch

    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions
    from bgl.train.device import device_description, resolve_device

    say = console.log if console else (lambda *a, **k: None)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if "steps" not in cfg.skip:
        rows += run_steps(cfg, say)
    if "develop" not in cfg.skip:
        rows.append({"kind": "develop", **_attempt(lambda: run_develop(cfg, say))})
    if "ray" not in cfg.skip:
        _free()
        rows.append({"kind": "ray_train", **_attempt(lambda: run_ray_trial(cfg, say))})
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = library_versions()
    total = time.perf_counter() - start
    for row in rows:
        row.update(
            benchmark="gpu",
            device=device_description(device),
            quick=cfg.quick,
            timestamp=stamp,
            total_wall_s=total,
            git_commit=git_commit(),
            torch=versions.get("torch"),
            cuda=torch.version.cuda,
            ray=versions.get("ray"),
            cpu_count=os.cpu_count(),
        )
    if out_dir is not None and rows:
        write_rows(rows, Path(out_dir) / f"gpu-{stamp.replace(':', '')}.parquet")
    return rows


def _mib(value: Any) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value / 2**20:.0f}"


def _ms(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    ratio = row.get("time_ratio")
    return f"{1e3 * row['time_s']:.0f}" + (f" ({ratio:.2f}×)" if ratio is not None else "")


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    """Table 4's layout (a task per row, each solver's memory in MiB, IBGL / TBGL), the step
    times in the same layout, then the Ray Train and develop figures and any errors."""
    steps = [r for r in rows if r["kind"] == "step" and r["status"] == "ok"]
    if steps:
        first = steps[0]
        cuda = first["cuda_max_allocated_bytes"] is not None
        solvers = [s for s in SOLVER_NAMES if any(r["solver"] == s for r in steps)]
        by = {(r["task"], r["solver"]): r for r in steps}
        tasks = list(dict.fromkeys(r["task"] for r in steps))
        pair = all(s in solvers for s in TABLE4_PAIR)
        size = f"{first['device']}, median of {first['repeats']} after {first['warmup']} warm-up"
        memory = Table(
            title=f"peak memory per upper step, MiB ({size})",
            caption="torch.cuda.max_memory_allocated, reset before the timed steps"
            if cuda
            else "CPU: the tensor peak (no CUDA allocator figure; cuda_max_allocated_bytes null)",
        )
        timing = Table(
            title=f"time per upper step, ms ({size})",
            caption="synchronised wall time, the k lower steps included; ×: against naive",
        )
        for table in (memory, timing):
            table.add_column("task")
            table.add_column("crop×batch, k", justify="right")
            for s in solvers:
                table.add_column(get_solver(s).label, justify="right")
        if pair:
            memory.add_column(" / ".join(get_solver(s).label for s in TABLE4_PAIR), justify="right")
        for task in tasks:
            mine = [by[(task, s)] for s in solvers if (task, s) in by]
            ks = "/".join(str(k) for k in sorted({r["k"] for r in mine}))
            head = [task, f"{mine[0]['crop']}×{mine[0]['batch_size']}, {ks}"]
            cells = [
                _mib(by[(task, s)]["memory_bytes"]) if (task, s) in by else "" for s in solvers
            ]
            if pair:
                hi, lo = (by.get((task, s)) for s in TABLE4_PAIR)
                cells.append(f"{hi['memory_bytes'] / lo['memory_bytes']:.2f}" if hi and lo else "")
            memory.add_row(*head, *cells)
            timing.add_row(*head, *(_ms(by.get((task, s))) for s in solvers))
        console.print(memory)
        console.print(timing)
    for r in rows:
        if r["status"] != "ok":
            where = "/".join(str(r[k]) for k in ("kind", "task", "solver") if r.get(k))
            console.print(f"[red]{where} failed:[/red] {r['error']}", soft_wrap=True)
        elif r["kind"] == "ray_train":
            console.print(
                f"Ray Train, 1 worker, {r['backend']}: study {r['wall_s']:.1f} s "
                f"(trial {r['trial_wall_s']:.1f} s, training {r['train_s']:.1f} s, "
                f"{r['steps']} steps, {r['trial_status']})"
            )
        elif r["kind"] == "develop":
            console.print(
                f"bgl develop, {r['width_px']}×{r['height']} ({r['megapixels']:.2f} MP): "
                f"{r['time_s']:.2f} s per frame, {r['megapixels_per_s']:.2f} MP/s, peak "
                f"{_mib(r['peak_bytes'])} MiB"
            )
