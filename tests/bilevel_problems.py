"""A small float64 bilevel problem (two tanh MLPs, MSE at both levels) shared by solver tests."""

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
