"""`bgl bench ...`: benchmarks. Each writes Parquet rows and prints a table; none asserts."""

from __future__ import annotations

import argparse
from typing import Any

from bgl.cli.args import add_output_dir, add_size_arguments, console, error
from bgl.solvers import SOLVER_NAMES, solvers_using
from bgl.solvers.aid import CURVATURES, METHODS


def add_bench_commands(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (write Parquet rows, print a table)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser(
        "solvers", help=f"time and peak memory per upper step: {'/'.join(SOLVER_NAMES)}"
    )
    add_size_arguments(b, crop=256, batch_size=2, width=32, lower_width=16)
    b.add_argument(
        "--solvers",
        nargs="+",
        choices=SOLVER_NAMES,
        default=list(SOLVER_NAMES),
        help="which to measure (naive, the baseline of the ratios, always is)",
    )
    b.add_argument(
        "--k",
        type=int,
        default=1,
        help=f"lower steps per upper step of {', '.join(solvers_using('k'))}",
    )
    b.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[5, 10],
        help=f"solver.iterations of {', '.join(solvers_using('iterations'))}: a row per value",
    )
    b.add_argument(
        "--method",
        choices=METHODS,
        default=METHODS[0],
        help=f"solver.method of {', '.join(solvers_using('method'))}",
    )
    b.add_argument(
        "--curvature",
        choices=CURVATURES,
        default=CURVATURES[0],
        help=f"solver.curvature of {', '.join(solvers_using('curvature'))} (gauss_newton: PSD, "
        "so CG takes every iteration)",
    )
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    b.add_argument("--rounds", type=int, default=1, help="interleaved measurements per row")
    b.add_argument("--device", default="auto")
    add_output_dir(b)
    b.set_defaults(func=_bench_solvers)
    add_data_bench_command(bsub)
    add_gpu_bench_command(bsub)
    b = bsub.add_parser("study", help="Ray's per-trial overhead; 1 vs 2 workers")
    add_output_dir(b)
    b.set_defaults(func=_bench_study)
    b = bsub.add_parser("boat", help="bgl vs BOAT (boat-torch): time, memory, hypergradients")
    add_size_arguments(b, crop=256, batch_size=2, width=32, lower_width=16)
    b.add_argument("--k", type=int, default=1, help="IBGL/IGA lower steps per upper step")
    b.add_argument("--delta", type=float, default=0.01, help="TBGL δ = BOAT FD's r")
    b.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--rounds", type=int, default=3, help="interleaved bgl/BOAT process pairs")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda (rows name the GPU)")
    add_output_dir(b)
    b.set_defaults(func=_bench_boat)
    add_fidelity_command(bsub)
    b = bsub.add_parser("scaling", help="1 vs N gloo workers; --develop: full-frame develop")
    add_size_arguments(b, crop=128, batch_size=2, width=32, lower_width=16, batch_help="per worker")
    b.add_argument("--solver", default="ibgl", choices=SOLVER_NAMES)
    b.add_argument("--workers", type=int, default=2, help="compared against 1 worker")
    b.add_argument("--threads", type=int, default=2, help="in total, split between workers")
    b.add_argument("--threads-per-worker", type=int, default=0, help="fix instead of split")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--develop", action="store_true", help="also time a 24 MP bgl develop")
    b.add_argument("--develop-only", action="store_true", help="only the develop timing")
    b.add_argument("--device", default="auto", help="device of the develop timing")
    add_output_dir(b)
    b.set_defaults(func=_bench_scaling)
    b = bsub.add_parser("faults", help="kill a study's driver at 5 moments, resume; count harm")
    b.add_argument("--repeats", type=int, default=5, help="kill-and-resume campaigns")
    b.add_argument("--trials", type=int, default=4, help="trials in each campaign's study")
    b.add_argument(
        "--study",
        help="instead: run this study YAML, killed right after each new trial row and resumed, "
        "until --kills kills (e.g. studies/quickstart.yaml)",
    )
    b.add_argument("--kills", type=int, default=20, help="with --study: kills in all")
    b.add_argument(
        "--readme", default="docs/guide.md", help="the page whose marked table is rewritten"
    )
    b.add_argument("--no-report", action="store_true", help="do not rewrite the page (--readme)")
    add_output_dir(b)
    b.set_defaults(func=_bench_faults)
    b = bsub.add_parser(
        "coupling", help="coupling ratio ‖h − ∇ωL_F‖/‖∇ωL_F‖ and final metric, task × solver × seed"
    )
    b.add_argument("--solvers", nargs="+", choices=SOLVER_NAMES, default=["naive", "tbgl", "ibgl"])
    b.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    b.add_argument("--k", type=int, default=2, help="lower steps of the solvers that take k")
    b.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    b.add_argument(
        "--only", nargs="+", default=None, help="settings whose label starts with one of these"
    )
    b.add_argument(
        "--readme", default=None, help="rewrite this page's coupling table (e.g. docs/guide.md)"
    )
    b.add_argument(
        "--merge",
        action="store_true",
        help="table from every coupling-*.parquet in the output folder (newest row per run)",
    )
    b.add_argument(
        "--report", action="store_true", help="run nothing: --merge's table from the rows on disk"
    )
    add_output_dir(b)
    b.set_defaults(func=_bench_coupling)
    b = bsub.add_parser(
        "cameras", help="bgl develop vs LibRaw on test DNGs of four cameras and CFA layouts"
    )
    b.add_argument(
        "checkpoints",
        nargs="+",
        metavar="[LABEL=]CHECKPOINT",
        help="trained blocks to compare (a label defaults to the run folder's name)",
    )
    b.add_argument("--save", default=None, help="keep the bgl | LibRaw side-by-side PNGs here")
    b.add_argument("--seed", type=int, default=0, help="noise seed of the test files")
    b.add_argument(
        "--scenes",
        nargs="+",
        choices=("photos", "procedural"),
        default=["photos"],
        help="real photographs (scikit-image) and/or the synthetic training scenes",
    )
    b.add_argument(
        "--exposure",
        nargs="+",
        choices=("normal", "low"),
        default=["normal"],
        help="a normally exposed photo (auto ratio) and/or a short exposure at the training ratio",
    )
    b.add_argument(
        "--readme", default=None, help="rewrite this page's cameras table (e.g. docs/guide.md)"
    )
    add_output_dir(b)
    b.set_defaults(func=_bench_cameras)
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
    b.add_argument(
        "--readme", default="docs/guide.md", help="the page whose marked table is rewritten"
    )
    b.add_argument("--no-report", action="store_true", help="do not rewrite the page (--readme)")
    add_output_dir(b)
    b.set_defaults(func=_bench_all)
    b = bsub.add_parser("report", help="rewrite the guide's benchmark block from Parquet rows")
    b.add_argument(
        "--readme", default="docs/guide.md", help="the page whose marked table is rewritten"
    )
    add_output_dir(b)
    b.set_defaults(func=_bench_report)


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
        threads=args.threads,
        solvers=tuple(args.solvers),
        iterations=tuple(args.iterations),
        method=args.method,
        curvature=args.curvature,
        rounds=args.rounds,
    )
    rows = run_solver_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
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


def add_fidelity_command(bench_subparsers: Any) -> argparse.ArgumentParser:
    """``bgl bench fidelity``: every solver against the exact implicit hypergradient."""
    from bgl.bench.fidelity import FidelityConfig

    d = FidelityConfig()
    b = bench_subparsers.add_parser(
        "fidelity", help="every solver vs the exact implicit hypergradient, over θ₀ seeds"
    )
    b.add_argument("--width", type=int, default=d.width, help="generative block base width")
    b.add_argument("--ridge", type=float, default=d.ridge, help="lower level's ridge λ")
    b.add_argument(
        "--lower-lr-scale",
        type=float,
        default=d.lower_lr_scale,
        help="lower step η = scale / L (L: largest ∇²θθL_G eigenvalue over θ* and the θ₀)",
    )
    b.add_argument("--k", type=int, nargs="+", default=list(d.ks), help="lower steps swept")
    b.add_argument("--delta", type=float, nargs="+", default=list(d.deltas), help="δ swept")
    b.add_argument("--delta-k", type=int, nargs="+", default=list(d.delta_ks), help="k of that")
    b.add_argument(
        "--theta-seeds", type=int, nargs="+", default=list(d.theta_seeds), help="one θ₀ per seed"
    )
    b.add_argument(
        "--aid-iterations",
        type=int,
        default=d.aid_iterations,
        help="AID's curvature products (CG iterations, Neumann terms) in the k sweep",
    )
    b.add_argument(
        "--neumann-step-scale",
        type=float,
        default=d.neumann_step_scale,
        help="AID-Neumann's step α = scale / L",
    )
    b.add_argument(
        "--aid-sweep",
        type=int,
        nargs="+",
        default=list(d.aid_iteration_sweep),
        help="AID curvature products swept",
    )
    b.add_argument(
        "--aid-sweep-k", type=int, nargs="+", default=list(d.aid_iteration_ks), help="k of that"
    )
    b.add_argument(
        "--readme",
        default=None,
        help="rewrite this page's fidelity section (e.g. docs/guide.md; default: don't)",
    )
    add_output_dir(b)
    b.set_defaults(func=_bench_fidelity)
    return b


def _bench_fidelity(args: argparse.Namespace) -> int:
    from bgl.bench.fidelity import (
        FidelityConfig,
        print_table,
        render_markdown,
        replace_section,
        run_fidelity_bench,
    )

    cfg = FidelityConfig(
        width=args.width,
        ridge=args.ridge,
        lower_lr_scale=args.lower_lr_scale,
        ks=tuple(args.k),
        deltas=tuple(args.delta),
        delta_ks=tuple(args.delta_k),
        theta_seeds=tuple(args.theta_seeds),
        aid_iterations=args.aid_iterations,
        neumann_step_scale=args.neumann_step_scale,
        aid_iteration_sweep=tuple(args.aid_sweep),
        aid_iteration_ks=tuple(args.aid_sweep_k),
    )
    rows = run_fidelity_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
    if args.readme:
        console.print(
            f"rewrote the fidelity section of {replace_section(args.readme, render_markdown(rows))}"
        )
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

    if args.study:
        from pathlib import Path

        from bgl.bench.faults import print_row_kills, run_row_kills_bench

        rows = run_row_kills_bench(
            Path(args.study), kills=args.kills, out_dir=args.output_dir, console=console
        )
        print_row_kills(rows, console)
        return 0 if all(r["resume_failures"] == r["not_completed"] == 0 for r in rows) else 1

    rows = run_faults_bench(
        repeats=args.repeats,
        num_samples=args.trials,
        out_dir=args.output_dir,
        console=console,
    )
    print_table(rows, console)
    if not args.no_report:
        from bgl.bench.faults import README_END, README_START, render_markdown
        from bgl.bench.report import replace_block

        path = replace_block(args.readme, README_START, README_END, render_markdown(rows))
        console.print(f"rewrote the kill-and-resume block of {path}")
    return 0


def _bench_cameras(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bgl.bench.cameras import (
        README_END,
        README_START,
        print_table,
        render_markdown,
        run_cameras_bench,
    )
    from bgl.bench.report import replace_block

    checkpoints: dict[str, str] = {}
    for item in args.checkpoints:
        label, _, path = item.rpartition("=")
        label = label or Path(path).parent.name or Path(path).stem
        if not Path(path).is_file():
            error(f"checkpoint not found: {path}")
            return 2
        checkpoints[label] = path
    rows = []
    for scenes in args.scenes:
        for exposure in args.exposure:
            rows += run_cameras_bench(
                checkpoints,
                out_dir=args.output_dir,
                save=args.save,
                seed=args.seed,
                scenes=scenes,
                exposure=exposure,
                console=console,
            )
    print_table(rows, console)
    if args.readme:
        path = replace_block(args.readme, README_START, README_END, render_markdown(rows))
        console.print(f"rewrote the cameras table of {path}")
    return 0


def _bench_coupling(args: argparse.Namespace) -> int:
    from bgl.bench.coupling import (
        README_END,
        README_START,
        SETTINGS,
        merged_rows,
        print_table,
        render_markdown,
        run_coupling_bench,
    )
    from bgl.bench.report import replace_block

    settings = [
        s for s in SETTINGS if not args.only or any(s.label.startswith(o) for o in args.only)
    ]
    if not settings:
        error(f"--only {' '.join(args.only)} matches no setting")
        return 2
    if not args.report:
        rows = run_coupling_bench(
            settings=settings,
            solvers=args.solvers,
            seeds=args.seeds,
            k=args.k,
            jobs=args.jobs,
            out_dir=args.output_dir,
            console=console,
        )
    if args.merge or args.report:
        rows = merged_rows(args.output_dir)
        if not rows:
            error(f"no coupling-*.parquet rows in {args.output_dir}")
            return 2
    print_table(rows, console)
    if args.readme:
        path = replace_block(args.readme, README_START, README_END, render_markdown(rows))
        console.print(f"rewrote the coupling table of {path}")
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


def add_data_bench_command(bench_subparsers: Any) -> argparse.ArgumentParser:
    """``bgl bench data``: on-the-fly decoding vs the packed cache vs the training step."""
    from bgl.bench.data import DataBenchConfig

    d = DataBenchConfig()
    b = bench_subparsers.add_parser(
        "data",
        help="samples/s: on-the-fly decoding vs the packed cache vs one training step",
    )
    b.add_argument(
        "--datasets", default=",".join(d.datasets), help="comma-separated: sid,darkface,acdc"
    )
    b.add_argument("--sid-crop", type=int, default=d.sid_crop, help="RGB crop (packed = half)")
    b.add_argument("--darkface-crop", type=int, default=d.darkface_crop)
    b.add_argument("--acdc-crop", type=int, default=d.acdc_crop)
    b.add_argument(
        "--sid-size",
        type=int,
        nargs=2,
        default=list(d.sid_size),
        metavar=("H", "W"),
        help="synthesised SID frame (default: the a7S II's 2848 x 4256)",
    )
    b.add_argument("--darkface-size", type=int, nargs=2, default=list(d.darkface_size))
    b.add_argument("--acdc-size", type=int, nargs=2, default=list(d.acdc_size))
    b.add_argument("--samples", type=int, default=d.samples, help="timed on-the-fly samples")
    b.add_argument("--cache-samples", type=int, default=d.cache_samples)
    b.add_argument("--width", type=int, default=d.width, help="generator width of the step")
    b.add_argument("--lower-width", type=int, default=d.lower_width)
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--solver", default=d.solver, choices=SOLVER_NAMES)
    b.add_argument("--no-step", action="store_true", help="skip timing the training step")
    b.add_argument("--device", default=d.device)
    b.add_argument("--workdir", default=None, help="where to write the files (default: a temp dir)")
    b.add_argument("--keep", action="store_true", help="keep the synthesised files")
    add_output_dir(b)
    b.set_defaults(func=bench_data_command)
    return b


def bench_data_command(args: argparse.Namespace) -> int:
    from bgl.bench.data import DataBenchConfig, print_table, run_data_bench
    from bgl.data.splits import REAL_DATASETS

    datasets = tuple(s.strip() for s in args.datasets.split(",") if s.strip())
    unknown = sorted(set(datasets) - set(REAL_DATASETS))
    if unknown:
        error(f"unknown dataset(s) {unknown}; choose from {REAL_DATASETS}")
        return 2
    cfg = DataBenchConfig(
        datasets=datasets,
        sid_crop=args.sid_crop,
        darkface_crop=args.darkface_crop,
        acdc_crop=args.acdc_crop,
        sid_size=tuple(args.sid_size),
        darkface_size=tuple(args.darkface_size),
        acdc_size=tuple(args.acdc_size),
        samples=args.samples,
        cache_samples=args.cache_samples,
        width=args.width,
        lower_width=args.lower_width,
        batch_size=args.batch_size,
        solver=args.solver,
        step=not args.no_step,
        device=args.device,
        workdir=args.workdir,
        keep=args.keep,
    )
    rows = run_data_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
    return 0


def add_gpu_bench_command(bench_subparsers: Any) -> argparse.ArgumentParser:
    """``bgl bench gpu``: the one-shot GPU check (scripts/gpu_check.sh)."""
    from bgl.bench.gpu import PARTS, TASKS

    b = bench_subparsers.add_parser(
        "gpu",
        help="GPU check: a step per solver x task at the paper's sizes (time, CUDA peak), a "
        "1-worker Ray Train trial (nccl), 24 MP bgl develop; skips (exit 0) without CUDA",
    )
    b.add_argument("--device", default="cuda", help="cuda (default), or cpu with --quick")
    b.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (32 px, k 1, 2 steps, 0.1 MP frame): every code path in seconds",
    )
    b.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    b.add_argument(
        "--solvers", nargs="+", choices=SOLVER_NAMES, default=[], help="default: every solver"
    )
    b.add_argument("--warmup", type=int, default=1, help="untimed steps first (not --quick)")
    b.add_argument("--repeats", type=int, default=3, help="timed steps (not --quick)")
    b.add_argument("--skip", action="append", default=[], choices=PARTS, help="repeatable")
    add_output_dir(b)
    b.set_defaults(func=_bench_gpu)
    return b


def _bench_gpu(args: argparse.Namespace) -> int:
    """Exit 0 after one line where CUDA is asked for and missing; 1 if a part failed."""
    from bgl.bench.gpu import GpuBenchConfig, print_table, run_gpu_bench, skip_reason

    reason = skip_reason(args.device)
    if reason:
        console.print(reason, highlight=False, markup=False, soft_wrap=True)
        return 0
    cfg = GpuBenchConfig(
        device=args.device,
        quick=args.quick,
        tasks=tuple(args.tasks),
        solvers=tuple(args.solvers),
        warmup=args.warmup,
        repeats=args.repeats,
        skip=tuple(args.skip),
    )
    rows = run_gpu_bench(cfg, out_dir=args.output_dir, console=console)
    print_table(rows, console)
    return 0 if all(r["status"] == "ok" for r in rows) else 1
