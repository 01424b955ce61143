"""`bgl bench coupling`: how much each solver's hypergradient departs from ∇ωL_F, per task.

Why: a study can only tell solvers apart where the coupling term they compute (h − ∇ωL_F) is
not negligible next to ∇ωL_F. Each setting below is a small run config (a study's `base` or a
run YAML, plus overrides); every solver trains it from the same seeds, in-process (no Ray), and
one Parquet row per run records the coupling ratio ‖h − ∇ωL_F‖ / ‖∇ωL_F‖ over the bilevel phase
(`Trainer.coupling_summary`) beside the task's final metric. The README table is generated from
those rows (`--readme`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bgl.solvers.registry import SOLVER_NAMES, get_solver

README_START, README_END = "<!-- coupling:start -->", "<!-- coupling:end -->"


@dataclass(frozen=True)
class Setting:
    """One task configuration: `source` is a run YAML or a study YAML (its `base`)."""

    label: str
    source: str
    overrides: tuple[str, ...] = ()
    note: str = ""
    extra_metrics: tuple[str, ...] = ()


#: The settings of the README's table, cheapest first; paths relative to the repository root.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "enhance, F sees the amplified RAW",
        "studies/quickstart.yaml",
        ("task.options.input_gain=null",),
        "the previous default: F renders the bright image, G's L = clamp(x + s) saturates at 1",
        ("psnr_generator",),
    ),
    Setting(
        "enhance, F sees the short exposure (gain 30)",
        "studies/quickstart.yaml",
        (),
        "the quickstart's base: F develops a dark image, G brightens it",
        ("psnr_generator",),
    ),
    Setting("detect, L_F = multibox", "studies/detect_run.yaml", ("train.steps=40",)),
    Setting(
        "detect, L_F = multibox + L1(F(z), rgb)",
        "studies/detect_run.yaml",
        ("train.steps=40", "task.options.l1_weight=1.0"),
    ),
    Setting("segment, L_F = L_G = CE", "studies/segment_run.yaml", ("train.warm_steps=300",)),
)


def base_config(source: str | Path) -> dict[str, Any]:
    """A run config mapping from a run YAML or from a study YAML's `base`."""
    import yaml

    from bgl.config import read_yaml
    from bgl.study.schema import load_study

    with open(source) as fh:
        raw = yaml.safe_load(fh) or {}
    if "base" in raw or "base_file" in raw or "search" in raw:
        return load_study(source).base
    return read_yaml(source)


def run_one(setting: Setting, solver: str, seed: int, k: int) -> dict[str, Any]:
    """Train one (setting, solver, seed) in this process; its row."""
    import torch

    from bgl.config import apply_overrides, from_dict
    from bgl.train.loop import TEST_PREFIX, Trainer

    torch.set_num_threads(1)
    data = base_config(setting.source)
    takes_k = get_solver(solver).takes_k
    apply_overrides(
        data,
        [
            *setting.overrides,
            f"seed={seed}",
            f"solver.name={solver}",
            f"solver.k={k if takes_k else 1}",
            "train.device=cpu",
        ],
    )
    cfg = from_dict(data)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    row: dict[str, Any] = {
        "setting": setting.label,
        "task": cfg.task.name,
        "solver": solver,
        "seed": seed,
        "k": cfg.solver.k,
        "metric": trainer.task.primary_metric,
    }
    try:
        summary = trainer.fit()
    except Exception as exc:  # a diverged run is a result too
        return row | {"status": "failed", "error": str(exc)[:300], "wall_s": 0.0}
    coupling = summary["coupling"]
    # the test split's scores: the reported numbers (plain names are the selection split's)
    final = {
        k[len(TEST_PREFIX) :]: v for k, v in summary["final"].items() if k.startswith(TEST_PREFIX)
    }
    row |= {
        "status": "completed",
        "error": None,
        "value": float(final[trainer.task.primary_metric]),
        "coupling_mean": coupling["ratio_mean"],
        "coupling_median": coupling["ratio_median"],
        "coupling_last": coupling["ratio_last"],
        "wall_s": time.perf_counter() - start,
    }
    for name in (*setting.extra_metrics, "psnr_input"):
        if name in final:
            row[name] = float(final[name])
    return row


def run_coupling_bench(
    *,
    settings: Sequence[Setting] = SETTINGS,
    solvers: Sequence[str] = ("naive", "tbgl", "ibgl"),
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 2,
    jobs: int = 2,
    out_dir: str | Path = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Every setting × solver × seed, `jobs` processes at a time; rows written to
    `<out_dir>/coupling-<UTC stamp>.parquet`."""
    from bgl.results.parquet import write_rows

    for solver in solvers:
        get_solver(solver)  # an unknown name fails before anything runs
    tasks = [(s, solver, seed, k) for s in settings for solver in solvers for seed in seeds]
    rows: list[dict[str, Any]] = []
    workers = max(1, min(jobs, len(tasks), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        results = (
            (f.result() for f in [pool.submit(run_one, *t) for t in tasks])
            if pool is not None
            else (run_one(*t) for t in tasks)  # one at a time: in this process
        )
        for n, row in enumerate(results, 1):
            rows.append(row)
            if console is not None:
                value = row.get("value")
                shown = f"{value:.4g}" if value is not None else row["status"]
                console.print(
                    f"[{n}/{len(tasks)}] {row['setting']} / {row['solver']} / seed "
                    f"{row['seed']}: {row['metric']} {shown}, coupling "
                    f"{_fmt(row.get('coupling_mean'))}"
                )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    write_rows(rows, Path(out_dir) / f"coupling-{stamp}.parquet")
    return rows


def merged_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every `coupling-*.parquet` in `folder`, the newest row per (setting, solver, seed), in
    `SETTINGS` order: settings measured by separate invocations (`--only`) in one table."""
    import pyarrow.parquet as pq

    newest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("coupling-*.parquet")):  # names carry a UTC stamp
        for row in pq.read_table(path).to_pylist():
            newest[(row["setting"], row["solver"], row["seed"])] = row
    order = {s.label: i for i, s in enumerate(SETTINGS)}
    solvers = {name: i for i, name in enumerate(SOLVER_NAMES)}
    return sorted(
        newest.values(),
        key=lambda r: (
            order.get(r["setting"], len(order)),
            r["setting"],
            solvers.get(r["solver"], len(solvers)),
            r["seed"],
        ),
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if value >= 10**-digits or value == 0 else f"{value:.1e}"


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (setting, solver): seeds, coupling ratio mean [min, max], metric mean ± std,
    failures; in the order the rows came."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["solver"]), []).append(r)
    out = []
    for (setting, solver), members in groups.items():
        done = [r for r in members if r["status"] == "completed"]
        coupling = [r["coupling_mean"] for r in done if r.get("coupling_mean") is not None]
        values = [r["value"] for r in done]
        line: dict[str, Any] = {
            "setting": setting,
            "solver": solver,
            "metric": members[0]["metric"],
            "seeds": len(members),
            "failed": len(members) - len(done),
            "coupling_mean": statistics.fmean(coupling) if coupling else None,
            "coupling_min": min(coupling) if coupling else None,
            "coupling_max": max(coupling) if coupling else None,
            "value_mean": statistics.fmean(values) if values else None,
            "value_std": statistics.stdev(values) if len(values) > 1 else None,
        }
        for extra in ("psnr_generator", "psnr_input"):
            got = [r[extra] for r in done if r.get(extra) is not None]
            line[extra] = statistics.fmean(got) if got else None
        out.append(line)
    return out


def _metric(line: dict[str, Any]) -> str:
    if line["value_mean"] is None:
        return "–"
    std = line["value_std"]
    text = f"{line['value_mean']:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    if line.get("psnr_generator") is not None:
        text += f" (F alone {line['psnr_generator']:.2f})"
    return text


def _coupling(line: dict[str, Any]) -> str:
    if line["coupling_mean"] is None:
        return "–"
    low, high = _fmt(line["coupling_min"]), _fmt(line["coupling_max"])
    return f"{_fmt(line['coupling_mean'])} [{low}, {high}]"


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The README table: setting × solver, coupling ratio and final metric over seeds."""
    lines = [
        "| setting | solver | seeds | coupling ‖h − ∇ωL_F‖/‖∇ωL_F‖, mean [min, max] | "
        "final metric, mean ± std |",
        "|---|---|---|---|---|",
    ]
    for line in summarise(rows):
        failed = f" ({line['failed']} failed)" if line["failed"] else ""
        lines.append(
            f"| {line['setting']} | {get_solver(line['solver']).label} | {line['seeds']}{failed} "
            f"| {_coupling(line)} | {line['metric']} {_metric(line)} |"
        )
    inputs = {
        line["setting"]: line["psnr_input"] for line in summarise(rows) if line.get("psnr_input")
    }
    notes = [f"{s}: psnr_input {v:.2f}" for s, v in inputs.items()]
    if notes:
        lines += ["", "Baseline (the amplified input shown directly): " + "; ".join(notes) + "."]
    shown = {line["setting"] for line in summarise(rows)}
    about = [f"{s.label}: {s.note}" for s in SETTINGS if s.note and s.label in shown]
    if about:
        lines += ["", "Settings: " + "; ".join(about) + "."]
    return "\n".join(lines) + "\n"


def print_table(rows: Sequence[dict[str, Any]], console: Console) -> None:
    table = Table(title="coupling ratio and final metric over seeds")
    for name in ("setting", "solver", "seeds", "coupling", "metric"):
        table.add_column(name, overflow="fold")
    for line in summarise(rows):
        table.add_row(
            line["setting"],
            line["solver"],
            str(line["seeds"]),
            _coupling(line),
            f"{line['metric']} {_metric(line)}",
        )
    console.print(table)
