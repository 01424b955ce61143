"""Watch the lower level's health per upper step and warn once per run when IBGL's Eq. 9 is
being driven out of its regime (see `bgl.solvers.health` for why it happens).

Three conditions, checked on the diagnostics a solver reports:
- the coefficient explodes: |c| >= EXPLODE_FACTOR · max(|c₀|, COEF_FLOOR), c₀ the run's first
  value — the lower level has converged far enough that Eq. 9's rank-one models vanish;
- |cos(∇θL_F, ∇θL_G)| > COS_LIMIT: the two losses pull θ along one direction, so Eq. 9's
  coefficient is ≈ ‖∇θL_F‖/‖∇θL_G‖ and IBGL nearly cancels (or doubles) ∇ωL_F;
- AID's CG met a direction of non-positive curvature (an indefinite ∇²θθL_G, as a non-convex G
  has) and stopped early: with no product accepted, u = 0 and AID is naive for that step.
The first condition met is the run's one warning.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

EXPLODE_FACTOR = 100.0
COEF_FLOOR = 0.01
COS_LIMIT = 0.99


class BilevelHealthWarning(UserWarning):
    """Eq. 9's approximation is out of its regime in this run (see `bgl.train.health`)."""


class HealthMonitor:
    """Keeps the first coefficient and the one warning issued (both survive a resume)."""

    def __init__(self, *, uses_coefficient: bool = True) -> None:
        # the coefficient and cosine conditions concern a solver whose update uses Eq. 9's
        # coefficient (IBGL); other solvers only record the numbers
        self.uses_coefficient = uses_coefficient
        self.first_coef: float | None = None
        self.warning: str | None = None

    def observe(self, diagnostics: dict[str, float], step: int) -> str | None:
        """Check one step's diagnostics; warns (once per run) and returns the message."""
        coef, cos = diagnostics.get("ibgl_coef"), diagnostics.get("upper_lower_cos")
        if coef is None or self.warning is not None or not math.isfinite(coef):
            return None
        if diagnostics.get("aid_nonpositive"):
            return self._warn(
                f"step {step}: AID's conjugate gradients met non-positive curvature after "
                f"{diagnostics.get('aid_products', 0):.0f} product(s): ∇²θθL_G is indefinite "
                "here, so the solve stopped early; use solver.curvature: gauss_newton or "
                "solver.damping"
            )
        if not self.uses_coefficient:
            return None
        if self.first_coef is None:
            self.first_coef = coef
        limit = EXPLODE_FACTOR * max(abs(self.first_coef), COEF_FLOOR)
        message = None
        if abs(coef) >= limit:
            message = (
                f"step {step}: IBGL's coefficient is {coef:.3g} (it started at "
                f"{self.first_coef:.3g}; ‖∇θL_G‖ = {diagnostics.get('lower_grad_norm', 0):.3g}): "
                "Eq. 9 degrades as the lower level converges; consider solver.name: aid or "
                "solver.relative_damping"
            )
        elif cos is not None and abs(cos) > COS_LIMIT:
            message = (
                f"step {step}: cos(∇θL_F, ∇θL_G) = {cos:.4f}: the two losses pull θ the same "
                f"way, so IBGL's coefficient ({coef:.3g}) nearly cancels ∇ωL_F; consider "
                "solver.name: aid"
            )
        return None if message is None else self._warn(message)

    def _warn(self, message: str) -> str:
        self.warning = message
        warnings.warn(message, BilevelHealthWarning, stacklevel=3)
        return message

    def state_dict(self) -> dict[str, Any]:
        return {"first_coef": self.first_coef, "warning": self.warning}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_coef, self.warning = state.get("first_coef"), state.get("warning")
