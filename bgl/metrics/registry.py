"""The enhancement metrics by name: what each needs, which way is better, and how to run it.

Every metric maps a (B, C, H, W) batch in [0, 1] to one value per image, shape (B,), so callers
average over images. `reference` says what a metric compares the enhanced image with:
"target" (the ground truth: full-reference metrics), "input" (the low-light image it was
enhanced from: LOE, following Wang et al.), or None (no-reference metrics).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from bgl.metrics.brisque import MIN_SIZE as BRISQUE_MIN
from bgl.metrics.brisque import brisque
from bgl.metrics.fsim import MIN_SIZE as FSIM_MIN
from bgl.metrics.fsim import fsim
from bgl.metrics.image import SSIM_KERNEL, psnr, ssim
from bgl.metrics.loe import loe
from bgl.metrics.lpips import MIN_SIZE as LPIPS_MIN
from bgl.metrics.lpips import lpips
from bgl.metrics.niqe import niqe, niqe_size_error
from bgl.metrics.vif import MIN_SIZE as VIF_MIN
from bgl.metrics.vif import vif


@dataclass(frozen=True)
class MetricSpec:
    """One metric: fn(pred[, reference], **options) -> (B,) and how to read it."""

    name: str
    fn: Callable[..., torch.Tensor]
    direction: Literal["max", "min"]
    reference: Literal["target", "input"] | None
    min_size: int = 1
    cost: Literal["cheap", "expensive"] = "cheap"
    label: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.direction == "max" else "↓"

    def size_error(self, height: int, width: int) -> str | None:
        """Why images of this size cannot be scored, or None."""
        if self.name == "niqe":
            return niqe_size_error(height, width)
        if min(height, width) < self.min_size:
            return (
                f"{self.label or self.name} needs images of at least "
                f"{self.min_size}x{self.min_size}, got {height}x{width}"
            )
        return None

    def options(self) -> set[str]:
        """Keyword options fn accepts beyond the images."""
        params = list(inspect.signature(self.fn).parameters)
        n_images = 1 if self.reference is None else 2
        return set(params[n_images:])

    def __call__(
        self,
        pred: torch.Tensor,
        target: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
        **options: Any,
    ) -> torch.Tensor:
        if self.reference is None:
            return self.fn(pred, **options)
        ref = target if self.reference == "target" else inputs
        if ref is None:
            raise ValueError(f"{self.name} needs the {self.reference} image")
        return self.fn(pred, ref, **options)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("psnr", psnr, "max", "target", label="PSNR"),
        MetricSpec("ssim", ssim, "max", "target", min_size=SSIM_KERNEL, label="SSIM"),
        MetricSpec("lpips", lpips, "min", "target", LPIPS_MIN, "expensive", "LPIPS"),
        MetricSpec("vif", vif, "max", "target", VIF_MIN, label="VIF"),
        MetricSpec("fsim", fsim, "max", "target", FSIM_MIN, "expensive", "FSIM"),
        MetricSpec("brisque", brisque, "min", None, BRISQUE_MIN, "expensive", "BRISQUE"),
        MetricSpec("niqe", niqe, "min", None, 1, "expensive", "NIQE"),
        MetricSpec("loe", loe, "min", "input", 1, "expensive", "LOE"),
    )
}
#: The paper's Table 1 column order.
PAPER_TABLE: tuple[str, ...] = ("psnr", "ssim", "lpips", "vif", "fsim", "brisque", "niqe", "loe")


def get_metric(name: str) -> MetricSpec:
    """The spec of metric `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def validate_metrics(
    names: list[str] | tuple[str, ...], options: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[str, ...]:
    """Check metric names and per-metric options; returns the names without duplicates."""
    seen: list[str] = []
    for name in names:
        get_metric(name)
        if name not in seen:
            seen.append(name)
    for name, opts in (options or {}).items():
        spec = get_metric(name)
        if not isinstance(opts, Mapping):
            raise ValueError(f"options for metric {name!r} must be a mapping, got {opts!r}")
        unknown = sorted(set(opts) - spec.options())
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for metric {name!r}; "
                f"known: {', '.join(sorted(spec.options())) or '(none)'}"
            )
    return tuple(seen)
