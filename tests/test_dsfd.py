"""DSFD: torchvision's VGG16 trunk, anchors, matching, hard negatives, loss, NMS, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from bgl.models.boxes import (
    box_iou,
    center_to_corners,
    decode,
    encode,
    match_anchors,
    nms,
)
from bgl.models.dsfd import (
    DSFD,
    STRIDES,
    VGG16_RELU3_3,
    VGG16_RELU4_3,
    VGG16_RELU5_3,
    detect,
    dsfd_loss,
    hard_negatives,
    load_vgg16_weights,
    make_anchors,
    multibox_loss,
    vgg16_features,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _random_boxes(n: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size * 0.8
    wh = 2 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * size * 0.4
    return torch.cat([xy, xy + wh], dim=1)


# -- backbone -----------------------------------------------------------------------------------


def test_vgg16_features_is_torchvisions_trunk():
    trunk = vgg16_features()
    reference = torchvision.models.vgg16(weights=None).features
    # the same modules, index for index, and the same state-dict keys and shapes
    assert [type(m) for m in trunk] == [type(m) for m in reference]
    assert [repr(m) for m in trunk] == [repr(m) for m in reference]
    assert {k: v.shape for k, v in trunk.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    # torchvision's weights load strictly and give torchvision's activations
    trunk.load_state_dict(reference.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x), reference(x))
    assert len(trunk) == 31
    assert [i for i, m in enumerate(trunk) if isinstance(m, torch.nn.MaxPool2d)] == [
        4,
        9,
        16,
        23,
        30,
    ]
    # the taps are the ReLUs right after conv3_3, conv4_3, conv5_3 (convs 14, 21, 28)
    assert (VGG16_RELU3_3, VGG16_RELU4_3, VGG16_RELU5_3) == (15, 22, 29)
    for tap in (VGG16_RELU3_3, VGG16_RELU4_3, VGG16_RELU5_3):
        assert isinstance(trunk[tap], torch.nn.ReLU) and isinstance(trunk[tap - 1], torch.nn.Conv2d)
    small = vgg16_features(0.125)
    assert small[0].out_channels == 8 and small[28].out_channels == 64


# -- anchors ------------------------------------------------------------------------------------


def test_anchor_counts_per_level_and_progressive_sizes():
    model = DSFD(width_mult=0.0625)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        sources = model.sources(x)
        out = model(x)
    sizes = [tuple(s.shape[-2:]) for s in sources]
    assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    counts = [h * w for h, w in sizes]
    total = sum(counts)
    assert out.loc1.shape == (1, total, 4) and out.conf2.shape == (1, total, 2)
    assert out.anchors1.shape == out.anchors2.shape == (total, 4)
    start = 0
    for (h, w), stride, count in zip(sizes, STRIDES, counts):
        a1, a2 = out.anchors1[start : start + count], out.anchors2[start : start + count]
        assert torch.all(a2[:, 2:] == 4 * stride) and torch.all(a1[:, 2:] == 2 * stride)
        assert torch.equal(a1[:, :2], a2[:, :2])  # same centres, half the size
        grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        assert torch.equal(a2[:, 0], (grid_x.flatten() + 0.5) * stride)  # row-major order
        assert torch.equal(a2[:, 1], (grid_y.flatten() + 0.5) * stride)
        start += count
    # at DSFD's 640 training size: maps 160..5, anchors 16..512 (second shot)
    full = make_anchors([(640 // s, 640 // s) for s in STRIDES])
    assert full.shape[0] == 160**2 + 80**2 + 40**2 + 20**2 + 10**2 + 5**2
    assert sorted(set(full[:, 2].tolist())) == [16, 32, 64, 128, 256, 512]


# -- box utilities ------------------------------------------------------------------------------


def test_box_iou_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(7, 50, g), _random_boxes(5, 50, g)
    iou = box_iou(a, b)
    for i in range(7):
        for j in range(5):
            ix = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            iy = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = ix * iy
            area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
            assert iou[i, j].item() == pytest.approx(inter / (area(a[i]) + area(b[j]) - inter))


def test_encode_decode_round_trip_and_closed_form():
    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(20, 100, g)
    anchors = torch.cat([boxes[:, :2] + 3, (boxes[:, 2:] - boxes[:, :2]) * 1.3], dim=1)
    targets = encode(boxes, anchors)
    assert torch.allclose(decode(targets, anchors), boxes, atol=1e-9)
    cx = (boxes[0, 0] + boxes[0, 2]) / 2
    w = boxes[0, 2] - boxes[0, 0]
    assert targets[0, 0].item() == pytest.approx((cx - anchors[0, 0]) / (0.1 * anchors[0, 2]))
    assert targets[0, 2].item() == pytest.approx(math.log(w / anchors[0, 2]) / 0.2)


def _reference_match(gt, anchors, threshold):
    """SSD's matching, written as loops over plain floats."""
    corners = center_to_corners(anchors)
    iou = box_iou(gt, corners).tolist()
    num_gt, num_anchors = len(iou), len(iou[0])
    index, overlap = [], []
    for a in range(num_anchors):
        best = max(range(num_gt), key=lambda j: (iou[j][a], -j))  # first maximum
        index.append(best)
        overlap.append(iou[best][a])
    for j in range(num_gt):
        best_anchor = max(range(num_anchors), key=lambda a: (iou[j][a], -a))
        overlap[best_anchor] = 2.0
        index[best_anchor] = j  # later ground truths overwrite earlier ones
    return index, [o >= threshold for o in overlap]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_anchors_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = make_anchors([(8, 8), (4, 4), (2, 2)], strides=(8, 16, 32), dtype=torch.float64)
    gt = _random_boxes(6, 64, g)
    gt = torch.cat([gt, gt[:1] + 0.01, torch.tensor([[1.0, 1.0, 2.0, 2.0]], dtype=torch.float64)])
    index, positive = match_anchors(gt, anchors, 0.35)
    ref_index, ref_positive = _reference_match(gt, anchors, 0.35)
    assert positive.tolist() == ref_positive
    assert [i for i, p in zip(index.tolist(), ref_positive) if p] == [
        i for i, p in zip(ref_index, ref_positive) if p
    ]
    # every ground truth is matched, even the 1 px box whose best IoU is far below 0.35
    assert {len(gt) - 2, len(gt) - 1} <= set(index[positive].tolist())
    empty_index, empty_positive = match_anchors(gt[:0], anchors, 0.35)
    assert not empty_positive.any() and empty_index.shape == (anchors.shape[0],)


def _reference_negatives(loss, positive, ratio):
    mask = []
    for row, pos in zip(loss.tolist(), positive.tolist()):
        candidates = sorted((-v, i) for i, (v, p) in enumerate(zip(row, pos)) if not p)
        take = min(int(ratio * sum(pos)), len(candidates))
        chosen = {i for _, i in candidates[:take]}
        mask.append([i in chosen for i in range(len(row))])
    return mask


def test_hard_negatives_against_brute_force():
    g = torch.Generator().manual_seed(3)
    loss = torch.rand(4, 40, generator=g).round(decimals=1)  # many ties
    positive = torch.rand(4, 40, generator=g) < 0.1
    positive[2] = False  # no positive: no negative
    positive[3, :] = True
    positive[3, :5] = False  # more negatives wanted than exist
    mask = hard_negatives(loss, positive, 3.0)
    assert mask.tolist() == _reference_negatives(loss, positive, 3.0)
    assert not (mask & positive).any()
    assert mask[3].sum() == 5 and mask[2].sum() == 0


def test_multibox_loss_against_reference():
    g = torch.Generator().manual_seed(4)
    anchors = make_anchors([(6, 6), (3, 3)], strides=(8, 16), dtype=torch.float64)
    num_anchors = anchors.shape[0]
    loc = torch.randn(2, num_anchors, 4, generator=g, dtype=torch.float64, requires_grad=True)
    conf = torch.randn(2, num_anchors, 2, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.full((2, 5, 4), -1.0, dtype=torch.float64)
    boxes[0, :2] = _random_boxes(2, 48, g)
    boxes[1, :3] = _random_boxes(3, 48, g)
    num_boxes = torch.tensor([2, 3])
    loss_l, loss_c = multibox_loss(loc, conf, anchors, boxes, num_boxes)

    ref_l = ref_c = 0.0
    total_pos = 0
    for b in range(2):
        gt = boxes[b, : num_boxes[b]]
        index, positive = _reference_match(gt, anchors, 0.35)
        ce = [
            (torch.logsumexp(conf[b, a], 0) - conf[b, a, int(positive[a])]).item()
            for a in range(num_anchors)
        ]
        background = [torch.logsumexp(conf[b, a], 0).item() - conf[b, a, 0].item() for a in
                      range(num_anchors)]  # fmt: skip
        negatives = _reference_negatives(torch.tensor([background]), torch.tensor([positive]), 3)
        for a in range(num_anchors):
            if positive[a]:
                total_pos += 1
                target = encode(gt[index[a]], anchors[a])
                d = (loc[b, a] - target).abs()
                ref_l += torch.where(d < 1, 0.5 * d**2, d - 0.5).sum().item()
            if positive[a] or negatives[0][a]:
                ref_c += ce[a]
    assert loss_l.item() == pytest.approx(ref_l / total_pos, rel=1e-10)
    assert loss_c.item() == pytest.approx(ref_c / total_pos, rel=1e-10)
    (loss_l + loss_c).backward()
    assert loc.grad.abs().sum() > 0 and conf.grad.abs().sum() > 0


def test_dsfd_loss_sums_both_shots_and_reaches_every_part():
    torch.manual_seed(0)
    model = DSFD(width_mult=0.0625)
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.full((2, 4, 4), -1.0)
    boxes[0, 0] = torch.tensor([10.0, 12.0, 30.0, 34.0])
    boxes[1, :2] = torch.tensor([[5.0, 5.0, 20.0, 22.0], [36.0, 30.0, 60.0, 58.0]])
    num_boxes = torch.tensor([1, 2])
    out = model(x)
    total = dsfd_loss(out, boxes, num_boxes)
    shots = [
        sum(multibox_loss(loc, conf, anchors, boxes, num_boxes))
        for loc, conf, anchors in (
            (out.loc1, out.conf1, out.anchors1),
            (out.loc2, out.conf2, out.anchors2),
        )
    ]
    assert total.item() == pytest.approx((shots[0] + shots[1]).item(), rel=1e-6)
    parts = [model.vgg[0].weight, model.conf1[0].weight, model.loc2[0].weight]
    parts.append(model.fem[0].branches[2][0].weight)
    grads = torch.autograd.grad(total, parts)
    assert all(g.abs().sum() > 0 for g in grads)


# -- inference ----------------------------------------------------------------------------------


def _reference_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    keep = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[k : k + 1]).item() <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_nms_against_quadratic_reference(threshold):
    g = torch.Generator().manual_seed(5)
    centres = _random_boxes(6, 60, g)
    jitter = torch.randn(60, 4, generator=g, dtype=torch.float64) * 3
    boxes = centres.repeat(10, 1) + jitter
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(60, generator=g, dtype=torch.float64).round(decimals=1)  # ties
    keep = nms(boxes, scores, threshold)
    assert keep.tolist() == _reference_nms(boxes, scores, threshold)
    assert nms(boxes, scores, threshold, top_k=3).tolist() == keep[:3].tolist()
    assert nms(boxes[:0], scores[:0], threshold).numel() == 0


def test_detect_thresholds_decoding_and_top_k():
    anchors = make_anchors([(4, 4)], strides=(16,))
    num = anchors.shape[0]
    logits = torch.zeros(1, num, 2)
    logits[0, :, 1] = torch.linspace(-5, 5, num)  # face probability rises with the index
    out_loc = torch.zeros(1, num, 4)
    from bgl.models.dsfd import DSFDOutput

    out = DSFDOutput(out_loc, logits, out_loc, logits, anchors, anchors)
    (boxes, scores), = detect(out, score_threshold=0.5, nms_threshold=0.3, top_k=750)  # fmt: skip
    probs = torch.softmax(logits[0], -1)[:, 1]
    # zero offsets decode to the anchors themselves (64 px anchors at stride 16 overlap heavily)
    expected = _reference_nms(center_to_corners(anchors), probs, 0.3)
    expected = [i for i in expected if probs[i] > 0.5]
    assert torch.allclose(boxes, center_to_corners(anchors)[expected])
    assert torch.allclose(scores, probs[expected]) and (scores > 0.5).all()
    (clipped, _), = detect(out, image_size=(64, 64), score_threshold=0.0, top_k=2)  # fmt: skip
    assert clipped.shape[0] == 2 and clipped.min() >= 0 and clipped.max() <= 64


# -- weights ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_dsfd():
    torch.manual_seed(0)
    return DSFD(width_mult=1.0)


def test_load_vgg16_weights_torchvision_and_dsfd_files(tmp_path, full_dsfd, monkeypatch):
    trunk = vgg16_features()
    state = {f"features.{k}": torch.randn_like(v) for k, v in trunk.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torchvision_file = tmp_path / "vgg16-397923af.pth"
    torch.save(state, torchvision_file)
    assert load_vgg16_weights(full_dsfd, torchvision_file) == str(torchvision_file)
    assert torch.equal(full_dsfd.vgg[28].weight, state["features.28.weight"])

    reduced = {k[len("features.") :]: v + 1 for k, v in state.items() if k.startswith("features.")}
    reduced["31.weight"] = torch.randn_like(full_dsfd.fc6.weight)
    reduced["31.bias"] = torch.randn_like(full_dsfd.fc6.bias)
    reduced["33.weight"] = torch.randn_like(full_dsfd.fc7.weight)
    reduced["33.bias"] = torch.randn_like(full_dsfd.fc7.bias)
    dsfd_file = tmp_path / "vgg16_reducedfc.pth"
    torch.save(reduced, dsfd_file)
    monkeypatch.setenv("BGL_VGG16_WEIGHTS", str(dsfd_file))
    load_vgg16_weights(full_dsfd)
    assert torch.equal(full_dsfd.vgg[0].weight, reduced["0.weight"])
    assert torch.equal(full_dsfd.fc6.weight, reduced["31.weight"])
    assert torch.equal(full_dsfd.fc7.bias, reduced["33.bias"])


def test_load_vgg16_weights_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("BGL_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    small = DSFD(width_mult=0.0625)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        load_vgg16_weights(small)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_vgg16_weights(small, tmp_path / "missing.pth")
    file = tmp_path / "vgg.pth"
    torch.save({k: torch.randn_like(v) for k, v in vgg16_features().state_dict().items()}, file)
    with pytest.raises(ValueError, match="width_mult=1"):
        load_vgg16_weights(small, file)
    torch.save({"0.weight": torch.zeros(1)}, file)
    with pytest.raises(ValueError, match="not a VGG16 state dict"):
        load_vgg16_weights(small, file)


def test_input_norms():
    grey = torch.full((1, 3, 2, 2), 0.5)
    imagenet = DSFD(width_mult=0.0625).normalize(grey)[0, :, 0, 0]
    expected = [(0.5 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert torch.allclose(imagenet, torch.tensor(expected))
    # Caffe VGG (DSFD's base file): BGR order, 0..255, mean (104, 117, 123) subtracted
    caffe = DSFD(width_mult=0.0625, input_norm="caffe").normalize(grey)[0, :, 0, 0]
    assert torch.allclose(caffe, torch.tensor([127.5 - 104, 127.5 - 117, 127.5 - 123]), atol=1e-4)
    with pytest.raises(ValueError, match="input_norm"):
        DSFD(input_norm="bgr")
