"""What a run has spent, so solvers can be compared at equal compute: optimiser steps per level
and the forward and backward passes of F and G while training (evaluation excluded), counted by
hooks on the two modules — the passes a solver really runs, shared passes counted once.

A backward pass through a module is counted when a gradient reaches its output: a hook on the
first output tensor that requires grad, registered by the forward hook. One `autograd.grad` or
`.backward()` through a module is one pass however often its output was used; a double backward
(second-order products) is one more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bgl.results.report import BUDGET_KEYS


class Budget:
    """Counters carried in the checkpoint (a resumed run keeps counting from where it was)."""

    def __init__(self, upper: nn.Module, lower: nn.Module) -> None:
        self.counts = dict.fromkeys(BUDGET_KEYS, 0)
        self._active = False
        upper.register_forward_hook(lambda _m, _i, out: self._forward("f", out))
        lower.register_forward_hook(lambda _m, _i, out: self._forward("g", out))

    def _forward(self, module: str, output: Any) -> None:
        if not self._active:
            return
        self.counts[f"{module}_forwards"] += 1
        tensor = _first_grad_tensor(output)
        if tensor is not None:
            tensor.register_hook(lambda _grad: self._backward(module))

    def _backward(self, module: str) -> None:
        self.counts[f"{module}_backwards"] += 1

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    @property
    def passes(self) -> int:
        """Forward plus backward passes of F and G: the compute axis of `compare --per budget`."""
        return sum(self.counts[f"{m}_{d}"] for m in "fg" for d in ("forwards", "backwards"))

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count passes inside the block (a training step), not outside (evaluation)."""
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update({k: int(v) for k, v in state.items() if k in self.counts})


def _first_grad_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor of a module's output (a tensor, or nested tuples/lists/dicts of them)
    through which a gradient can flow."""
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    return None
