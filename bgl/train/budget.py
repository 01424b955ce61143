"""What a run has spent, so solvers can be compared at equal compute: optimiser steps per level
and the forward passes of F and G while training (evaluation excluded), counted by forward hooks
on the two modules — the passes a solver really runs, shared passes counted once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from bgl.results.report import BUDGET_KEYS


class Budget:
    """Counters carried in the checkpoint (a resumed run keeps counting from where it was)."""

    def __init__(self, upper: nn.Module, lower: nn.Module) -> None:
        self.counts = dict.fromkeys(BUDGET_KEYS, 0)
        self._active = False
        upper.register_forward_hook(lambda *_: self._forward("f_forwards"))
        lower.register_forward_hook(lambda *_: self._forward("g_forwards"))

    def _forward(self, key: str) -> None:
        if self._active:
            self.counts[key] += 1

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count forward passes inside the block (a training step), not outside (evaluation)."""
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update({k: int(v) for k, v in state.items() if k in self.counts})
