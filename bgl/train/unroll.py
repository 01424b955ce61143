"""The lower optimiser's next step as a function of the gradient, without taking it: what TBGL
unrolls (`solver.unroll: optimizer`).

For gradients g of the lower parameters θ, `optimizer_unroll(opt)(g)` returns (Δθ, P): the
update the optimiser's next `step()` would apply, and the diagonal of ∂Δθ/∂g with the optimiser's
state held constant, which scales TBGL's second-order term (−∇²ωθ L_G · P v).

- SGD (momentum μ, dampening d, no Nesterov): buf' = μ·buf + (1 − d)·g (g itself on the first
  step), Δθ = −lr·buf'; P = lr·(1 − d), or lr on the first step.
- Adam (no amsgrad): m' = β1 m + (1 − β1) g, v' = β2 v + (1 − β2) g², Δθ = −lr·m̂'/(√v̂' + ε)
  with the bias corrections of step t + 1; P = lr·(1 − β1)/(1 − β1^(t+1)) / (√v̂' + ε): the first
  moment's dependence on g, the second moment held constant (it sets the step's scale, not its
  direction). Weight decay adds wd·θ to g, which does not depend on ω.

Plain SGD at the scheduled rate (`solver.unroll: sgd`, the paper's form) is P = lr for any
optimiser; with Adam its step is typically an order of magnitude smaller than the one taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Grads = list[torch.Tensor]
#: g -> (Δθ, P): the next update and its diagonal sensitivity to g
LowerUnroll = Callable[[Grads], tuple[Grads, Grads]]


def optimizer_unroll(optimizer: torch.optim.Optimizer) -> LowerUnroll:
    """The unroll of `optimizer`'s next step over its parameters in order (one param group per
    optimiser, as `build_optimizer` makes them); ValueError for an optimiser it cannot model."""
    if len(optimizer.param_groups) != 1:
        raise ValueError("the unrolled step models one parameter group")
    group = optimizer.param_groups[0]
    params = list(group["params"])
    if isinstance(optimizer, torch.optim.Adam):
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("the unrolled Adam step models neither amsgrad nor maximize")
        return lambda g: _adam(optimizer, params, group, g)
    if isinstance(optimizer, torch.optim.SGD):
        if group.get("nesterov") or group.get("maximize"):
            raise ValueError("the unrolled SGD step models neither Nesterov nor maximize")
        return lambda g: _sgd(optimizer, params, group, g)
    raise ValueError(f"no unrolled step for {type(optimizer).__name__}; use solver.unroll: sgd")


def _adam(opt: torch.optim.Optimizer, params: list, group: dict, g: Grads) -> tuple[Grads, Grads]:
    beta1, beta2 = group["betas"]
    lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
    steps, scales = [], []
    for p, grad in zip(params, g, strict=True):
        state = opt.state.get(p, {})
        t = float(state["step"]) if "step" in state else 0.0
        m = state.get("exp_avg", torch.zeros_like(p))
        v = state.get("exp_avg_sq", torch.zeros_like(p))
        grad = grad + wd * p.detach() if wd else grad
        m1 = beta1 * m + (1 - beta1) * grad
        v1 = beta2 * v + (1 - beta2) * grad * grad
        bias1, bias2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
        denom = v1.sqrt() / math.sqrt(bias2) + eps
        steps.append(-lr / bias1 * m1 / denom)
        scales.append(lr * (1 - beta1) / bias1 / denom)
    return steps, scales


def _sgd(opt: torch.optim.Optimizer, params: list, group: dict, g: Grads) -> tuple[Grads, Grads]:
    lr, momentum, dampening = float(group["lr"]), group["momentum"], group["dampening"]
    wd = group["weight_decay"]
    steps, scales = [], []
    for p, grad in zip(params, g, strict=True):
        grad = grad + wd * p.detach() if wd else grad
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if momentum and buf is not None:
            steps.append(-lr * (momentum * buf + (1 - dampening) * grad))
            scales.append(torch.full_like(p, lr * (1 - dampening)))
        else:
            steps.append(-lr * grad)
            scales.append(torch.full_like(p, lr))
    return steps, scales
