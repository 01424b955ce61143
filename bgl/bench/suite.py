"""`bgl bench all`: the benchmark suite in one run, then the README block rewritten from it.

CPU (the default): the BOAT comparison at 256 px / batch 2 / width 32, the fidelity sweeps and
1 vs 2 gloo workers, sized to finish in minutes on two cores. GPU (`--device cuda`): the solver and
BOAT benchmarks at the paper's sizes (512 px crops, batch 2, width 32) and full-frame `bgl
develop` throughput; every row names the GPU. `tiny` shrinks everything to a smoke test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console


def run_suite(
    *,
    device: str = "cpu",
    out_dir: str | Path = "results/bench",
    readme: str | Path | None = "docs/guide.md",
    tiny: bool = False,
    threads: int = 1,
    skip: tuple[str, ...] = (),
    console: Console | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run every benchmark not in `skip` (boat, fidelity, scaling, solvers, develop); report."""
    from bgl.bench import boat, fidelity, scaling, solvers
    from bgl.bench.report import update_readme

    console = console or Console()
    gpu = device.startswith("cuda")
    size = (
        dict(crop=32, batch_size=1, width=4, lower_width=4)
        if tiny
        else dict(crop=512 if gpu else 256, batch_size=2, width=32, lower_width=16)
    )
    steps = dict(repeats=1, warmup=1) if tiny else dict(repeats=3 if gpu else 2, warmup=1)
    results: dict[str, list[dict[str, Any]]] = {}
    if "boat" not in skip:
        cfg = boat.BoatBenchConfig(
            **size, **steps, rounds=1 if tiny else 2, device=device, threads=threads
        )
        results["boat"] = boat.run_boat_bench(cfg, out_dir=out_dir, console=console)
        boat.print_table(results["boat"], console)
    if "fidelity" not in skip:
        cfg = (
            fidelity.FidelityConfig(ks=(1, 2, 5), deltas=(1e-3, 1e-1), delta_ks=(1,))
            if tiny
            else (fidelity.FidelityConfig())
        )
        results["fidelity"] = fidelity.run_fidelity_bench(cfg, out_dir=out_dir, console=console)
        fidelity.print_table(results["fidelity"], console)
    if gpu and "solvers" not in skip:
        cfg = solvers.SolverBenchConfig(**size, **steps, device=device)
        results["solvers"] = solvers.run_solver_bench(cfg, out_dir=out_dir, console=console)
        solvers.print_table(results["solvers"], console)
    if "scaling" not in skip:
        cfg = scaling.ScalingConfig(
            **(size if tiny else dict(crop=128, batch_size=2, width=32, lower_width=16)),
            **steps,
            rounds=1 if tiny else 2,
        )
        results["scaling"] = scaling.run_scaling_bench(cfg, out_dir=out_dir, console=console)
        scaling.print_table(results["scaling"], console)
    if (gpu or tiny) and "develop" not in skip:
        cfg = (
            scaling.DevelopBenchConfig(
                height=64, width_px=96, width=4, lower_width=4, tile=16, overlap=4
            )
            if tiny
            else scaling.DevelopBenchConfig(device=device, repeats=3)
        )
        results["develop"] = scaling.run_develop_bench(cfg, out_dir=out_dir, console=console)
    if readme is not None:
        console.log(f"rewriting the benchmark block of {update_readme(readme, out_dir)}")
    return results
