"""The downstream-task interface every task (enhancement, detection, segmentation) implements.

A task owns the lower-level network G(x; θ) and the two losses of the bilevel problem. Batches are
plain dicts of tensors; every task receives at least

    batch["raw"]    (B, 4, H/2, W/2)  packed RAW (R, G, B, G2), black-subtracted,
                                       exposure-amplified, clipped to [0, 1]: the input z of F
    batch["rgb"]    (B, 3, H, W)       reference RGB in [0, 1] (what the RAW was made from)

plus task-specific keys (boxes, label maps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode, then restore every submodule's own train/eval flag."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


class Task(ABC):
    """L_G (lower, training batch), L_F (upper, validation batch), evaluation, primary metric."""

    name: str = "task"
    primary_metric: str = ""
    mode: Literal["max", "min"] = "max"
    #: Options naming pretrained weight files for G (e.g. an ImageNet backbone). Rebuilding a
    #: task from a training checkpoint sets them to None: the checkpoint holds every weight.
    weight_options: tuple[str, ...] = ()

    def random_init_warning(self) -> str | None:
        """Why G's backbone will start from random weights where the paper starts from
        pretrained ones (a full-size network with its weights option off), naming the option;
        None otherwise. The training loop and a study's preflight warn with it."""
        return None

    @abstractmethod
    def build_lower(self) -> nn.Module:
        """A fresh task network G."""

    @abstractmethod
    def lower_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_G(ω, θ) on a training batch."""

    @abstractmethod
    def upper_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_F(ω, θ) on a validation batch."""

    #: Optional split of L_G into G's outputs and the criterion on them (`lower_loss(F, G, b) ==
    #: lower_criterion(lower_prediction(F, G, b), b)`), for Gauss-Newton curvature; every bgl task
    #: defines both, a task without them just cannot use `solver.curvature: gauss_newton`.
    lower_prediction: Callable[[nn.Module, nn.Module, Batch], tuple[torch.Tensor, ...]] | None = (
        None
    )
    lower_criterion: Callable[[tuple[torch.Tensor, ...], Batch], torch.Tensor] | None = None

    def build_upper(self) -> nn.Module | None:
        """A task's own generative block F, where it is not the U-Net (`model.*`); None: the
        U-Net. Only the positive control (`bgl.tasks.control`) has one."""
        return None

    def data_options(self) -> dict[str, Any]:
        """Settings the task hands its dataset's constructor (a task with data of its own, such
        as the control's vectors); {} for the image datasets."""
        return {}

    def end_values(
        self,
        upper: nn.Module,
        solver: str,
        settings: Mapping[str, Any],
        lower_scale: torch.Tensor | None,
    ) -> dict[str, float]:
        """Values the task adds to a run's final metrics once it ends (the control: its solver's
        closed-form end point); `lower_scale` is the sensitivity of the lower optimiser's next
        step to its gradient (what TBGL unrolls). {} for the image tasks."""
        return {}

    def upper_input(self, batch: Batch) -> torch.Tensor:
        """F's input in a batch. Both bilevel losses must call `upper` once, on this very tensor
        (the solvers then share F's forward and backward passes; see `BilevelProblem`)."""
        return batch["raw"]

    def warm_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """Objective of the warm-start phase, optimised jointly over ω and θ (default: L_G)."""
        return self.lower_loss(upper, lower, batch)

    @abstractmethod
    @torch.no_grad()
    def evaluate(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """Metrics over a validation set; must include `primary_metric`."""
