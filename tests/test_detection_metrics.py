"""Detection AP: exact values on hand-made cases and agreement with pycocotools."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from bgl.metrics.detection import average_precision, detection_ap, match_image, pr_curve


def _box(x, y, w, h):
    return [x, y, x + w, y + h]


def test_perfect_detections_give_ap_one():
    gts = [np.array([_box(0, 0, 10, 10), _box(20, 20, 5, 8)]), np.array([_box(3, 4, 6, 6)])]
    dets = [(g, np.linspace(0.9, 0.5, len(g))) for g in gts]
    assert detection_ap(dets, gts) == 1.0
    assert detection_ap(dets, gts, match="coco", interpolation="coco101") == 1.0


def test_hand_computed_small_case():
    gt_a, gt_b, gt_c = _box(0, 0, 10, 10), _box(50, 50, 10, 10), _box(80, 0, 10, 10)
    gts = [np.array([gt_a, gt_c]), np.array([gt_b])]
    dets = [
        (np.array([gt_a, _box(1, 0, 10, 10)]), np.array([0.9, 0.8])),  # TP, then a duplicate: FP
        (np.array([gt_b, _box(20, 20, 5, 5)]), np.array([0.7, 0.6])),  # TP, FP; gt_c missed
    ]
    curve = pr_curve(dets, gts)
    assert curve.true_positive.tolist() == [True, False, True, False]
    assert np.allclose(curve.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    assert np.allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # all-point: recall 0 -> 1/3 at precision 1, 1/3 -> 2/3 at the envelope's 2/3
    assert average_precision(curve) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # COCO 101-point: thresholds 0..0.33 (34 of them) at 1, 0.34..0.66 (33) at 2/3, the rest 0
    assert average_precision(curve, "coco101") == pytest.approx((34 + 33 * 2 / 3) / 101)


def test_iou_exactly_half_is_a_match_and_duplicates_follow_each_protocol():
    gt = np.array([_box(0, 0, 10, 10)])
    half = np.array([_box(0, 0, 10, 5)])  # IoU 0.5 exactly
    assert match_image(half, [1.0], gt)[1].tolist() == [True]
    # two faces side by side; both detections overlap face A best, the second also B by >= 0.5
    faces = np.array([_box(0, 0, 10, 10), _box(2, 0, 10, 10)])
    boxes = np.array([_box(0, 0, 10, 10), _box(1, 0, 10, 10)])
    voc = match_image(boxes, [0.9, 0.8], faces, match="voc")[1]
    coco = match_image(boxes, [0.9, 0.8], faces, match="coco")[1]
    assert voc.tolist() == [True, False]  # VOC / WIDER FACE: the best face was taken -> FP
    assert coco.tolist() == [True, True]  # COCO: falls back to the best unclaimed face


def test_empty_cases():
    gts = [np.array([_box(0, 0, 10, 10)])]
    assert detection_ap([(np.zeros((0, 4)), np.zeros(0))], gts) == 0.0
    assert math.isnan(detection_ap([(np.array([_box(0, 0, 1, 1)]), [0.5])], [np.zeros((0, 4))]))
    with pytest.raises(ValueError, match="scores"):
        match_image(np.zeros((2, 4)), [0.5], gts[0])


def _random_set(seed: int, images: int = 25):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
        noisy = gt + rng.normal(0, 3, gt.shape)  # near misses and hits
        clutter_xy = rng.uniform(0, 200, (int(rng.integers(0, 4)), 2))
        clutter = np.concatenate([clutter_xy, clutter_xy + 20], axis=1)
        boxes = np.concatenate([noisy, noisy[: n // 2] + 2, clutter])  # + duplicates
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.uniform(0, 1, len(boxes)).round(2)  # ties across images
        gts.append(gt)
        dets.append((boxes, scores))
    return dets, gts


def _pycocotools_ap50(dets, gts) -> float:
    coco_module = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": i + 1, "width": 300, "height": 300} for i in range(len(gts))]
    annotations, results = [], []
    for i, (gt, (boxes, scores)) in enumerate(zip(gts, dets)):
        for b in gt:
            box = xywh(b)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "bbox": box,
                 "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
        for b, s in zip(boxes, scores):
            results.append({"image_id": i + 1, "category_id": 1, "bbox": xywh(b), "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = coco_module.COCO()
        ground_truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "face"}],
        }
        ground_truth.createIndex()
        detections = ground_truth.loadRes(results)
        evaluator = cocoeval.COCOeval(ground_truth, detections, "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1000]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    return float(np.mean(precision[precision > -1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_mode_matches_pycocotools(seed):
    dets, gts = _random_set(seed)
    ours = detection_ap(dets, gts, match="coco", interpolation="coco101")
    reference = _pycocotools_ap50(dets, gts)
    assert 0.1 < reference < 0.95  # a non-trivial case
    assert ours == pytest.approx(reference, abs=1e-12)
    # the DARK FACE protocol differs from it only by duplicates and the interpolation
    voc = detection_ap(dets, gts)
    assert abs(voc - reference) < 0.1
