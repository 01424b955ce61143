"""DSFD, the Dual Shot Face Detector (Li et al., CVPR 2019), on torchvision's VGG16 trunk.

    x (B, 3, H, W) in [0, 1]
    VGG16 trunk (torchvision `vgg16().features`) -> conv3_3, conv4_3, conv5_3   strides 4, 8, 16
    fc6 (3x3, dilation 3) + fc7 (1x1)                                        -> fc7  stride 32
    extras conv6_1/conv6_2, conv7_1/conv7_2 (3x3 stride 2)                    -> strides 64, 128

First shot: the six sources (conv3_3/4_3/5_3 L2-normalised, scales 10/8/5). Second shot: the
Feature Enhance Module (FEM) of each source -- a top-down pass that multiplies a level's 1x1
lateral projection by the bilinearly upsampled, 1x1-projected enhanced level above it, then
three dilated (d = 3) 3x3 branches of depth 1, 2 and 3 concatenated -- L2-normalised again on the
first three levels. Each shot has its own 3x3 heads: 4 box offsets and 2 class logits (background,
face) per location, one square anchor per location. Progressive anchors: the first shot's anchors
are half the second's (8..256 vs 16..512 px at strides 4..128); training sums the multibox loss of
both shots, inference uses the second shot only.

Differences from the released DSFD: a `width_mult` scales every channel count (tests use tiny
networks); the first layer of the class head is a plain conv (no max-in-out background
logits); VGG's third pool is torchvision's floor-mode pool (DSFD's Caffe layout uses ceil mode,
which only matters for sides not divisible by 8). Inputs are normalised with torchvision's
ImageNet mean/std (`input_norm="imagenet"`) or Caffe's BGR mean on 0..255 (`"caffe"`, for DSFD's
`vgg16_reducedfc.pth`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights, vgg

from bgl.models.boxes import VARIANCES, decode, encode, match_anchors, nms
from bgl.models.weights import find_weights_file, load_state_dict_file

#: Output strides of the six sources.
STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
#: Anchor side per source relative to its stride: second shot 4x (16..512), first shot 2x.
ANCHOR_SCALE = 4
#: L2Norm initial scales of conv3_3, conv4_3, conv5_3 (S3FD / DSFD).
L2NORM_SCALES: tuple[float, ...] = (10.0, 8.0, 5.0)
#: Full-width channels of the six sources.
SOURCE_CHANNELS: tuple[int, ...] = (256, 512, 512, 1024, 512, 256)
#: torchvision's ImageNet VGG16, downloaded into the torch hub cache when no file is found.
VGG16_WEIGHTS = VGG16_Weights.IMAGENET1K_V1
#: Weight files looked up in the torch hub cache, in order: torchvision's, then DSFD's base file.
VGG16_WEIGHT_FILES: tuple[str, ...] = (VGG16_WEIGHTS.url.rsplit("/", 1)[-1], "vgg16_reducedfc.pth")
VGG16_WEIGHTS_ENV = "BGL_VGG16_WEIGHTS"
INPUT_NORMS = ("imagenet", "caffe")


class DSFDOutput(NamedTuple):
    """Raw head outputs of both shots, anchors in the same order (level-major, row-major)."""

    loc1: torch.Tensor  # (B, A, 4) first shot box offsets
    conf1: torch.Tensor  # (B, A, 2) first shot logits (background, face)
    loc2: torch.Tensor  # (B, A, 4) second shot
    conf2: torch.Tensor  # (B, A, 2)
    anchors1: torch.Tensor  # (A, 4) center form, pixels
    anchors2: torch.Tensor  # (A, 4)


#: torchvision `vgg16().features` indices of the ReLUs after conv3_3, conv4_3 and conv5_3.
VGG16_RELU3_3, VGG16_RELU4_3, VGG16_RELU5_3 = 15, 22, 29


def _channels(full: int, width_mult: float) -> int:
    return max(1, round(full * width_mult))


def vgg16_features(width_mult: float = 1.0) -> nn.Sequential:
    """torchvision's VGG16 trunk (`vgg16().features`: configuration "D", 31 modules), built by
    torchvision's `make_layers` with every conv's channels scaled by `width_mult` (at least 1).

    At `width_mult=1` its keys (`0.weight` ... `28.bias`) are the `features.*` entries of
    `vgg16-397923af.pth` (and the first 29 indices of SSD/DSFD's `vgg16_reducedfc.pth`); smaller
    multipliers give the tiny networks tests train.
    """
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    cfg = [v if v == "M" else _channels(int(v), width_mult) for v in vgg.cfgs["D"]]
    return vgg.make_layers(cfg, batch_norm=False)


def make_anchors(
    feature_sizes: list[tuple[int, int]],
    strides: tuple[int, ...] = STRIDES,
    scale: float = ANCHOR_SCALE,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(A, 4) square center-form anchors in pixels: side `scale * stride`, one per location.

    Centres are at ((j + 0.5) * stride, (i + 0.5) * stride); order is level by level, then
    row-major, matching the flattened head outputs.
    """
    out = []
    for (h, w), stride in zip(feature_sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        side = torch.full_like(cx, float(scale * stride))
        out.append(torch.stack([cx, cy, side, side], dim=-1).reshape(-1, 4))
    return torch.cat(out)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet, as in SSD).

    Why: conv3_3/conv4_3 activations are much larger than deeper ones; normalising them to a
    common scale keeps the multi-level heads balanced.
    """

    def __init__(self, channels: int, scale: float, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _dilated(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        if i:
            layers.append(nn.ReLU())
        channels = in_channels if i == 0 else out_channels
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=3, dilation=3))
    return nn.Sequential(*layers)


class FEM(nn.Module):
    """DSFD's dilated part of the Feature Enhance Module: three branches, 1/2/3 dilated convs.

    Channels split c // 3, c // 3, c - 2 (c // 3); outputs concatenated, then ReLU. Stacked
    dilated convs grow the receptive field (7, 13, 19 px at that level) at the same resolution.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        third = channels // 3
        splits = (third, third, channels - 2 * third)
        self.branches = nn.ModuleList(
            _dilated(channels, c, depth) for depth, c in enumerate(splits, start=1) if c > 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([branch(x) for branch in self.branches], dim=1))


class DSFD(nn.Module):
    """Dual Shot Face Detector over RGB images in [0, 1]; see the module docstring."""

    def __init__(self, width_mult: float = 1.0, input_norm: str = "imagenet") -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.width_mult = float(width_mult)
        self.input_norm = input_norm
        c = [_channels(ch, width_mult) for ch in SOURCE_CHANNELS]
        c512 = _channels(512, width_mult)
        self.vgg = vgg16_features(width_mult)
        self.fc6 = nn.Conv2d(c512, c[3], kernel_size=3, padding=3, dilation=3)
        self.fc7 = nn.Conv2d(c[3], c[3], kernel_size=1)
        c6_1, c7_1 = _channels(256, width_mult), _channels(128, width_mult)
        self.extras = nn.ModuleList(
            [
                nn.Conv2d(c[3], c6_1, kernel_size=1),
                nn.Conv2d(c6_1, c[4], kernel_size=3, stride=2, padding=1),
                nn.Conv2d(c[4], c7_1, kernel_size=1),
                nn.Conv2d(c7_1, c[5], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.l2norm1 = nn.ModuleList(L2Norm(c[i], s) for i, s in enumerate(L2NORM_SCALES))
        self.l2norm2 = nn.ModuleList(L2Norm(c[i], s) for i, s in enumerate(L2NORM_SCALES))
        # FEM top-down: lateral 1x1 per level; 1x1 from the enhanced level above, then upsampled
        self.lateral = nn.ModuleList(nn.Conv2d(ch, ch, kernel_size=1) for ch in c)
        self.topdown = nn.ModuleList(
            nn.Conv2d(c[i + 1], c[i], kernel_size=1) for i in range(len(c) - 1)
        )
        self.fem = nn.ModuleList(FEM(ch) for ch in c)
        self.loc1 = nn.ModuleList(nn.Conv2d(ch, 4, kernel_size=3, padding=1) for ch in c)
        self.conf1 = nn.ModuleList(nn.Conv2d(ch, 2, kernel_size=3, padding=1) for ch in c)
        self.loc2 = nn.ModuleList(nn.Conv2d(ch, 4, kernel_size=3, padding=1) for ch in c)
        self.conf2 = nn.ModuleList(nn.Conv2d(ch, 2, kernel_size=3, padding=1) for ch in c)
        if input_norm == "imagenet":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:  # Caffe VGG: BGR, 0..255, mean subtraction only; channels are flipped in forward
            mean, std = (123.0 / 255, 117.0 / 255, 104.0 / 255), (1 / 255, 1 / 255, 1 / 255)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VGG: torchvision's init (Kaiming normal, fan-out); everything added: Xavier (DSFD)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if name.startswith("vgg."):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the backbone's input convention (ImageNet mean/std, or Caffe BGR)."""
        if self.input_norm == "caffe":
            return (x.flip(1) - self.mean.flip(1)) / self.std
        return (x - self.mean) / self.std

    def sources(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six first-shot feature maps (strides 4..128), before L2Norm."""
        taps = {VGG16_RELU3_3: 0, VGG16_RELU4_3: 1, VGG16_RELU5_3: 2}
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in taps:
                out.append(x)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        out.append(x)
        for i, conv in enumerate(self.extras):
            x = F.relu(conv(x))
            if i % 2 == 1:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> DSFDOutput:
        """Both shots' head outputs and anchors for a batch of RGB images (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(x.shape)}")
        first = self.sources(self.normalize(x))
        for i, norm in enumerate(self.l2norm1):
            first[i] = norm(first[i])
        second: list[torch.Tensor] = [torch.empty(0)] * len(first)
        above: torch.Tensor | None = None  # the fused (pre-FEM) level above, as in DSFD
        for i in reversed(range(len(first))):
            fused = self.lateral[i](first[i])
            if above is not None:
                up = F.relu(self.topdown[i](above))
                fused = fused * F.interpolate(up, size=fused.shape[-2:], mode="bilinear")
            above = F.relu(fused)
            second[i] = self.fem[i](above)
        for i, norm in enumerate(self.l2norm2):
            second[i] = norm(second[i])
        sizes = [tuple(f.shape[-2:]) for f in first]
        kw = {"device": x.device, "dtype": x.dtype}
        return DSFDOutput(
            _flatten(self.loc1, first, 4),
            _flatten(self.conf1, first, 2),
            _flatten(self.loc2, second, 4),
            _flatten(self.conf2, second, 2),
            make_anchors(sizes, scale=ANCHOR_SCALE / 2, **kw),
            make_anchors(sizes, scale=ANCHOR_SCALE, **kw),
        )


def _flatten(heads: nn.ModuleList, features: list[torch.Tensor], k: int) -> torch.Tensor:
    """Run per-level heads and flatten to (B, sum H*W, k) in level-major, row-major order."""
    out = [
        head(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, k) for head, f in zip(heads, features)
    ]
    return torch.cat(out, dim=1)


# -- training loss ------------------------------------------------------------------------------


def match_targets(
    anchors: torch.Tensor,
    boxes: torch.Tensor,
    num_boxes: torch.Tensor,
    threshold: float = 0.35,
    variances: tuple[float, float] = VARIANCES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image matching of padded ground truth to anchors: (loc targets (B, A, 4), positive
    (B, A) bool). `boxes` (B, M, 4) corner form padded with -1, `num_boxes` (B,)."""
    loc_t = anchors.new_zeros((boxes.shape[0], anchors.shape[0], 4))
    positive = torch.zeros(loc_t.shape[:2], dtype=torch.bool, device=anchors.device)
    for b in range(boxes.shape[0]):
        gt = boxes[b, : int(num_boxes[b])].to(anchors)
        index, pos = match_anchors(gt, anchors, threshold)
        positive[b] = pos
        if pos.any():
            loc_t[b, pos] = encode(gt[index[pos]], anchors[pos], variances)
    return loc_t, positive


def hard_negatives(
    background_loss: torch.Tensor, positive: torch.Tensor, ratio: float = 3.0
) -> torch.Tensor:
    """(B, A) mask of each image's `ratio * num_pos` highest-loss negatives (SSD's mining).

    `background_loss` is the cross-entropy of the background class. Positives never take a
    negative's slot, the count is capped at the number of negatives, and ties keep the lower
    anchor index (a stable sort), so the selection is deterministic.
    """
    loss = background_loss.detach().masked_fill(positive, float("-inf"))
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    num_neg = (ratio * positive.sum(dim=1, keepdim=True)).floor().long()
    num_neg = torch.minimum(num_neg, (~positive).sum(dim=1, keepdim=True))
    return rank < num_neg


def multibox_loss(
    loc: torch.Tensor,
    conf: torch.Tensor,
    anchors: torch.Tensor,
    boxes: torch.Tensor,
    num_boxes: torch.Tensor,
    *,
    threshold: float = 0.35,
    negpos_ratio: float = 3.0,
    variances: tuple[float, float] = VARIANCES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's multibox loss of one shot: (smooth L1 box loss, softmax classification loss).

    Both are sums over the selected anchors (positives for the box term; positives and mined
    negatives for the class term) divided by the batch's number of positives N (at least 1).
    Matching and mining are selections without gradient; the losses are differentiable in
    `loc` and `conf`, hence in every parameter that produced them.
    """
    with torch.no_grad():
        loc_t, positive = match_targets(anchors, boxes, num_boxes, threshold, variances)
    labels = positive.long()
    ce = F.cross_entropy(conf.reshape(-1, 2), labels.reshape(-1), reduction="none")
    ce = ce.view_as(labels)
    negative = hard_negatives(ce, positive, negpos_ratio)
    n = positive.sum().clamp_min(1).to(loc.dtype)
    box = F.smooth_l1_loss(loc, loc_t, reduction="none").sum(-1)
    loss_l = (box * positive).sum() / n
    loss_c = (ce * (positive | negative)).sum() / n
    return loss_l, loss_c


def dsfd_loss(
    out: DSFDOutput,
    boxes: torch.Tensor,
    num_boxes: torch.Tensor,
    *,
    threshold: float = 0.35,
    negpos_ratio: float = 3.0,
) -> torch.Tensor:
    """DSFD's progressive anchor loss: the multibox loss of the first shot (its half-size
    anchors) plus that of the second shot."""
    total = out.loc1.new_zeros(())
    for loc, conf, anchors in (
        (out.loc1, out.conf1, out.anchors1),
        (out.loc2, out.conf2, out.anchors2),
    ):
        loss_l, loss_c = multibox_loss(
            loc, conf, anchors, boxes, num_boxes, threshold=threshold, negpos_ratio=negpos_ratio
        )
        total = total + loss_l + loss_c
    return total


# -- inference ----------------------------------------------------------------------------------


def detect(
    out: DSFDOutput,
    *,
    image_size: tuple[int, int] | None = None,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.3,
    top_k: int = 750,
    pre_nms_top_k: int = 5000,
    variances: tuple[float, float] = VARIANCES,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Second-shot detections per image: [(boxes (n, 4) corner pixels, scores (n,)), ...].

    Face probability = softmax of the two logits; boxes decoded with the variances; candidates
    with score > `score_threshold`, at most `pre_nms_top_k` of the best, greedy NMS at
    `nms_threshold`, then at most `top_k` kept (DSFD's test settings). With `image_size`
    (H, W) boxes are clipped to the image.
    """
    scores = F.softmax(out.conf2, dim=-1)[..., 1]
    boxes = decode(out.loc2, out.anchors2, variances)
    if image_size is not None:
        h, w = image_size
        boxes = torch.stack(
            [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1,
        )  # fmt: skip
    results = []
    for b in range(boxes.shape[0]):
        keep = scores[b] > score_threshold
        s, bx = scores[b][keep], boxes[b][keep]
        if pre_nms_top_k > 0 and s.numel() > pre_nms_top_k:
            s, idx = s.topk(pre_nms_top_k)
            bx = bx[idx]
        kept = nms(bx, s, nms_threshold, top_k)
        results.append((bx[kept], s[kept]))
    return results


# -- pretrained weights -------------------------------------------------------------------------


def vgg16_weights_path(path: str | os.PathLike[str] | None = None) -> str:
    """The VGG16 file: `path`, $BGL_VGG16_WEIGHTS, torchvision's `vgg16-397923af.pth` or DSFD's
    `vgg16_reducedfc.pth` in the torch hub cache, else torchvision's file downloaded there (see
    `bgl.models.weights`; `BGL_OFFLINE=1` makes it an error instead)."""
    found = find_weights_file(
        VGG16_WEIGHT_FILES,
        path,
        env=VGG16_WEIGHTS_ENV,
        what="VGG16 weights",
        source="torchvision's vgg16 or DSFD's vgg16_reducedfc checkpoint",
        url=VGG16_WEIGHTS.url,
    )
    return str(found)


def load_vgg16_weights(model: DSFD, path: str | os.PathLike[str] | None = None) -> str:
    """Load VGG16 base weights into `model` from `vgg16_weights_path(path)`; returns the file.

    A torchvision file fills the trunk (`features.*`); DSFD's base file (trunk keys `0.*`..`28.*`,
    plus `31.*`/`33.*`, the reduced fc6/fc7 convs) fills fc6 and fc7 too. Needs `width_mult=1`.
    """
    file = vgg16_weights_path(path)
    state = load_state_dict_file(file, prefix="features.")
    trunk_keys = set(model.vgg.state_dict())
    trunk = {k: v for k, v in state.items() if k in trunk_keys}
    missing = sorted(trunk_keys - set(trunk))
    if missing:
        raise ValueError(f"{file}: not a VGG16 state dict (missing {', '.join(missing[:4])}...)")
    try:
        model.vgg.load_state_dict(trunk)
        for index, conv in (("31", model.fc6), ("33", model.fc7)):
            part = {k[len(index) + 1 :]: v for k, v in state.items() if k.startswith(index + ".")}
            if part:
                conv.load_state_dict(part)
    except RuntimeError as exc:
        raise ValueError(
            f"{file}: shapes do not fit DSFD(width_mult={model.width_mult}); pretrained VGG16 "
            f"weights need width_mult=1 ({exc})"
        ) from None
    return str(file)
