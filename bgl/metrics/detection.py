"""Detection average precision (DARK FACE / WIDER FACE / VOC style) and precision-recall curves.

DARK FACE is scored by AP at IoU 0.5 with VOC's all-point interpolation: detections of all images
are ranked by score; walking down the ranking, a detection is a true positive when its best-IoU
ground-truth box in the same image has IoU >= 0.5 and was not already claimed by a higher-scored
detection, otherwise a false positive (WIDER FACE's and VOC's rule: a duplicate of a claimed face
does not fall back to another face). AP is the area under the precision envelope
(precision made monotonically non-increasing in recall), summed over the recall steps.

`match="coco"` and `interpolation="coco101"` reproduce pycocotools' AP50 instead (a detection
claims the best-IoU *unclaimed* face; precision sampled at 101 recall points), which is how the
tests cross-check this module against pycocotools on the same detections.

Ties in score keep image order, then each image's own order (stable sorts, as pycocotools).
Boxes are corner form in pixels with continuous coordinates (no "+1" in widths, as COCO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bgl.models.boxes import box_iou

Match = Literal["voc", "coco"]
Interpolation = Literal["voc", "coco101"]


@dataclass(frozen=True)
class PRCurve:
    """Ranked detections of a set: score, true positive flag, cumulative precision and recall."""

    scores: np.ndarray  # (D,) descending
    true_positive: np.ndarray  # (D,) bool
    precision: np.ndarray  # (D,) after each detection
    recall: np.ndarray  # (D,)
    num_gt: int

    def rows(self) -> list[dict[str, float | int | bool]]:
        """One dict per ranked detection, for a Parquet table."""
        return [
            {
                "rank": i + 1,
                "score": float(s),
                "true_positive": bool(t),
                "precision": float(p),
                "recall": float(r),
                "num_gt": self.num_gt,
            }
            for i, (s, t, p, r) in enumerate(
                zip(self.scores, self.true_positive, self.precision, self.recall)
            )
        ]


def _as_f64(x: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1, 4)


def match_image(
    boxes: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    iou_threshold: float = 0.5,
    match: Match = "voc",
) -> tuple[np.ndarray, np.ndarray]:
    """(scores sorted descending, true positive flags) of one image's detections."""
    boxes = _as_f64(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes)
    gt = _as_f64(gt.detach().cpu() if isinstance(gt, torch.Tensor) else gt)
    scores = np.asarray(
        scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64
    ).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    scores, boxes = scores[order], boxes[order]
    tp = np.zeros(len(scores), dtype=bool)
    if len(gt) == 0 or len(boxes) == 0:
        return scores, tp
    iou = box_iou(boxes, gt).numpy()  # (D, G)
    claimed = np.zeros(len(gt), dtype=bool)
    for d in range(len(boxes)):
        candidates = iou[d] if match == "voc" else np.where(claimed, -1.0, iou[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold and not claimed[g]:
            tp[d] = claimed[g] = True
    return scores, tp


def pr_curve(
    detections: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    ground_truths: Sequence[torch.Tensor | np.ndarray],
    iou_threshold: float = 0.5,
    match: Match = "voc",
) -> PRCurve:
    """Precision and recall down the set-wide ranking of detections.

    detections[i] = (boxes (n, 4), scores (n,)) of image i; ground_truths[i] = its (m, 4) boxes.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists but {len(ground_truths)} images")
    all_scores, all_tp, num_gt = [], [], 0
    for (boxes, scores), gt in zip(detections, ground_truths):
        s, tp = match_image(boxes, scores, gt, iou_threshold, match)
        all_scores.append(s)
        all_tp.append(tp)
        num_gt += len(_as_f64(gt.cpu() if isinstance(gt, torch.Tensor) else gt))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    tps = np.cumsum(tp)
    precision = tps / np.arange(1, len(tp) + 1)
    recall = tps / num_gt if num_gt else np.full(len(tp), math.nan)
    return PRCurve(scores, tp, precision, recall, num_gt)


def average_precision(curve: PRCurve, interpolation: Interpolation = "voc") -> float:
    """AP of a PR curve: VOC all-point (area under the precision envelope) or COCO's 101-point.

    NaN when the set has no ground truth (AP is undefined); 0 with ground truth but no detection.
    """
    if curve.num_gt == 0:
        return math.nan
    if len(curve.scores) == 0:
        return 0.0
    precision, recall = curve.precision, curve.recall
    if interpolation == "voc":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    if interpolation == "coco101":
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        thresholds = np.linspace(0.0, 1.0, 101)
        index = np.searchsorted(recall, thresholds, side="left")
        sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0)
        return float(sampled.mean())
    raise ValueError(f"interpolation must be 'voc' or 'coco101', got {interpolation!r}")


def detection_ap(
    detections: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    ground_truths: Sequence[torch.Tensor | np.ndarray],
    iou_threshold: float = 0.5,
    *,
    match: Match = "voc",
    interpolation: Interpolation = "voc",
) -> float:
    """AP of a detection set (default: DARK FACE's, IoU 0.5, VOC all-point)."""
    return average_precision(
        pr_curve(detections, ground_truths, iou_threshold, match), interpolation
    )
