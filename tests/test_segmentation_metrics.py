"""Segmentation IoU: a plain confusion matrix, torchmetrics and a by-hand count must agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from bgl.data import acdc
from bgl.metrics.segmentation import (
    CITYSCAPES_CLASSES,
    CLASS_KEYS,
    IGNORE_INDEX,
    IOU_KEYS,
    NUM_CLASSES,
    TABLE2_ABBREVIATIONS,
    TABLE2_HEADERS,
    SegmentationMeter,
    confusion_matrix,
    iou_from_confusion,
    iou_metrics,
    mean_iou,
)


def _by_hand(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU per class by counting pixels directly (NaN where a class is absent from both)."""
    valid = target != IGNORE_INDEX
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        if union:
            out[c] = (p & t).sum() / union
    return out


def _random_maps(seed: int, shape=(3, 17, 23), classes=NUM_CLASSES, absent=(4, 16)):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=g)
    pred = torch.where(  # mostly right, with errors, so IoUs spread over (0, 1)
        torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, classes, shape, generator=g)
    )
    for c in absent:  # classes that occur nowhere
        target[target == c] = (c + 1) % classes
        pred[pred == c] = (c + 2) % classes
    target[torch.rand(shape, generator=g) < 0.1] = IGNORE_INDEX
    return pred, target


def test_table2_layout_and_unique_keys():
    assert " ".join(TABLE2_ABBREVIATIONS) == (
        "RO SI BU WA FE PO TL TS VE TE SK PE RI CA TR BU TR MO BI"
    )
    assert len(CITYSCAPES_CLASSES) == NUM_CLASSES == len(set(CLASS_KEYS)) == 19
    assert (NUM_CLASSES, IGNORE_INDEX) == (acdc.NUM_CLASSES, acdc.IGNORE_INDEX)
    keys = dict(zip(CITYSCAPES_CLASSES, IOU_KEYS))
    assert keys["road"] == "iou_road" and keys["bicycle"] == "iou_bicycle"
    assert keys["traffic light"] == "iou_traffic_light" and keys["train"] == "iou_train"
    # the paper's BU and TR each head two classes: those are headed by their names
    headers = dict(zip(CITYSCAPES_CLASSES, TABLE2_HEADERS))
    assert [headers[c] for c in ("building", "bus", "truck", "train")] == [
        "building",
        "bus",
        "truck",
        "train",
    ]
    assert (headers["road"], headers["motorcycle"], headers["sky"]) == ("RO", "MO", "SK")


def test_confusion_matrix_small_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]  # the ignored pixel is not counted
    iou = iou_from_confusion(cm)
    # class 0: TP 1, FP 1 (a 2 predicted as 0), FN 1 -> 1/3; class 1: 3 / 4; class 2: 1 / 2
    assert iou.tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert mean_iou(iou) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_torchmetrics_and_hand_count(seed):
    pred, target = _random_maps(seed)
    iou = iou_from_confusion(confusion_matrix(pred, target))
    hand = _by_hand(pred.numpy(), target.numpy(), NUM_CLASSES)
    np.testing.assert_allclose(iou.numpy(), hand, rtol=0, atol=1e-12, equal_nan=True)
    assert math.isnan(iou[4]) and math.isnan(iou[16])  # absent classes have no IoU
    reference = MulticlassJaccardIndex(NUM_CLASSES, average="none", ignore_index=IGNORE_INDEX)
    per_class = reference(pred, target).double()
    present = ~torch.isnan(iou)
    torch.testing.assert_close(iou[present], per_class[present], rtol=0, atol=1e-6)
    macro = MulticlassJaccardIndex(NUM_CLASSES, average="macro", ignore_index=IGNORE_INDEX)
    assert mean_iou(iou) == pytest.approx(float(macro(pred, target)), abs=1e-6)
    assert mean_iou(iou) == pytest.approx(np.nanmean(hand), abs=1e-12)


def test_meter_accumulates_over_batches_like_one_big_batch():
    pred, target = _random_maps(5, shape=(6, 16, 16))
    meter = SegmentationMeter()
    for i in range(0, 6, 2):
        meter.update(pred[i : i + 2], target[i : i + 2])
    whole = iou_from_confusion(confusion_matrix(pred, target))
    np.testing.assert_array_equal(meter.compute().numpy(), whole.numpy())
    # per-image IoU averaged would differ: the set-level IoU pools pixels first
    per_image = np.nanmean(
        [mean_iou(iou_from_confusion(confusion_matrix(p, t))) for p, t in zip(pred, target)]
    )
    assert per_image != pytest.approx(mean_iou(whole), abs=1e-4)


def test_meter_detects_a_disagreement():
    pred, target = _random_maps(3)
    meter = SegmentationMeter()
    meter.update(pred, target)
    meter.confusion[0, 0] += 5  # corrupt one computation
    with pytest.raises(RuntimeError, match="mismatch"):
        meter.compute()


def test_iou_metrics_keys_leave_out_undefined_classes():
    pred, target = _random_maps(4)
    metrics = iou_metrics(iou_from_confusion(confusion_matrix(pred, target)))
    assert "iou_fence" not in metrics and "iou_train" not in metrics  # classes 4, 16 are absent
    assert set(metrics) == {"miou"} | (set(IOU_KEYS) - {"iou_fence", "iou_train"})
    assert all(math.isfinite(v) for v in metrics.values())
    empty = SegmentationMeter().compute()
    assert torch.isnan(empty).all() and math.isnan(mean_iou(empty))


def test_out_of_range_ids_are_errors():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2))
