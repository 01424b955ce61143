"""The pass counters behind every trial's budget columns, on modules small enough to count by
hand."""

from __future__ import annotations

import torch
from torch import nn

from bgl.train.budget import Budget


class Pair(nn.Module):
    """A module with a tuple output, like DSFD's (locations, scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, 2 * y


def test_forward_and_backward_passes_are_counted_once_each():
    torch.manual_seed(0)
    upper, lower = nn.Linear(3, 3), Pair()
    budget = Budget(upper, lower)
    x = torch.randn(4, 3)
    upper(x)  # outside `counting`: evaluation, not counted
    with budget.counting():
        out = upper(x)
        a, b = lower(out)
        loss = (a**2).sum() + b.sum() + out.sum()  # F's output used twice: still one pass
        (g,) = torch.autograd.grad(loss, upper.weight, create_graph=True)
        assert budget.counts["f_backwards"] == 1 and budget.counts["g_backwards"] == 1
        torch.autograd.grad(g.square().sum(), upper.weight)  # double backward: one more each
        with torch.no_grad():
            lower(upper(x))  # forwards without a graph: no backward can follow
    assert budget.counts["f_forwards"] == 2 and budget.counts["g_forwards"] == 2
    assert budget.counts["f_backwards"] == 2 and budget.counts["g_backwards"] == 2
    assert budget.passes == 8
    restored = Budget(nn.Linear(1, 1), nn.Linear(1, 1))
    restored.load_state_dict(budget.state_dict())
    assert restored.counts == budget.counts
