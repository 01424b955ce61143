"""IBGL's coefficient and the lower level's health, from two θ-gradients every solver has.

Eq. 9 scales ∇_ω L_G by c = (∇_θ L_F · g) / (‖g‖² + eps), g = ∇_θ L_G. Both rank-one models in
Eq. 9 vanish at θ* (∇²_{ωθ} is O(‖g‖), ∇²_{θθ} is O(‖g‖²)), so as the lower level converges c grows
like cos · ‖∇_θ L_F‖ / ‖g‖ and IBGL's update is dominated by ∇_ω L_G; where L_F and L_G have the
same form, cos ≈ 1 and c ≈ 1, and IBGL nearly cancels ∇_ω L_F. The three numbers below make both
visible per upper step.

Relative damping ρ adds ρ‖∇_θ L_F‖² to the denominator: then |c| <= 1 / (2√ρ) whatever ‖g‖
(by AM-GM, ‖g‖² + ρ‖f‖² >= 2√ρ ‖f‖‖g‖), and c -> 0 as g -> 0 instead of exploding.
"""

from __future__ import annotations

import math

import torch

from bgl.solvers.problem import Grads, Reduce, dot

HEALTH_KEYS = ("lower_grad_norm", "upper_lower_cos", "ibgl_coef")
#: every solver's split of h = ∇ωL_F + coupling (see `combine_terms`)
COUPLING_KEYS = ("direct_grad_norm", "coupling_ratio")


def ibgl_coefficient(
    f_theta: Grads, g_theta: Grads, *, eps: float = 1e-12, relative_damping: float = 0.0
) -> torch.Tensor:
    """c = (f·g) / (g·g + ρ f·f + eps), detached; f = ∇_θ L_F, g = ∇_θ L_G."""
    damping = relative_damping * dot(f_theta, f_theta) if relative_damping else 0.0
    return (dot(f_theta, g_theta) / (dot(g_theta, g_theta) + damping + eps)).detach()


def lower_health(
    f_theta: Grads, g_theta: Grads, *, eps: float = 1e-12, relative_damping: float = 0.0
) -> dict[str, float]:
    """‖∇_θ L_G‖, cos(∇_θ L_F, ∇_θ L_G) and IBGL's coefficient, as floats (from the three inner
    products, each formed once)."""
    ff, gg, fg = (
        float(dot(a, b)) for a, b in ((f_theta, f_theta), (g_theta, g_theta), (f_theta, g_theta))
    )
    denom = (ff * gg) ** 0.5
    return {
        "lower_grad_norm": gg**0.5,
        "upper_lower_cos": fg / denom if denom > 0 else 0.0,
        "ibgl_coef": fg / (gg + relative_damping * ff + eps),
    }


def combine_terms(
    direct: Grads,
    coupling: Grads | None,
    reduce: Reduce,
    diagnostics: dict[str, float],
    coupling_max: float = 0.0,
) -> Grads:
    """h = direct + coupling, reduced (one call), recording ‖direct‖ and the coupling ratio.

    The ratio ‖h − ∇ωL_F‖ / ‖∇ωL_F‖ = ‖coupling‖ / ‖direct‖ says how far a solver's update moves
    ω from the first-order direction: near 0, every solver is naive and a study cannot tell them
    apart. `direct` is the solver's own ∇ωL_F (TBGL's at the unrolled θ'); `coupling` None (naive,
    or TBGL with η = 0) is a ratio of exactly 0. Both terms are reduced before their norms, so the
    numbers are the global ones on any number of workers; keeping them apart costs one ω-sized
    list, which is why solvers only split h when diagnostics are asked for.

    `coupling_max` κ > 0 is a trust region on the second-order term: a coupling longer than
    κ‖direct‖ is scaled back to that length (`coupling_clipped` 1 in the diagnostics; the ratio
    recorded is the one before clipping).
    """
    n = len(direct)
    both = reduce([*direct, *(coupling or [])])
    direct, coupling = both[:n], both[n:]
    direct_norm = float(dot(direct, direct)) ** 0.5
    coupling_norm = float(dot(coupling, coupling)) ** 0.5 if coupling else 0.0
    diagnostics.update(
        direct_grad_norm=direct_norm,
        coupling_ratio=(
            coupling_norm / direct_norm
            if direct_norm > 0
            else (math.inf if coupling_norm > 0 else 0.0)
        ),
    )
    clipped = coupling_max > 0 and coupling_norm > coupling_max * direct_norm
    if coupling_max > 0:
        diagnostics["coupling_clipped"] = float(clipped)
    if clipped:
        scale = coupling_max * direct_norm / coupling_norm
        return [d.add_(c, alpha=scale) for d, c in zip(direct, coupling)]
    return [d.add_(c) for d, c in zip(direct, coupling)] if coupling else direct
