"""Semantic segmentation IoU for the 19 Cityscapes classes, in the paper's Table 2 order.

IoU is computed over a whole set, not per image: one confusion matrix is accumulated over every
labelled pixel (label 255 is ignored), then IoU_c = TP_c / (TP_c + FP_c + FN_c). A class that
never occurs, neither in the labels nor in the predictions, has no IoU (NaN) and is left out of
the mean (Cityscapes' rule, and torchmetrics' "macro" average).

`SegmentationMeter` accumulates two independent computations of the same quantity, a plain
`torch.bincount` confusion matrix and torchmetrics' `MulticlassJaccardIndex`, and `compute()`
fails if they disagree, so an error in either (ignore handling, class order) cannot go unnoticed.

Metric keys name each class by its Cityscapes name (`iou_road`, `iou_traffic_light`, `iou_bus`):
Table 2 abbreviates two pairs of classes alike (BU: building and bus; TR: truck and train), so
its two letters are used as printed headers only where they are unambiguous; the four others
are headed by their names.
"""

from __future__ import annotations

import math

import torch

#: Cityscapes train ids 0..18, in order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
#: The paper's Table 2 column headers, one per class in train-id order (two pairs repeat).
TABLE2_ABBREVIATIONS: tuple[str, ...] = (
    "RO", "SI", "BU", "WA", "FE", "PO", "TL", "TS", "VE", "TE", "SK", "PE", "RI", "CA", "TR",
    "BU", "TR", "MO", "BI",
)  # fmt: skip
NUM_CLASSES = len(CITYSCAPES_CLASSES)
IGNORE_INDEX = 255


#: One key per class, its Cityscapes name (`traffic light` -> `traffic_light`); metrics are
#: named `iou_<key>`.
CLASS_KEYS: tuple[str, ...] = tuple(name.replace(" ", "_") for name in CITYSCAPES_CLASSES)
IOU_KEYS: tuple[str, ...] = tuple(f"iou_{k}" for k in CLASS_KEYS)
#: Printed column headers: the paper's abbreviation where it names one class, else the name.
TABLE2_HEADERS: tuple[str, ...] = tuple(
    abbr if TABLE2_ABBREVIATIONS.count(abbr) == 1 else name
    for abbr, name in zip(TABLE2_ABBREVIATIONS, CITYSCAPES_CLASSES)
)


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    Pixels labelled `ignore_index` are skipped; any other label or prediction outside
    0..num_classes-1 is an error (a silent bincount overflow would shift classes).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("pred", pred)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(
                f"{name} has ids outside 0..{num_classes - 1} (and {ignore_index} for ignore): "
                f"{sorted(set(t[(t < 0) | (t >= num_classes)].unique().tolist()))[:5]}"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (float64); NaN for a class absent from both labels and predictions."""
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_iou(iou: torch.Tensor) -> float:
    """Mean over the classes that have an IoU (NaN if none does)."""
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if present.any() else math.nan


def iou_metrics(iou: torch.Tensor) -> dict[str, float]:
    """{"miou": ..., "iou_road": ..., ..., "iou_bicycle": ...} from 19 per-class IoUs.

    A class without an IoU (NaN) has no key at all: the training loop treats a non-finite
    metric as divergence, and a Parquet row stores the missing column as null.
    """
    if iou.numel() != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} per-class IoUs, got {iou.numel()}")
    per_class = {k: float(v) for k, v in zip(IOU_KEYS, iou) if not math.isnan(float(v))}
    return {"miou": mean_iou(iou), **per_class}


class SegmentationMeter:
    """Accumulates a confusion matrix and torchmetrics' Jaccard index over batches.

    `update(pred, target)` takes class ids (B, H, W); `compute()` returns per-class IoU
    (float64, NaN where undefined) after checking both computations agree to `atol`.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        atol: float = 1e-6,
    ) -> None:
        from torchmetrics.classification import MulticlassJaccardIndex

        self.num_classes, self.ignore_index, self.atol = num_classes, ignore_index, atol
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._jaccard = MulticlassJaccardIndex(
            num_classes, average="none", ignore_index=ignore_index
        )
        self._jaccard_macro = MulticlassJaccardIndex(
            num_classes, average="macro", ignore_index=ignore_index
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        pred, target = pred.detach().cpu(), target.detach().cpu()
        self._jaccard.update(pred, target)
        self._jaccard_macro.update(pred, target)

    def compute(self) -> torch.Tensor:
        iou = iou_from_confusion(self.confusion)
        if not int(self.confusion.sum()):
            return iou  # nothing labelled yet: every class undefined
        present = ~torch.isnan(iou)
        reference = self._jaccard.compute().double()
        reference_mean = float(self._jaccard_macro.compute())
        ours = mean_iou(iou)
        worst = (iou[present] - reference[present]).abs().max().item()
        if worst > self.atol or abs(ours - reference_mean) > self.atol:
            raise RuntimeError(
                f"IoU mismatch: confusion matrix vs torchmetrics differ by {worst:.3g} per class, "
                f"mIoU {ours:.6f} vs {reference_mean:.6f}"
            )
        return iou
