"""Night-time semantic segmentation as the downstream task: G is DeepLabV3+ (ResNet-50/101).

Bilevel problem (BGL, Liu et al. 2023, segmentation setting, ACDC night):

    x = clamp(F(raw; ω), 0, 1)         generative block output, as an image
    s = G(x; θ)                        (B, 19, H, W) class logits, DeepLabV3+

    L_G(ω, θ) = CE(s, labels)   on a training batch      (lower)
    L_F(ω, θ) = CE(s, labels)   on a validation batch    (upper)

with cross-entropy averaged over labelled pixels (label 255 ignored). Evaluation reports the
paper's Table 2: per-class IoU of the 19 Cityscapes classes and their mean, accumulated over the
whole test split (see `bgl.metrics.segmentation`).

BatchNorm: G is full of BatchNorm layers. The training loop's own steps (warm start, lower step)
run G in train mode and update the running statistics, as ordinary training does; the solvers'
extra passes (TBGL's unrolled and perturbed θ, IBGL's and naive's gradient passes) run in the
same mode, so they normalise with batch statistics, but restore every buffer afterwards
(`bgl.solvers.problem.preserved_state`). Training batches need at least 2 images per worker:
ASPP's image-pooling branch applies BatchNorm to a 1x1 map.

Dropout is off by default (`dropout=0`): TBGL's finite difference compares ∇_ω L_G at θ + εv and
θ - εv and divides by 2ε; two different dropout masks would make that difference O(1) rather
than O(ε) and the hypergradient meaningless.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from bgl.metrics.segmentation import (
    IGNORE_INDEX,
    NUM_CLASSES,
    SegmentationMeter,
    iou_metrics,
)
from bgl.models.deeplab import DeepLabV3Plus
from bgl.models.resnet import RESNET_LAYERS, load_resnet_weights, resnet_weights_path
from bgl.tasks.base import Batch, Task, eval_mode


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels; 0 (with a graph) when none is labelled.

    `F.cross_entropy` would return NaN for a batch whose pixels are all ignored (a crop of
    letterbox padding), which the training loop would report as divergence.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in size"
        )
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().clamp_min(1)
    return total / count


class SegmentTask(Task):
    """Segmentation: G = DeepLabV3+, L_G = CE on a training batch, L_F = CE on a validation batch.

    Options: `depth` 50 or 101 (the backbone), `width` (64: the published network; tests use
    4-8), `output_stride` 16 (or 8), `dropout` (ASPP, off; see the module docstring),
    `backbone_weights`: None (random init), a torchvision ImageNet ResNet checkpoint path, or
    "auto" for torchvision's file in the torch hub cache, downloaded there when missing
    (`$BGL_RESNET50_WEIGHTS` / `$BGL_RESNET101_WEIGHTS` also work with "auto").
    `warm_generator_weight` weighs an L1 term on F in the warm start (see `warm_loss`).
    """

    name = "segment"
    primary_metric = "miou"
    mode = "max"
    weight_options = ("backbone_weights",)

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        output_stride: int = 16,
        dropout: float = 0.0,
        backbone_weights: str | None = None,
        warm_generator_weight: float = 1.0,
    ) -> None:
        if depth not in RESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if warm_generator_weight < 0:
            raise ValueError(f"warm_generator_weight must be >= 0, got {warm_generator_weight}")
        if backbone_weights is not None and width != 64:
            raise ValueError(f"backbone_weights need width 64 (published ResNets), got {width}")
        self.depth, self.width, self.output_stride = depth, width, output_stride
        self.dropout = float(dropout)
        self.warm_generator_weight = float(warm_generator_weight)
        self.backbone_weights = backbone_weights
        # a missing weights file fails (or is downloaded) now, not when the first trial starts
        self._weights_path = self._resolve_weights(backbone_weights)

    def random_init_warning(self) -> str | None:
        """The published width (64) without `backbone_weights`: the ResNet starts at random."""
        if self.backbone_weights is not None or self.width != 64:
            return None
        return (
            f"task.options.backbone_weights is null: DeepLabV3+'s ResNet-{self.depth} backbone "
            "starts from random weights, not from ImageNet as in the paper; set "
            "task.options.backbone_weights: auto (torchvision's file, downloaded once into the "
            "torch hub cache) or a ResNet file's path"
        )

    def _resolve_weights(self, weights: str | None) -> str | None:
        if weights is None:
            return None
        given: str | os.PathLike[str] | None = None if weights == "auto" else weights
        return resnet_weights_path(self.depth, given)

    def build_lower(self) -> nn.Module:
        """A fresh DeepLabV3+ G(x; θ), with ImageNet backbone weights when configured."""
        model = DeepLabV3Plus(
            NUM_CLASSES,
            depth=self.depth,
            width=self.width,
            output_stride=self.output_stride,
            dropout=self.dropout,
        )
        if self._weights_path is not None:
            load_resnet_weights(model.backbone, self._weights_path)
        return model

    # -- shared pieces ---------------------------------------------------------------------------

    def outputs(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, x01, logits): F's raw output, its [0, 1] clamp (G's input image), G's logits."""
        x = upper(batch["raw"])
        labels = batch["labels"]
        if x.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"F(raw) has size {tuple(x.shape[-2:])} but batch['labels'] has "
                f"{tuple(labels.shape[-2:])}; expected labels at the RGB resolution"
            )
        x01 = x.clamp(0.0, 1.0)
        return x, x01, lower(x01)

    # -- the bilevel losses ----------------------------------------------------------------------

    def lower_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_G(ω, θ): pixel cross-entropy on a training batch."""
        return self.lower_criterion(self.lower_prediction(upper, lower, batch), batch)

    def lower_prediction(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, ...]:
        """G's logits (what L_G's criterion reads)."""
        return (self.outputs(upper, lower, batch)[-1],)

    def lower_criterion(self, prediction: tuple[torch.Tensor, ...], batch: Batch) -> torch.Tensor:
        """Pixel cross-entropy of `lower_prediction` (convex in the logits: Gauss-Newton is PSD)."""
        return segmentation_loss(prediction[0], batch["labels"])

    def upper_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_F(ω, θ): the same cross-entropy on a validation batch."""
        *_, logits = self.outputs(upper, lower, batch)
        return segmentation_loss(logits, batch["labels"])

    def warm_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """Warm start, jointly over ω and θ: L_G + warm_generator_weight * L1(F(raw), rgb).

        Why the L1 term: G sees F only through clamp(F(raw), 0, 1), so an output channel of a
        freshly initialised F that is negative everywhere gets no gradient from the
        cross-entropy and stays dead; SID's L1 on the unclamped output revives it and starts F
        as a RAW-to-image generator, which is what makes ω transferable between tasks. With
        `warm_generator_weight=0` this is L_G exactly.
        """
        x, _, logits = self.outputs(upper, lower, batch)
        loss = segmentation_loss(logits, batch["labels"])
        if self.warm_generator_weight:
            loss = loss + self.warm_generator_weight * F.l1_loss(x, batch["rgb"])
        return loss

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """mIoU and per-class IoU (`iou_road` ... `iou_bicycle`) over the set, plus the losses.

        IoU comes from one confusion matrix over every labelled pixel of the set, cross-checked
        against torchmetrics (`SegmentationMeter`); classes that occur neither in the labels nor
        in the predictions have no IoU: they are left out of `miou` and get no `iou_*` key.
        `pixel_accuracy` is the fraction of labelled pixels classified correctly. The losses are
        per-pixel cross-entropies averaged over labelled pixels (`upper_loss` and `lower_loss`
        are the same function; both are reported for the Task contract). Both modules run in eval
        mode under no_grad; their train/eval flags are restored afterwards.
        """
        meter = SegmentationMeter(NUM_CLASSES, IGNORE_INDEX)
        loss_sum, pixels, images = 0.0, 0, 0
        with torch.no_grad(), eval_mode(upper, lower):
            for batch in batches:
                *_, logits = self.outputs(upper, lower, batch)
                labels = batch["labels"]
                labelled = int((labels != IGNORE_INDEX).sum())
                loss_sum += segmentation_loss(logits, labels).item() * labelled
                pixels += labelled
                images += labels.shape[0]
                meter.update(logits.argmax(dim=1), labels)
        if images == 0:
            raise ValueError("evaluate() got no batches")
        if pixels == 0:
            raise ValueError(f"evaluate() got {images} images without a labelled pixel")
        out = iou_metrics(meter.compute())
        correct = int(meter.confusion.diagonal().sum())
        out.update(
            pixel_accuracy=correct / pixels,
            upper_loss=loss_sum / pixels,
            lower_loss=loss_sum / pixels,
        )
        return out
