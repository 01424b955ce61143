"""Small float64 bilevel problems shared by every solver test: two tanh MLPs (MSE at both
levels, or a nonlinear lower level with optional BatchNorm), and a parameter vector module
for closed-form problems."""

from __future__ import annotations

import torch
from torch import nn

from bgl.solvers import BilevelProblem

DT = torch.float64


def mse_loss(upper, lower, batch):
    z, y = batch
    return ((lower(upper(z)) - y) ** 2).mean()


def mlp_problem(upper_hidden: int = 4):
    """(problem, train batch of 8, val batch of 6): F = 3->h->3 MLP, G = 3->5->2 MLP."""
    torch.manual_seed(0)
    upper = nn.Sequential(nn.Linear(3, upper_hidden), nn.Tanh(), nn.Linear(upper_hidden, 3))
    lower = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    g = torch.Generator().manual_seed(1)
    train = (torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 2, generator=g, dtype=DT))
    val = (torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT))
    return BilevelProblem(upper.to(DT), lower.to(DT), mse_loss, mse_loss), train, val


def quartic_lower_loss(upper, lower, batch):
    """Data term plus a θ-ω coupling through the features; nonlinear in both."""
    z, y = batch
    out = lower(upper(z))
    return ((out - y) ** 2).mean() + 0.05 * (out**4).mean()


def nonlinear_problem(batchnorm: bool = False, seed: int = 0):
    """(problem, train batch of 8, val batch of 6): F = 3->4->3 MLP, G = 3->5(->BN)->2 MLP,
    L_G = `quartic_lower_loss`, L_F = MSE."""
    torch.manual_seed(seed)
    upper = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    layers = [nn.Linear(3, 5)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Linear(5, 2)]
    lower = nn.Sequential(*layers).to(DT)
    train = (torch.randn(8, 3, dtype=DT), torch.randn(8, 2, dtype=DT))
    val = (torch.randn(6, 3, dtype=DT), torch.randn(6, 2, dtype=DT))
    return BilevelProblem(upper, lower, quartic_lower_loss, mse_loss), train, val


class Vec(nn.Module):
    """One parameter vector `p`: a level of a closed-form problem."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.p = nn.Parameter(value.clone())


def quadratic_problem(seed=0, n=4, m=3):
    """L_G = ½θᵀAθ − θᵀBω + ½cωᵀω (A SPD), L_F = ½‖θ − t‖² + ½λ‖ω‖²; (problem, constants)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=DT)
    a = q @ q.T + n * torch.eye(n, dtype=DT)
    b = torch.randn(n, m, generator=g, dtype=DT)
    t = torch.randn(n, generator=g, dtype=DT)
    lam, c = 0.3, 0.7
    omega = torch.randn(m, generator=g, dtype=DT)
    theta = torch.randn(n, generator=g, dtype=DT)

    def lower_loss(up, lo, batch):
        th, om = lo.p, up.p
        return 0.5 * th @ a @ th - th @ b @ om + 0.5 * c * om @ om

    def upper_loss(up, lo, batch):
        return 0.5 * ((lo.p - t) ** 2).sum() + 0.5 * lam * (up.p**2).sum()

    problem = BilevelProblem(Vec(omega), Vec(theta), lower_loss, upper_loss)
    return problem, dict(a=a, b=b, t=t, lam=lam, c=c, omega=omega, theta=theta)
