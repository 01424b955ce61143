"""ResNet-50/101 (He et al. 2016) in plain torch, with torchvision's module names and keys.

Why a copy of torchvision's layout: segmentation backbones start from ImageNet weights, and those
ship as torchvision checkpoints (`resnet50-0676ba61.pth`, ...). Naming every module as torchvision
does (`conv1`, `bn1`, `layer1.0.downsample.1.running_mean`, ..., `fc`) lets such a file load with
`load_state_dict` unchanged, read with `weights_only=True` (see `bgl.models.weights`).

Two options go beyond torchvision's builders:

- `replace_stride_with_dilation`: as torchvision's, per stage 2-4: the stage keeps stride 1 and
  dilates its 3x3 convolutions instead (the first block of the stage keeps the previous dilation),
  which is how DeepLab reaches output stride 16 or 8 with the same weights.
- `width`: the channels of the stem and of layer1's bottleneck (64 in every published ResNet);
  every other width scales with it. Tests use 4 or 8 so a DeepLab trains in seconds on a CPU.
  Only width 64 matches published weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from bgl.models.weights import find_weights_file, load_state_dict_file

#: Bottleneck blocks per stage (layer1..layer4).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
#: torchvision's ImageNet checkpoints, newest recipe first (either loads: the layout is the same).
RESNET_WEIGHT_FILES: dict[int, tuple[str, ...]] = {
    50: ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    101: ("resnet101-cd907fc2.pth", "resnet101-63fe2227.pth"),
}
#: ImageNet statistics the published weights were trained with (RGB in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided and/or dilated), 1x1 expand (x4), plus the identity or projection.

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5"), as in its checkpoints.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet with torchvision's names; `num_classes=None` drops avgpool and fc.

    `forward` classifies (needs the head); `forward_features` returns the maps of every stage,
    which is what a dense-prediction head needs (DeepLabV3+ takes layer1 and layer4).
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        width: int = 64,
        num_classes: int | None = 1000,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation must have 3 entries (layer2, layer3, layer4), "
                f"got {tuple(replace_stride_with_dilation)}"
            )
        self.width = width
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = (False, *replace_stride_with_dilation)
        self.layer1 = self._make_layer(width, layers[0], stride=1, dilate=dilate[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2, dilate=dilate[1])
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2, dilate=dilate[2])
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2, dilate=dilate[3])
        #: channels of layer1..layer4 outputs
        self.channels: tuple[int, ...] = tuple(
            w * Bottleneck.expansion for w in (width, 2 * width, 4 * width, 8 * width)
        )
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.channels[-1], num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        """One stage; with `dilate` the stride becomes dilation (torchvision's rule)."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        modules = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = out
        modules += [
            Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        """He init for convs; each block's last BN starts at zero so blocks start as identities."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32 before any dilation)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes is None:
            raise RuntimeError("this ResNet has no classifier head (num_classes=None)")
        x = self.forward_features(x)[-1]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int = 50, **kwargs: object) -> ResNet:
    """ResNet-50 or -101; keyword options as `ResNet`."""
    if depth not in RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    return ResNet(RESNET_LAYERS[depth], **kwargs)  # type: ignore[arg-type]


def resnet50(**kwargs: object) -> ResNet:
    """ResNet-50 (torchvision `resnet50()` layout with the defaults)."""
    return resnet(50, **kwargs)


def resnet101(**kwargs: object) -> ResNet:
    """ResNet-101 (torchvision `resnet101()` layout with the defaults)."""
    return resnet(101, **kwargs)


def resnet_weights_path(depth: int, path: str | os.PathLike[str] | None = None) -> str:
    """The ImageNet checkpoint file for ResNet-`depth`: `path`, `$BGL_RESNET<depth>_WEIGHTS`, or
    torchvision's file name in the torch hub cache."""
    if depth not in RESNET_WEIGHT_FILES:
        raise ValueError(f"depth must be one of {sorted(RESNET_WEIGHT_FILES)}, got {depth}")
    found = find_weights_file(
        RESNET_WEIGHT_FILES[depth],
        path,
        env=f"BGL_RESNET{depth}_WEIGHTS",
        what=f"ResNet-{depth} weights",
        source=f"torchvision ResNet{depth}_Weights",
    )
    return str(found)


def load_resnet_weights(model: ResNet, path: str | os.PathLike[str]) -> ResNet:
    """Load a torchvision-format ResNet state dict into `model` (strict, `weights_only=True`).

    A checkpoint's `fc.*` entries are dropped when the model has no head (a segmentation
    backbone); a checkpoint of a whole segmentation model (keys under `backbone.`) is accepted
    too. Every other key must match in name and shape, so a wrong depth or width is an error
    that names the first mismatch.
    """
    state = load_state_dict_file(path, prefix="backbone.")
    if model.num_classes is None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a matching ResNet state dict ({len(missing)} missing keys, first "
            f"{missing[:3]}; {len(unexpected)} unexpected, first {unexpected[:3]})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)} "
                f"(depth or width differ; published weights need width 64)"
            )
    model.load_state_dict(state)
    return model
