"""`bgl bench solvers`: time and peak memory per upper-level step of every registered solver.

One row per solver in `bgl.solvers.registry` order, and one per value of `iterations` for a solver
that reads `solver.iterations` (AID: rows `aid-5`, `aid-10`). Every row runs the training loop's
own `bilevel_step` (its k lower steps included) on the same models and fixed batches, each in a
fresh child process so peaks do not mix:
- GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`;
- CPU: the peak resident set size (VmHWM, reset through /proc/self/clear_refs) with glibc's mmap
  threshold pinned, so freed activation buffers really leave the process and the peak is real;
  the timings come from a second process with the default allocator (see `run_child`).
`step_peak` is the peak minus the memory held before the step: the memory the solver itself
needs. `tensor_peak` adds the tensors held throughout (parameters, buffers, optimiser state,
batches) to `step_peak`, which is what `max_memory_allocated` counts on a GPU; on CPU it leaves
out the interpreter and library footprint that `peak` (the whole process) includes. Ratios are
against naive. `products`: the curvature products a step actually took (mean over the timed
steps, where the solver reports them): CG stops early at a direction of non-positive curvature,
so it can be fewer than `iterations`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bgl.solvers.registry import BILEVEL_SOLVER_NAMES, SOLVER_NAMES, get_solver

BASELINE = "naive"  # the ratios' denominator; always measured
SWEPT_KEY = "iterations"  # a solver reading `solver.iterations` gets one row per value
PRODUCTS_KEY = "aid_products"  # the diagnostic counting a step's curvature products


@dataclass
class SolverBenchConfig:
    crop: int = 256
    batch_size: int = 2
    width: int = 32
    lower_width: int = 16
    k: int = 1
    repeats: int = 5
    warmup: int = 1
    device: str = "auto"
    delta: float = 0.01
    threads: int = 0  # 0: torch's default
    solvers: tuple[str, ...] = ()  # registry names; empty: every registered solver
    iterations: tuple[int, ...] = (5, 10)  # `solver.iterations` values (one row each, AID)
    method: str = "cg"  # `solver.method` of a solver that reads it (AID): cg | neumann
    curvature: str = "hessian"  # `solver.curvature` (AID): hessian | gauss_newton
    isolate: bool = True  # a fresh process per measurement; False: in-process (tests only)
    rounds: int = 1  # measurements per row, interleaved (order reversed every other round)


def variants(cfg: SolverBenchConfig) -> list[tuple[str, dict[str, Any]]]:
    """(solver, its swept settings) for each row: the baseline, then registry order; one
    entry per solver, one per value of `cfg.iterations` for a solver that reads that key."""
    wanted = {get_solver(n).name for n in cfg.solvers} or set(BILEVEL_SOLVER_NAMES)
    names = [BASELINE] + [n for n in SOLVER_NAMES if n in wanted - {BASELINE}]
    out: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        if SWEPT_KEY in get_solver(name).keys:
            out += [(name, {SWEPT_KEY: int(n)}) for n in cfg.iterations]
        else:
            out.append((name, {}))
    return out


def variant_name(solver: str, settings: dict[str, Any]) -> str:
    """`aid-5` for AID at 5 iterations; the solver's name when nothing is swept."""
    return "-".join([solver, *(str(v) for v in settings.values())])


def run_solver_bench(
    cfg: SolverBenchConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Measure every variant in its own processes, `cfg.rounds` times interleaved (medians over
    the rounds; `time_s_rounds` keeps each round's median); write one Parquet file of rows."""
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions

    order = variants(cfg)
    runs: dict[str, list[dict[str, Any]]] = {variant_name(*v): [] for v in order}
    measure = _measure_in_child if cfg.isolate else _child
    for rnd in range(cfg.rounds):
        for solver, settings in order if rnd % 2 == 0 else order[::-1]:
            name = variant_name(solver, settings)
            if console:
                console.log(f"round {rnd + 1}/{cfg.rounds}: measuring {name} ...")
            runs[name].append(measure(cfg, solver, settings))
    rows = [_combine(r) for r in runs.values()]
    base = rows[0]  # the baseline (see `variants`)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        row["time_ratio"] = row["time_s"] / base["time_s"]
        row["cpu_ratio"] = row["cpu_s"] / base["cpu_s"]
        row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"]
        row["step_peak_ratio"] = row["step_peak_bytes"] / max(base["step_peak_bytes"], 1)
        row["tensor_peak_ratio"] = row["tensor_peak_bytes"] / base["tensor_peak_bytes"]
        row.update({f"config_{k}": v for k, v in dataclasses.asdict(cfg).items()})
        row.update(
            benchmark="solvers",
            timestamp=stamp,
            git_commit=git_commit(),
            torch=library_versions().get("torch"),
        )
    if out_dir is not None:
        name = f"solvers-{stamp.replace(':', '')}.parquet"
        write_rows(rows, Path(out_dir) / name)
    return rows


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    first = rows[0]
    table = Table(
        title=f"solver cost per upper step on {first['device']} "
        f"(crop {first['config_crop']}, batch {first['config_batch_size']}, "
        f"width {first['config_width']}, k {first['config_k']}, {first['threads']} thread(s))",
        caption="×: against naive; iter: solver.iterations; prod: curvature products per step; "
        "CPU: the process's CPU time per step; tensor/step/proc: peaks (see bgl.bench.solvers)",
    )
    for col in (
        "solver",
        "k",
        "iter",
        "prod",
        "wall ms",
        "×",
        "CPU ms",
        "×",
        "tensor MiB",
        "×",
        "step MiB",
        "×",
        "proc MiB",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["variant"],
            str(r["k"]),
            _blank(r.get("iterations"), "{}"),
            _blank(r.get("products"), "{:.1f}"),
            f"{1e3 * r['time_s']:.1f}",
            f"{r['time_ratio']:.2f}",
            f"{1e3 * r['cpu_s']:.1f}",
            f"{r['cpu_ratio']:.2f}",
            f"{r['tensor_peak_bytes'] / 2**20:.1f}",
            f"{r['tensor_peak_ratio']:.2f}",
            f"{r['step_peak_bytes'] / 2**20:.1f}",
            f"{r['step_peak_ratio']:.2f}",
            f"{r['peak_bytes'] / 2**20:.1f}",
        )
    console.print(table)
    for r in rows:
        if r.get("settings"):
            console.print(f"{r['variant']}: {r['settings']}")


#: Row fields that are medians over the rounds.
MEDIAN_FIELDS = (
    "time_s",
    "cpu_s",
    "peak_bytes",
    "step_peak_bytes",
    "tensor_peak_bytes",
    "products",
    "load_avg",
)


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a variant's rounds: medians of `MEDIAN_FIELDS`, the fastest step overall."""
    row = dict(runs[0])
    for key in MEDIAN_FIELDS:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            row[key] = type(values[0])(statistics.median(values))
    row["time_s_min"] = min(r["time_s_min"] for r in runs)
    row["time_s_rounds"] = [r["time_s"] for r in runs]
    row["rounds"] = len(runs)
    return row


def _blank(value: Any, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _measure_in_child(
    cfg: SolverBenchConfig, solver: str, settings: dict[str, Any]
) -> dict[str, Any]:
    payload = {"config": dataclasses.asdict(cfg), "solver": solver, "settings": settings}
    what = f"solver benchmark for {variant_name(solver, settings)}"
    return run_child("bgl.bench.solvers", payload, what=what)


#: Row fields that are timings: taken from the child run with glibc's default allocator.
TIME_FIELDS = ("time_s", "time_s_min", "cpu_s", "boat_core_s", "load_avg")


def run_child(module: str, payload: dict[str, Any], *, what: str) -> dict[str, Any]:
    """Run `python -m module <json payload>` twice in fresh processes; merge their JSON rows.

    Memory comes from a run with glibc's mmap threshold pinned, so freed activation buffers leave
    the process and VmHWM is the step's real peak (see the module docstring). Pinning makes every
    large allocation an mmap with fresh zeroed pages, which slows the step (up to 2x here), so
    timings (`TIME_FIELDS`) come from a second run with the default allocator.
    """
    pinned = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    free = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    row = _child_row(module, payload, pinned, what)
    timed = _child_row(module, payload, free, what)
    row.update({k: timed[k] for k in TIME_FIELDS if k in timed})
    return row


def _child_row(module: str, payload: dict[str, Any], env: dict[str, str], what: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class StepMeasurement:
    """Wall seconds of each timed step; process/GPU peak, and the memory held before the steps;
    the process's CPU seconds of each step (all its threads: on a machine shared with other work
    it does not count the time the step waited for a core, which wall time does)."""

    times: list[float]
    peak: int
    before: int
    cuda: bool
    cpu_times: list[float] = dataclasses.field(default_factory=list)

    def row(self, held_bytes: int) -> dict[str, Any]:
        """time_s (median), time_s_min, cpu_s (median), peak_bytes, step_peak_bytes,
        tensor_peak_bytes."""
        step_peak = self.peak - self.before
        return {
            "time_s": statistics.median(self.times),
            "time_s_min": min(self.times),
            "cpu_s": statistics.median(self.cpu_times) if self.cpu_times else None,
            "peak_bytes": int(self.peak),
            "step_peak_bytes": int(step_peak),
            "tensor_peak_bytes": int(self.peak if self.cuda else step_peak + held_bytes),
        }


def measure_steps(step: Any, device: Any, *, repeats: int, warmup: int) -> StepMeasurement:
    """Warm up, reset the peak counter, then time `repeats` calls of `step()` (synchronised)."""
    import torch

    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):  # allocates optimiser state, warms kernels
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_bytes("VmRSS")
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _rss_bytes("VmHWM")
    return StepMeasurement(times, int(peak), int(before), cuda, cpu_times)


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_run_config(
    cfg: SolverBenchConfig,
    solver: str,
    settings: dict[str, Any] | None = None,
    **overrides: dict[str, Any],
) -> dict[str, Any]:
    """The run config (as a dict for `bgl.config.from_dict`) every solver benchmark trains with.

    `settings`: further `solver.*` keys (e.g. `iterations`). `cfg.k` lower steps for a solver
    that takes k, else 1; `cfg.delta`, `cfg.method`, `cfg.curvature` where the solver reads
    them. `overrides` replaces whole sections (e.g. `optim=...`), so other benchmarks share the
    sizes.
    """
    spec = get_solver(solver)
    shared = {"delta": cfg.delta, "method": cfg.method, "curvature": cfg.curvature}
    section = {
        "name": solver,
        # the baseline (naive) at one lower step: the ratios' reference is the cheapest solver
        "k": cfg.k if spec.takes_k and solver != BASELINE else 1,
        **{key: value for key, value in shared.items() if key in spec.keys},
        **(settings or {}),
    }
    run = {
        "name": f"bench-{solver}",
        "task": {"name": "enhance", "options": {"width": cfg.lower_width}},
        "model": {"generator_width": cfg.width},
        "data": {
            "crop": cfg.crop,
            "batch_size": cfg.batch_size,
            "val_batch_size": cfg.batch_size,
        },
        "solver": section,
        "train": {"device": cfg.device, "warm_steps": 0, "steps": 1},
    }
    run.update(overrides)
    return run


def fixed_batch_trainer(run_dict: dict[str, Any], **trainer_kwargs: Any) -> tuple[Any, dict, dict]:
    """A Trainer on synthetic data whose streams repeat one train and one val batch forever.

    Fixed batches: a benchmark measures the step, not the loader.
    """
    from bgl.config import from_dict
    from bgl.data.synthetic import SyntheticLowLight
    from bgl.train.loop import Trainer

    run = from_dict(run_dict)
    world = trainer_kwargs.get("world", 1)
    data = SyntheticLowLight(2 * run.data.batch_size * world, size=run.data.crop, seed=0)
    trainer = Trainer(
        run, splits={"train": data, "val": data, "select": data, "test": data}, **trainer_kwargs
    )
    return (trainer, *repeat_one_batch(trainer))


def repeat_one_batch(trainer: Any) -> tuple[dict, dict]:
    """Make the trainer's streams repeat their first train and val batches forever; those two."""
    import itertools

    train_batch, val_batch = next(trainer.train_stream), next(trainer.val_stream)
    trainer.train_stream = itertools.repeat(train_batch)
    trainer.val_stream = itertools.repeat(val_batch)
    return train_batch, val_batch


def timed_bilevel_steps(trainer: Any, repeats: int, warmup: int) -> tuple[Any, list[dict]]:
    """`measure_steps` over the trainer's bilevel steps at its lower lr; (measurement, the
    steps' info dicts, warm-up included)."""
    lr = trainer.cfg.optim.lower_lr
    infos: list[dict[str, float]] = []
    m = measure_steps(
        lambda: infos.append(trainer.bilevel_step(lr)),
        trainer.device,
        repeats=repeats,
        warmup=warmup,
    )
    return m, infos


def _child(cfg: SolverBenchConfig, solver: str, settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from bgl.train.device import device_description

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = bench_run_config(cfg, solver, settings)
    trainer, train_batch, val_batch = fixed_batch_trainer(run)
    m, infos = timed_bilevel_steps(trainer, cfg.repeats, cfg.warmup)
    products = [i[PRODUCTS_KEY] for i in infos[cfg.warmup :] if PRODUCTS_KEY in i]
    return {
        "solver": solver,
        "variant": variant_name(solver, settings),
        SWEPT_KEY: settings.get(SWEPT_KEY),
        "products": statistics.mean(products) if products else None,
        "k": trainer.cfg.solver.k,
        "settings": " ".join(
            f"{key}={getattr(trainer.cfg.solver, key)}" for key in get_solver(solver).options
        ),
        **m.row(_tensor_bytes(trainer, [train_batch, val_batch])),
        "device": device_description(trainer.device),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
    }


def _tensor_bytes(trainer: Any, batches: list[dict]) -> int:
    return held_tensor_bytes(
        [trainer.upper, trainer.lower], [trainer.upper_opt, trainer.lower_opt], batches
    )


def held_tensor_bytes(modules: list[Any], optimizers: list[Any], batches: list[dict]) -> int:
    """Bytes of the tensors a step keeps alive throughout: weights, optimiser state, batches."""
    import torch

    tensors = [t for m in modules for t in m.state_dict().values()]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [t for b in batches for t in b.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    result = _child(SolverBenchConfig(**args["config"]), args["solver"], args["settings"])
    print(json.dumps(result))
