"""`bgl bench fidelity`: how close naive, TBGL and IBGL hypergradients are to the exact one.

The reference is `bgl.solvers.reference`: the lower level solved by Newton-CG to ‖∇_θ L_G‖ ≤
1e-10, then the implicit hypergradient by CG on exact Hessian-vector products, all in float64.

The problem. Upper level: a small SID U-Net F(z; ω) (the real generative block, width 4) on
synthetic low-light pairs. Lower level: a ridge-regularised 3x3 convolutional colour head
G(x; θ) = conv(x) + b fitted to the reference sRGB of a training batch,

    L_G(ω, θ) = MSE(G(F(z_train)), rgb_train) + λ/2 ‖θ‖²,     L_F(ω, θ) = MSE(G(F(z_val)), rgb_val).

Why this lower level and not the enhancement network: the implicit hypergradient is only defined
(and CG only meaningful) where θ*(ω) is a unique, strongly convex minimum. G is linear in θ, so L_G
is a ridge regression, convex with ∇²_{θθ} L_G ⪰ λ I: θ*(ω) is unique, the implicit function
theorem holds exactly and the reference is the true gradient of ω ↦ L_F(ω, θ*(ω)). A non-convex
network would make "the" reference depend on which minimum the solve lands in. ∇²_{ωθ} L_G is
non-zero (F feeds G), so the coupling term that separates the solvers is fully present.

The sweep, from one random θ₀ and lower step size η = `lower_lr_scale` / (largest eigenvalue of
∇²_{θθ} L_G): θ_k is θ₀ after k gradient steps, the state the training loop leaves after k lower
steps. Naive and IBGL are evaluated at θ_k; TBGL unrolls its own step from θ_{k-1}, so it too ends
at θ_k. TBGL is also swept over its finite-difference radius δ at fixed k. Rows: cosine
similarity and relative error ‖h − h_ref‖/‖h_ref‖ of each, written to Parquet, plus a PNG plot.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

from bgl.solvers import BilevelProblem, hypergradient
from bgl.solvers.problem import dot, grad_disabled, grads, set_params

DTYPE = torch.float64


@dataclass
class FidelityConfig:
    crop: int = 32  # RGB side (packed RAW is crop / 2); SyntheticLowLight needs a multiple of 32
    batch_size: int = 2
    width: int = 4  # generative block base width
    ridge: float = 0.1  # λ: the lower level's strong-convexity modulus
    lower_lr_scale: float = 0.5  # η = scale / L_max (L_max: largest Hessian eigenvalue)
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 200)
    deltas: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    delta: float = 0.01  # TBGL's δ in the k sweep (bgl's default)
    delta_ks: tuple[int, ...] = (1, 20)  # k values at which δ is swept
    seed: int = 0


class RidgeHead(nn.Module):
    """G(x; θ) = conv3x3(x) + b: linear in θ, so a ridge-penalised MSE is strongly convex."""

    def __init__(self, ridge: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=3, padding=1)
        self.ridge = ridge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.ridge * sum(p.pow(2).sum() for p in self.parameters())


HUBER_SCALE = 0.05


def pseudo_huber(residual: torch.Tensor, scale: float = HUBER_SCALE) -> torch.Tensor:
    """mean(c² (√(1 + (r/c)²) − 1)): convex, smooth, and *not* quadratic in the residual.

    A quadratic lower loss would make ∇_ω L_G quadratic in θ, and TBGL's central difference
    exact for every δ; this one gives the δ sweep something to measure.
    """
    return (scale * scale * ((1 + (residual / scale).pow(2)).sqrt() - 1)).mean()


def ridge_lower_loss(upper: nn.Module, lower: RidgeHead, batch: dict) -> torch.Tensor:
    """L_G: the head's pseudo-Huber fit on the training batch plus λ/2 ‖θ‖²."""
    return pseudo_huber(lower(upper(batch["raw"])) - batch["rgb"]) + lower.penalty()


def ridge_upper_loss(upper: nn.Module, lower: nn.Module, batch: dict) -> torch.Tensor:
    """L_F: the head's squared error on the validation batch."""
    return F.mse_loss(lower(upper(batch["raw"])), batch["rgb"])


def fidelity_problem(cfg: FidelityConfig) -> tuple[BilevelProblem, dict, dict]:
    """The float64 problem of the module docstring, with its training and validation batches."""
    from bgl.data.synthetic import SyntheticLowLight
    from bgl.models.generator import build_generator

    torch.manual_seed(cfg.seed)
    upper = build_generator(cfg.width).to(DTYPE)
    lower = RidgeHead(cfg.ridge).to(DTYPE)
    data = SyntheticLowLight(2 * cfg.batch_size, size=cfg.crop, seed=cfg.seed)
    items = [data[i] for i in range(len(data))]

    def batch(part: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([it[key] for it in part]).to(DTYPE) for key in ("raw", "rgb")}

    n = cfg.batch_size
    problem = BilevelProblem(upper, lower, ridge_lower_loss, ridge_upper_loss)
    return problem, batch(items[:n]), batch(items[n:])


def largest_eigenvalue(problem: BilevelProblem, batch: dict, iters: int = 50) -> float:
    """Power iteration on ∇²_{θθ} L_G (exact HVPs): the lower level's smoothness constant."""

    theta = problem.lower_params()
    with grad_disabled(problem.upper_params()):
        return _power_iteration(problem, batch, theta, iters)


def _power_iteration(problem: BilevelProblem, batch: dict, theta: list, iters: int) -> float:
    from bgl.solvers.reference import hessian_vector_product

    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in theta]
    value = 0.0
    for _ in range(iters):
        n = dot(v, v).sqrt()
        v = [x / n for x in v]
        hv = hessian_vector_product(
            lambda: problem.lower_loss(problem.upper, problem.lower, batch), theta, v
        )
        value = float(dot(v, hv))
        v = hv
    return value


def gradient_steps(problem: BilevelProblem, batch: dict, lr: float, steps: int) -> None:
    """θ ← θ − η ∇_θ L_G, `steps` times, in place (ω fixed): the training loop's lower step."""
    theta = problem.lower_params()
    with grad_disabled(problem.upper_params()):  # no graph through F
        for _ in range(steps):
            g = grads(problem.lower_loss(problem.upper, problem.lower, batch), theta)
            set_params(theta, [p.detach() - lr * gi for p, gi in zip(theta, g)])


def compare(h: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    """Cosine similarity and relative error ‖h − ref‖ / ‖ref‖ of two parameter lists."""
    diff = [a - b for a, b in zip(h, ref, strict=True)]
    h_norm, ref_norm = float(dot(h, h).sqrt()), float(dot(ref, ref).sqrt())
    return {
        "cosine": float(dot(h, ref)) / max(h_norm * ref_norm, 1e-300),
        "rel_error": float(dot(diff, diff).sqrt()) / max(ref_norm, 1e-300),
        "norm_ratio": h_norm / max(ref_norm, 1e-300),
    }


def run_fidelity_bench(
    cfg: FidelityConfig,
    *,
    out_dir: str | Path | None = "results/bench",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """The k and δ sweeps against the reference; Parquet rows and a PNG plot in `out_dir`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only stall on a shared machine
    try:
        return _run(cfg, out_dir, console)
    finally:
        torch.set_num_threads(threads)


def _run(
    cfg: FidelityConfig, out_dir: str | Path | None, console: Console | None
) -> list[dict[str, Any]]:
    from bgl.results.parquet import write_rows
    from bgl.results.provenance import git_commit, library_versions
    from bgl.solvers.reference import reference_hypergradient

    say = console.log if console else (lambda *a, **k: None)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    problem, train, val = fidelity_problem(cfg)
    theta = problem.lower_params()
    theta0 = [p.detach().clone() for p in theta]
    say("reference hypergradient (Newton-CG lower solve, CG on exact HVPs) ...")
    ref = reference_hypergradient(problem, train, val)
    lipschitz = largest_eigenvalue(problem, train)
    lr = cfg.lower_lr_scale / lipschitz
    base = {
        "lower_lr": lr,
        "lower_hessian_max_eig": lipschitz,
        "ref_lower_grad_norm": ref.lower_grad_norm,
        "ref_cg_residual": ref.cg_residual,
        "ref_cg_iterations": ref.cg_iterations,
        "ref_norm": float(dot(ref.hypergradient, ref.hypergradient).sqrt()),
    }

    def at(k: int) -> float:
        """Reset θ to θ₀, take k lower steps; the distance ‖θ_k − θ*‖ / ‖θ*‖."""
        set_params(theta, theta0)
        gradient_steps(problem, train, lr, k)
        gap = [p.detach() - s for p, s in zip(theta, ref.theta_star)]
        return float(dot(gap, gap).sqrt() / dot(ref.theta_star, ref.theta_star).sqrt())

    def row(solver: str, k: int, delta: float | None, sweep: str) -> dict[str, Any]:
        gap = at(k)  # every solver's hypergradient is taken with θ ending at θ_k
        if solver == "tbgl":
            at(k - 1)  # TBGL unrolls the k-th step itself
        h = hypergradient(solver, problem, train, val, lower_lr=lr, delta=delta or cfg.delta)
        return {
            "sweep": sweep,
            "solver": solver,
            "k": k,
            "delta": delta,
            "theta_gap": gap,
            **compare(h, ref.hypergradient),
            **base,
        }

    rows: list[dict[str, Any]] = []
    say(f"k sweep {cfg.ks} ...")
    for k in cfg.ks:
        for solver in ("naive", "tbgl", "ibgl"):
            rows.append(row(solver, k, cfg.delta if solver == "tbgl" else None, "k"))
    say(f"TBGL δ sweep {cfg.deltas} at k = {cfg.delta_ks} ...")
    for k in cfg.delta_ks:
        for delta in cfg.deltas:
            rows.append(row("tbgl", k, delta, "delta"))
    set_params(theta, theta0)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    extra = {
        "benchmark": "fidelity",
        "timestamp": stamp,
        "git_commit": git_commit(),
        "torch": library_versions().get("torch"),
        "wall_s": time.perf_counter() - start,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
        "omega_numel": sum(p.numel() for p in problem.upper_params()),
        "theta_numel": sum(p.numel() for p in theta),
    }
    name = f"fidelity-{stamp.replace(':', '')}"
    if out_dir is not None:
        extra["plot"] = str(Path(out_dir) / f"{name}.png")
    for r in rows:
        r.update({f"config_{k}": v for k, v in dataclasses.asdict(cfg).items()}, **extra)
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / f"{name}.parquet")
        plot_fidelity(rows, extra["plot"])
    return rows


def plot_fidelity(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Two panels: cosine and relative error against k; TBGL's relative error against δ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4))
    FigureCanvasAgg(fig)
    ax_cos, ax_err, ax_delta = fig.subplots(1, 3)
    for solver in ("naive", "tbgl", "ibgl"):
        pts = sorted((r["k"], r["cosine"], r["rel_error"]) for r in rows if _is(r, "k", solver))
        if pts:
            ks, cos, err = zip(*pts)
            ax_cos.plot(ks, cos, marker="o", label=solver.upper() if solver != "naive" else solver)
            ax_err.plot(ks, err, marker="o", label=solver.upper() if solver != "naive" else solver)
    for k in sorted({r["k"] for r in rows if r["sweep"] == "delta"}):
        pts = sorted(
            (r["delta"], r["rel_error"]) for r in rows if r["sweep"] == "delta" and r["k"] == k
        )
        ds, err = zip(*pts)
        ax_delta.plot(ds, err, marker="o", label=f"TBGL, k = {k}")
    for ax in (ax_cos, ax_err, ax_delta):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_cos.set(xlabel="lower steps k", ylabel="cosine to reference", title="cosine similarity")
    ax_err.set(xlabel="lower steps k", ylabel="‖h − h_ref‖ / ‖h_ref‖", title="relative error")
    ax_err.set_yscale("log")
    ax_delta.set(xlabel="TBGL δ", ylabel="relative error", title="TBGL: finite-difference radius")
    ax_delta.set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _is(row: dict[str, Any], sweep: str, solver: str) -> bool:
    return row["sweep"] == sweep and row["solver"] == solver


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    first = rows[0]
    table = Table(
        title=f"hypergradient fidelity vs the implicit reference (float64; η = "
        f"{first['lower_lr']:.3g}, λ = {first['config_ridge']}, ref ‖∇L_G‖ = "
        f"{first['ref_lower_grad_norm']:.1e}, CG residual {first['ref_cg_residual']:.1e})"
    )
    for col in ("sweep", "solver", "k", "δ", "‖θ_k − θ*‖/‖θ*‖", "cosine", "rel. error"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["sweep"],
            r["solver"],
            str(r["k"]),
            "" if r["delta"] is None else f"{r['delta']:g}",
            f"{r['theta_gap']:.2e}",
            f"{r['cosine']:.4f}",
            f"{r['rel_error']:.3e}",
        )
    console.print(table)
