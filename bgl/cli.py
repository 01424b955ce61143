"""The `bgl` command: thin argument parsing over the library; heavy imports happen lazily."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

console = Console()


def _train(args: argparse.Namespace) -> int:
    from bgl.config import load
    from bgl.train.local import train_local

    cfg = load(args.config, args.set)
    summary = train_local(cfg, resume=args.resume, overwrite=args.overwrite, console=console)
    table = Table(title=f"{cfg.name}: {summary['status']} after {summary['steps']} steps")
    table.add_column("metric")
    table.add_column("final", justify="right")
    for key, value in summary["final"].items():
        table.add_row(key, f"{value:.4f}")
    if summary["best"]:
        b = summary["best"]
        table.add_row(f"best {b['metric']} (step {b['step']})", f"{b['value']:.4f}")
    table.add_row("wall time (s)", f"{summary['wall_time_s']:.1f}")
    table.add_row("peak memory (MiB)", f"{summary['peak_memory_bytes'] / 2**20:.0f}")
    console.print(table)
    console.print(f"outputs: {summary['run_dir']}")
    if summary["status"] != "completed":
        console.print(f"[red]{summary['status']}: {summary['error']}")
        return 1
    return 0


def _bench_solvers(args: argparse.Namespace) -> int:
    from bgl.bench.solvers import SolverBenchConfig, print_table, run_solver_bench

    cfg = SolverBenchConfig(
        crop=args.crop,
        batch_size=args.batch_size,
        width=args.width,
        lower_width=args.lower_width,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        k=args.k,
    )
    rows = run_solver_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
    return 0


def _study_run(args: argparse.Namespace) -> int:
    from bgl.study.runner import run_study
    from bgl.study.schema import load_study

    study = load_study(args.study, args.set)  # fails before Ray starts, naming the key
    folder = run_study(
        study,
        address=args.address,
        resume=args.resume,
        extend=args.extend,
        live=not args.no_live,
        dashboard=args.dashboard,
    )
    show = "show transfer" if study.transfer is not None else "show"
    console.print(f"results: {folder} (bgl results {show} {study.name})")
    return 0


def _bench_study(args: argparse.Namespace) -> int:
    from bgl.bench.study import run_study_bench

    run_study_bench(out_dir=args.output_dir, console=console)
    return 0


def _bench_boat(args: argparse.Namespace) -> int:
    from bgl.bench.boat import BoatBenchConfig, BoatMissingError, print_table, run_boat_bench

    cfg = BoatBenchConfig(
        crop=args.crop,
        batch_size=args.batch_size,
        width=args.width,
        lower_width=args.lower_width,
        k=args.k,
        repeats=args.repeats,
        warmup=args.warmup,
        rounds=args.rounds,
        device=args.device,
        threads=args.threads,
        delta=args.delta,
    )
    try:
        rows = run_boat_bench(cfg, out_dir=args.output_dir, console=console)
    except BoatMissingError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    print_table(rows, console)
    return 0


def _bench_fidelity(args: argparse.Namespace) -> int:
    from bgl.bench.fidelity import FidelityConfig, print_table, run_fidelity_bench

    cfg = FidelityConfig(
        width=args.width,
        ridge=args.ridge,
        ks=tuple(args.k),
        deltas=tuple(args.delta),
        delta_ks=tuple(args.delta_k),
    )
    print_table(run_fidelity_bench(cfg, out_dir=args.output_dir, console=console), console)
    return 0


def _bench_scaling(args: argparse.Namespace) -> int:
    from bgl.bench.scaling import (
        DevelopBenchConfig,
        ScalingConfig,
        print_table,
        run_develop_bench,
        run_scaling_bench,
    )

    if not args.develop_only:
        cfg = ScalingConfig(
            crop=args.crop,
            batch_size=args.batch_size,
            width=args.width,
            lower_width=args.lower_width,
            solver=args.solver,
            workers=(1, args.workers),
            threads=args.threads,
            threads_per_worker=args.threads_per_worker,
            repeats=args.repeats,
            rounds=args.rounds,
        )
        print_table(run_scaling_bench(cfg, out_dir=args.output_dir, console=console), console)
    if args.develop or args.develop_only:
        (row,) = run_develop_bench(
            DevelopBenchConfig(width=args.width, device=args.device),
            out_dir=args.output_dir,
            console=console,
        )
        console.print(
            f"develop: {row['megapixels']:.1f} MP in {row['time_s']:.1f} s on {row['device']} "
            f"({row['megapixels_per_s']:.2f} MP/s)"
        )
    return 0


def _bench_faults(args: argparse.Namespace) -> int:
    from bgl.bench.faults import print_table, run_faults_bench

    rows = run_faults_bench(
        repeats=args.repeats,
        num_samples=args.trials,
        out_dir=args.output_dir,
        console=console,
    )
    print_table(rows, console)
    return 0


def _bench_all(args: argparse.Namespace) -> int:
    from bgl.bench.boat import BoatMissingError
    from bgl.bench.suite import run_suite

    try:
        run_suite(
            device=args.device,
            out_dir=args.output_dir,
            readme=None if args.no_report else args.readme,
            tiny=args.tiny,
            threads=args.threads,
            skip=tuple(args.skip),
            console=console,
        )
    except BoatMissingError as exc:
        console.print(f"[red]error:[/red] {exc} (or skip it: --skip boat)")
        return 2
    return 0


def _bench_report(args: argparse.Namespace) -> int:
    from bgl.bench.report import update_readme

    console.print(f"rewrote the benchmark block of {update_readme(args.readme, args.output_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="one training run on this machine (CPU or one GPU)")
    p.add_argument("config", help="run YAML (e.g. studies/quickstart.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set solver.name=tbgl (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint")
    p.set_defaults(func=_train)

    study = sub.add_parser("study", help="Ray Tune + Optuna studies")
    ssub = study.add_subparsers(dest="study_command", required=True)
    s = ssub.add_parser("run", help="run or resume a study (local Ray, or a cluster)")
    s.add_argument("study", help="study YAML (e.g. studies/quickstart.yaml)")
    s.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto, or ray://host:10001 (default: start a local Ray)",
    )
    s.add_argument("--resume", action="store_true", help="finish an interrupted study")
    s.add_argument(
        "--extend",
        type=int,
        default=None,
        metavar="N",
        help="run N more trials on a finished study (same Optuna study and tables)",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key, e.g. --set search.num_samples=12",
    )
    s.add_argument("--no-live", action="store_true", help="no live trial table")
    s.add_argument(
        "--dashboard", action="store_true", help="local mode: Ray dashboard on 127.0.0.1"
    )
    s.set_defaults(func=_study_run)

    from bgl.data.commands import add_data_bench_command, add_data_commands, add_develop_command
    from bgl.metrics.commands import add_eval_command
    from bgl.metrics.detection_commands import add_eval_detect_command
    from bgl.metrics.segmentation_commands import add_eval_segment_command
    from bgl.results.commands import add_results_command

    add_data_commands(sub)
    add_develop_command(sub)
    eval_sub = add_eval_command(sub)
    add_eval_detect_command(eval_sub)
    add_eval_segment_command(eval_sub)
    add_results_command(sub)

    bench = sub.add_parser("bench", help="benchmarks (write Parquet rows, print a table)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("solvers", help="time and peak memory per upper step: naive/TBGL/IBGL")
    b.add_argument("--crop", type=int, default=256, help="RGB crop side (px)")
    b.add_argument("--batch-size", type=int, default=2)
    b.add_argument("--width", type=int, default=32, help="generative block base width")
    b.add_argument("--lower-width", type=int, default=16, help="enhancement network width")
    b.add_argument("--k", type=int, default=1, help="IBGL lower steps per upper step")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--device", default="auto")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_solvers)
    add_data_bench_command(bsub)
    b = bsub.add_parser("study", help="Ray's per-trial overhead; 1 vs 2 workers")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_study)
    b = bsub.add_parser("boat", help="bgl vs BOAT (boat-torch): time, memory, hypergradients")
    b.add_argument("--crop", type=int, default=256, help="RGB crop side (px)")
    b.add_argument("--batch-size", type=int, default=2)
    b.add_argument("--width", type=int, default=32, help="generative block base width")
    b.add_argument("--lower-width", type=int, default=16, help="enhancement network width")
    b.add_argument("--k", type=int, default=1, help="IBGL/IGA lower steps per upper step")
    b.add_argument("--delta", type=float, default=0.01, help="TBGL δ = BOAT FD's r")
    b.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--rounds", type=int, default=3, help="interleaved bgl/BOAT process pairs")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda (rows name the GPU)")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_boat)
    b = bsub.add_parser("fidelity", help="naive/TBGL/IBGL vs the exact implicit hypergradient")
    b.add_argument("--width", type=int, default=4, help="generative block base width")
    b.add_argument("--ridge", type=float, default=0.1, help="lower level's ridge λ")
    b.add_argument("--k", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 200])
    b.add_argument("--delta", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    b.add_argument("--delta-k", type=int, nargs="+", default=[1, 20], help="k of the δ sweep")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_fidelity)
    b = bsub.add_parser("scaling", help="1 vs N gloo workers; --develop: full-frame develop")
    b.add_argument("--crop", type=int, default=128, help="RGB crop side (px)")
    b.add_argument("--batch-size", type=int, default=2, help="per worker")
    b.add_argument("--width", type=int, default=32, help="generative block base width")
    b.add_argument("--lower-width", type=int, default=16, help="enhancement network width")
    b.add_argument("--solver", default="ibgl", choices=("naive", "tbgl", "ibgl"))
    b.add_argument("--workers", type=int, default=2, help="compared against 1 worker")
    b.add_argument("--threads", type=int, default=2, help="in total, split between workers")
    b.add_argument("--threads-per-worker", type=int, default=0, help="fix instead of split")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--develop", action="store_true", help="also time a 24 MP bgl develop")
    b.add_argument("--develop-only", action="store_true", help="only the develop timing")
    b.add_argument("--device", default="auto", help="device of the develop timing")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_scaling)
    b = bsub.add_parser("faults", help="kill a study's driver at 4 moments, resume; count harm")
    b.add_argument("--repeats", type=int, default=5, help="kill-and-resume campaigns")
    b.add_argument("--trials", type=int, default=4, help="trials in each campaign's study")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_faults)
    b = bsub.add_parser("all", help="the suite (boat, fidelity, scaling; GPU: + solvers, develop)")
    b.add_argument("--device", default="cpu", help="cpu, or cuda for the paper-size GPU suite")
    b.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    b.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("boat", "fidelity", "scaling", "solvers", "develop"),
    )
    b.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    b.add_argument("--readme", default="README.md")
    b.add_argument("--no-report", action="store_true", help="do not rewrite the README")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_all)
    b = bsub.add_parser("report", help="rewrite the README's benchmark block from Parquet rows")
    b.add_argument("--readme", default="README.md")
    b.add_argument("--output-dir", default="results/bench")
    b.set_defaults(func=_bench_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    from bgl.config import ConfigError
    from bgl.results.parquet import ResultsWriteError
    from bgl.train.local import RunExistsError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, RunExistsError, ResultsWriteError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
