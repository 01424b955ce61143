"""The positive control: a bilevel problem small enough that every solver's end point has a
closed form, run through the same loop, studies and tables as the real tasks.

    F(z) = z + ω,   G(x) = x + θ                 (ω, θ ∈ R^C: one shift per channel)
    L_G(ω, θ) = ½ E‖G(F(z)) − t‖²                (G pulls its output to an exposure target t)
    L_F(ω, θ) = ½ E‖G(F(z)) − y‖² + (α/2) E‖F(z) − z − r‖²

on data with split means E z = μ and E y = μ + s (`bgl.data.control`). G undoes any shift of F:
θ*(ω) = t − μ − ω, so the output at θ* does not depend on ω and the exact bilevel objective is
(α/2)‖ω − r‖² plus a constant: **the exact answer is ω = r**. What each solver settles at follows
from its hypergradient at θ = θ*(ω), where ∇θ L_F = e := t − μ − s for every ω, ∇ωL_F = e +
α(ω − r), ∇θθ L_G = I and ∇ωθ L_G = I:

- naive (∇ωL_F alone): α(ω − r) + e = 0, **ω = r − e/α**;
- AID with damping λ ((H + λI)⁻¹ = I/(1 + λ)): **ω = r − (λ/(1 + λ)) e/α**; exact at λ = 0;
- TBGL, unrolled step with sensitivity P (∂θ'/∂g, diagonal): h = (I − P)e + α(ω − r),
  **ω = r − (1 − P) e/α** per channel (P = η for the plain step at rate η; Adam's P from its
  moments at the end of the run);
- IBGL (Eq. 9): its correction c∇ωL_G is the projection of ∇θL_F on the direction ĝ of ∇θL_G,
  so h = (I − ĝĝᵀ)e + α(ω − r) at any θ: with one channel **ω = r** (exact); with several, the
  end point depends on the direction from which θ approaches θ*, and lies on the sphere with
  diameter [r, r − e/α] (α(ω − r)·(α(ω − r) + e) = 0): Eq. 9's bias, `ibgl_sphere_residual`;
- joint (end-to-end on L_F's form over the training data): ∂θ and ∂ω of one objective vanish
  together, **ω = r** (with θ = s − r, not θ*).

These hold for the expected gradients: with minibatches the end points scatter around them (the
study's spread), with full batches they are reached to numerical precision. Every evaluation
reports where F ended (`omega_<c>`) and its distance to the exact answer (`omega_error`, the
primary metric: lower is better); the run's summary adds the closed form for its own solver
(`predicted_omega_<c>`, `predicted_error`) and how far the run ended from it (`end_gap`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bgl.data.control import DTYPE, per_channel
from bgl.tasks.base import Batch, Task


class Shift(nn.Module):
    """x ↦ x + b, one learned shift per channel (float64), starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


class ControlTask(Task):
    """See the module docstring; options: channels C, alpha α, target t (G's), f_target r (F's),
    and the data's mean μ, shift s and noise (per channel: a scalar or C values)."""

    name = "control"
    primary_metric = "omega_error"
    mode = "min"

    def __init__(
        self,
        channels: int = 1,
        alpha: float = 1.0,
        target: float | Sequence[float] = 0.0,
        f_target: float | Sequence[float] = 0.1,
        mean: float | Sequence[float] = 0.5,
        shift: float | Sequence[float] = 0.4,
        noise: float = 0.2,
    ) -> None:
        if channels < 1 or alpha <= 0 or noise < 0:
            raise ValueError("task.options: channels >= 1, alpha > 0 and noise >= 0")
        self.channels, self.alpha, self.noise = channels, float(alpha), float(noise)
        self.t = per_channel(target, channels, "target")
        self.r = per_channel(f_target, channels, "f_target")
        self.mean = per_channel(mean, channels, "mean")
        self.shift = per_channel(shift, channels, "shift")
        self.lower_prediction = self._prediction
        self.lower_criterion = self._criterion

    # -- the problem ------------------------------------------------------------------------
    def data_options(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "mean": self.mean.tolist(),
            "shift": self.shift.tolist(),
            "noise": self.noise,
        }

    def build_upper(self) -> nn.Module:
        return Shift(self.channels)

    def build_lower(self) -> nn.Module:
        return Shift(self.channels)

    def _prediction(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> tuple[torch.Tensor]:
        return (lower(upper(batch["raw"])),)

    def _criterion(self, outputs: tuple[torch.Tensor, ...], batch: Batch) -> torch.Tensor:
        return 0.5 * (outputs[0] - self.t.to(outputs[0])).pow(2).sum(1).mean()

    def lower_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        return self._criterion(self._prediction(upper, lower, batch), batch)

    def upper_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        z, y = batch["raw"], batch["rgb"]
        x = upper(z)
        fit = 0.5 * (lower(x) - y).pow(2).sum(1).mean()
        own = 0.5 * self.alpha * (x - z - self.r.to(x)).pow(2).sum(1).mean()
        return fit + own

    def warm_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """End-to-end learning (`joint`, the warm start) minimises L_F's form on training data."""
        return self.upper_loss(upper, lower, batch)

    # -- evaluation and theory --------------------------------------------------------------
    @property
    def e(self) -> torch.Tensor:
        """∇θ L_F at θ*(ω), the same for every ω: t − μ − s."""
        return self.t - self.mean - self.shift

    @torch.no_grad()
    def evaluate(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        omega = _vector(upper)
        theta = _vector(lower)
        out_sum, count = torch.zeros(self.channels, dtype=DTYPE), 0
        for batch in batches:
            out_sum += lower(upper(batch["raw"])).sum(0).cpu()
            count += len(batch["raw"])
        metrics = {"omega_error": float((omega - self.r).norm())}
        metrics["lower_residual"] = float((out_sum / max(count, 1) - self.t).norm())
        for c in range(self.channels):
            metrics[f"omega_{c}"] = float(omega[c])
            metrics[f"theta_{c}"] = float(theta[c])
        return metrics

    def predicted_omega(
        self, solver: str, settings: Mapping[str, Any], lower_scale: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The closed-form end point of `solver` (module docstring); None where it has none
        (IBGL with several channels). `lower_scale`: TBGL's unrolled-step sensitivity P."""
        e, r, a = self.e, self.r, self.alpha
        if solver in ("joint",) or (solver == "ibgl" and self.channels == 1):
            return r.clone()
        if solver == "naive":
            return r - e / a
        if solver == "aid":
            lam = float(settings.get("damping", 0.0))
            return r - lam / (1 + lam) * e / a
        if solver == "tbgl" and lower_scale is not None:
            return r - (1 - lower_scale.to(DTYPE)) * e / a
        return None

    def end_values(
        self,
        upper: nn.Module,
        solver: str,
        settings: Mapping[str, Any],
        lower_scale: torch.Tensor | None,
    ) -> dict[str, float]:
        """The run's end beside its closed form: predicted_omega_<c>, predicted_error (the
        closed form's distance to the exact answer), end_gap (‖ω − predicted‖); for IBGL,
        ibgl_sphere_residual (0 on the sphere of its possible end points, relative to ‖e‖²)."""
        omega = _vector(upper)
        out: dict[str, float] = {}
        predicted = self.predicted_omega(solver, settings, lower_scale)
        if predicted is not None:
            out["predicted_error"] = float((predicted - self.r).norm())
            out["end_gap"] = float((omega - predicted).norm())
            for c in range(self.channels):
                out[f"predicted_omega_{c}"] = float(predicted[c])
        if solver == "ibgl":
            d = self.alpha * (omega - self.r)
            out["ibgl_sphere_residual"] = float(d @ (d + self.e)) / float(self.e @ self.e)
        out["naive_error"] = float((self.e / self.alpha).norm())
        return {k: v for k, v in out.items() if math.isfinite(v)}


def _vector(module: nn.Module) -> torch.Tensor:
    return next(module.parameters()).detach().cpu().to(DTYPE)
