"""Dark face detection as the downstream task: G is DSFD (Sections 3.5 and 4.3 of the paper).

Bilevel problem (BGL, Liu et al. 2023, detection setting):

    x = F(raw; ω)                      generative block (SID U-Net), unclamped
    out = G(clamp(x, 0, 1); θ)          DSFD: both shots' box offsets and face logits

    L_G(ω, θ) = multibox(out, boxes) on a training batch                          (lower)
    L_F(ω, θ) = multibox(out, boxes) + l1_weight * L1(x, rgb) on a validation batch (upper)

multibox = DSFD's progressive anchor loss: SSD's multibox loss (IoU 0.35 matching, smooth L1
boxes, softmax classes with 3:1 hard negatives) of the first shot plus that of the second shot
(`bgl.models.dsfd.dsfd_loss`). Matching and mining are selections made without gradient; the
loss is differentiable in θ and, through x, in ω, as every solver needs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from bgl.metrics.detection import PRCurve, average_precision, pr_curve
from bgl.models.dsfd import (
    DSFD,
    INPUT_NORMS,
    DSFDOutput,
    detect,
    dsfd_loss,
    load_vgg16_weights,
    vgg16_weights_path,
)
from bgl.tasks.base import Batch, Task, eval_mode


class DetectTask(Task):
    """Detection: G = DSFD (VGG16), L_G = multibox on F(raw), L_F = multibox (+ L1 to the RGB).

    Options: `width_mult` scales DSFD's channels (1: the published network; tests use ~1/8);
    `pretrained` is a VGG16 weight file for G's backbone ("auto": $BGL_VGG16_WEIGHTS, the torch
    hub cache, or torchvision's file downloaded there; None: random init, the default, so nothing
    depends on files a machine may lack);
    `l1_weight` adds L1(F(raw), rgb) to L_F; `warm_l1_weight` adds it to the warm start (SID's
    own objective: F starts as a RAW->RGB renderer instead of being shaped by detection alone);
    `match_threshold`, `negpos_ratio` configure the loss, `score_threshold`, `nms_threshold`,
    `top_k` the inference (DSFD's 0.05, 0.3, 750) and `iou_threshold` the AP (DARK FACE: 0.5).
    """

    name = "detect"
    primary_metric = "ap"
    mode = "max"
    weight_options = ("pretrained",)

    def __init__(
        self,
        width_mult: float = 1.0,
        pretrained: str | None = None,
        input_norm: str = "imagenet",
        l1_weight: float = 0.0,
        warm_l1_weight: float = 1.0,
        match_threshold: float = 0.35,
        negpos_ratio: float = 3.0,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.3,
        top_k: int = 750,
        iou_threshold: float = 0.5,
    ) -> None:
        if min(l1_weight, warm_l1_weight, negpos_ratio) < 0:
            raise ValueError(
                f"l1_weight, warm_l1_weight and negpos_ratio must be >= 0, got {l1_weight}, "
                f"{warm_l1_weight}, {negpos_ratio}"
            )
        for key, value in (
            ("match_threshold", match_threshold),
            ("nms_threshold", nms_threshold),
            ("iou_threshold", iou_threshold),
            ("score_threshold", score_threshold),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.width_mult = float(width_mult)
        self.pretrained = pretrained
        self.input_norm = input_norm
        self.l1_weight = float(l1_weight)
        self.warm_l1_weight = float(warm_l1_weight)
        self.match_threshold = float(match_threshold)
        self.negpos_ratio = float(negpos_ratio)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.iou_threshold = float(iou_threshold)
        # a missing weights file fails (or is downloaded) now, not when the first trial starts
        self._weights_path: str | None = None
        if pretrained is not None:
            self._weights_path = vgg16_weights_path(None if pretrained == "auto" else pretrained)

    def random_init_warning(self) -> str | None:
        """The published DSFD (width_mult 1) without `pretrained`: its VGG16 starts at random."""
        if self.pretrained is not None or self.width_mult != 1.0:
            return None
        return (
            "task.options.pretrained is null: DSFD's VGG16 backbone starts from random weights, "
            "not from ImageNet as in the paper; set task.options.pretrained: auto (torchvision's "
            "file, downloaded once into the torch hub cache) or a VGG16 file's path"
        )

    def build_lower(self) -> nn.Module:
        """A fresh DSFD G(x; θ), its VGG16 trunk loaded from `pretrained` when given."""
        model = DSFD(width_mult=self.width_mult, input_norm=self.input_norm)
        if self._weights_path is not None:
            load_vgg16_weights(model, self._weights_path)
        return model

    # -- shared pieces ---------------------------------------------------------------------------

    def outputs(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, DSFDOutput]:
        """(x, out): F's unclamped output and DSFD's outputs on clamp(x, 0, 1)."""
        x = upper(batch["raw"])
        rgb = batch.get("rgb")
        if rgb is not None and rgb.shape != x.shape:
            raise ValueError(
                f"F(raw) has shape {tuple(x.shape)} but batch['rgb'] has {tuple(rgb.shape)}; "
                "expected rgb at twice the packed RAW resolution"
            )
        return x, lower(x.clamp(0.0, 1.0))

    def multibox(self, out: DSFDOutput, batch: Batch) -> torch.Tensor:
        """DSFD's two-shot multibox loss against the batch's boxes."""
        return dsfd_loss(
            out,
            batch["boxes"],
            batch["num_boxes"],
            threshold=self.match_threshold,
            negpos_ratio=self.negpos_ratio,
        )

    def _l1(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.l1_loss(x, batch["rgb"])

    # -- the bilevel losses ----------------------------------------------------------------------

    def lower_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_G(ω, θ): the multibox loss on a training batch."""
        return self.lower_criterion(self.lower_prediction(upper, lower, batch), batch)

    def lower_prediction(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, ...]:
        """DSFD's outputs (box offsets, logits and anchors of both shots) as a tuple."""
        return tuple(self.outputs(upper, lower, batch)[1])

    def lower_criterion(self, prediction: tuple[torch.Tensor, ...], batch: Batch) -> torch.Tensor:
        """The multibox loss of `lower_prediction` (smooth L1 + cross-entropy: convex in the
        outputs for a fixed matching, so Gauss-Newton is PSD)."""
        return self.multibox(DSFDOutput(*prediction), batch)

    def upper_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_F(ω, θ): the multibox loss on a validation batch (+ l1_weight * L1(F(raw), rgb))."""
        x, out = self.outputs(upper, lower, batch)
        loss = self.multibox(out, batch)
        if self.l1_weight:
            loss = loss + self.l1_weight * self._l1(x, batch)
        return loss

    def warm_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """Warm start over ω and θ jointly: L_G + warm_l1_weight * L1(F(raw), rgb)."""
        x, out = self.outputs(upper, lower, batch)
        loss = self.multibox(out, batch)
        if self.warm_l1_weight:
            loss = loss + self.warm_l1_weight * self._l1(x, batch)
        return loss

    # -- evaluation ------------------------------------------------------------------------------

    def predict(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Detections per image (boxes (n, 4) in RGB pixels, scores (n,)), in eval mode."""
        with torch.no_grad(), eval_mode(upper, lower):
            x, out = self.outputs(upper, lower, batch)
            return self._detect(out, x)

    def _detect(self, out: DSFDOutput, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return detect(
            out,
            image_size=tuple(x.shape[-2:]),
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            top_k=self.top_k,
        )

    def evaluate_curve(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> tuple[dict[str, float], PRCurve]:
        """`evaluate`'s metrics and the set's precision-recall curve."""
        detections: list[tuple[torch.Tensor, torch.Tensor]] = []
        ground_truths: list[torch.Tensor] = []
        sums = {"upper_loss": 0.0, "lower_loss": 0.0}
        count = 0
        with torch.no_grad(), eval_mode(upper, lower):
            for batch in batches:
                x, out = self.outputs(upper, lower, batch)
                n = x.shape[0]
                lower_value = self.multibox(out, batch).item()
                upper_value = lower_value + (
                    self.l1_weight * self._l1(x, batch).item() if self.l1_weight else 0.0
                )
                sums["lower_loss"] += lower_value * n
                sums["upper_loss"] += upper_value * n
                detections += [(b.cpu(), s.cpu()) for b, s in self._detect(out, x)]
                ground_truths += [
                    batch["boxes"][i, : int(batch["num_boxes"][i])].cpu() for i in range(n)
                ]
                count += n
        if count == 0:
            raise ValueError("evaluate() got no batches")
        curve = pr_curve(detections, ground_truths, self.iou_threshold)
        metrics = {key: value / count for key, value in sums.items()}
        metrics["ap"] = average_precision(curve)
        metrics["recall"] = float(curve.recall[-1]) if len(curve.recall) else 0.0
        metrics["detections_per_image"] = len(curve.scores) / count
        return metrics, curve

    def evaluate(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """AP (IoU `iou_threshold`, VOC all-point) over the set, the final recall, detections per
        image, and the batch-size-weighted upper/lower losses. Both modules run in eval mode under
        no_grad; their train/eval flags are restored. AP is NaN for a set without faces."""
        return self.evaluate_curve(upper, lower, batches)[0]
