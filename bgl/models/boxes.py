"""Box utilities of SSD-style detectors: anchor matching and encoding (bgl's), IoU and NMS
(torchvision.ops).

Conventions: boxes are (N, 4) tensors in pixel coordinates, corner form (x1, y1, x2, y2) unless
a name says "center" (cx, cy, w, h). Coordinates are continuous (no "+1" on widths), as in COCO.
Anchors are center form. Everything is scale-free, so the same code works on normalised boxes.
"""

from __future__ import annotations

import torch
from torchvision import ops

#: SSD/DSFD encoding variances (centre, size).
VARIANCES: tuple[float, float] = (0.1, 0.2)


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    half = boxes[..., 2:] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], dim=-1)


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of corner-form boxes a (N, 4) and b (M, 4).

    `torchvision.ops.box_iou`, except that a pair whose union is empty (two zero-area boxes) has
    IoU 0 rather than NaN: a NaN would win every argmax in anchor and detection matching.
    """
    return ops.box_iou(a, b).nan_to_num(nan=0.0)


def match_anchors(
    gt: torch.Tensor, anchors: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's bipartite-then-threshold matching of ground-truth boxes to anchors.

    gt: (G, 4) corner form; anchors: (A, 4) center form. Returns (index, positive): for every
    anchor the index of its ground truth (A,) long and whether it is a positive (A,) bool.

    Rules (SSD / S3FD / DSFD): each anchor takes the ground truth of highest IoU and is positive
    if that IoU >= `threshold`; then every ground truth is forced onto its own best anchor
    (the first one on ties), which becomes positive whatever its IoU, so no face goes unmatched.
    When several ground truths share one best anchor, the last of them keeps it (SSD's loop
    order). With no ground truth every anchor is negative (index 0).
    """
    num_anchors = anchors.shape[0]
    if gt.shape[0] == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
        return zeros, torch.zeros(num_anchors, dtype=torch.bool, device=anchors.device)
    iou = box_iou(gt, center_to_corners(anchors))  # (G, A)
    best_gt_iou, index = iou.max(dim=0)
    best_anchor = iou.argmax(dim=1)  # (G,), first maximum on ties
    order = torch.arange(gt.shape[0], device=gt.device)
    forced = torch.full((num_anchors,), -1, dtype=torch.long, device=gt.device)
    forced.scatter_reduce_(0, best_anchor, order, reduce="amax")  # last ground truth wins
    is_forced = forced >= 0
    index = torch.where(is_forced, forced, index)
    positive = is_forced | (best_gt_iou >= threshold)
    return index, positive


def encode(
    matched: torch.Tensor, anchors: torch.Tensor, variances: tuple[float, float] = VARIANCES
) -> torch.Tensor:
    """Regression targets of corner-form boxes against center-form anchors (SSD's encoding)."""
    center = corners_to_center(matched)
    offset = (center[..., :2] - anchors[..., :2]) / (variances[0] * anchors[..., 2:])
    scale = torch.log(center[..., 2:] / anchors[..., 2:]) / variances[1]
    return torch.cat([offset, scale], dim=-1)


def decode(
    loc: torch.Tensor, anchors: torch.Tensor, variances: tuple[float, float] = VARIANCES
) -> torch.Tensor:
    """Corner-form boxes from regression outputs `loc` (..., A, 4); inverse of `encode`."""
    centre = anchors[..., :2] + loc[..., :2] * variances[0] * anchors[..., 2:]
    size = anchors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return center_to_corners(torch.cat([centre, size], dim=-1))


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int = 0
) -> torch.Tensor:
    """Greedy non-maximum suppression (`torchvision.ops.nms`); indices of the kept boxes, best
    first, at most `top_k` of them when `top_k` > 0.

    A box is dropped when its IoU with a better kept box exceeds `threshold`.
    """
    keep = ops.nms(boxes, scores, threshold)
    return keep[:top_k] if top_k > 0 else keep
