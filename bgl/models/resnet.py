"""ResNet-50/101 (He et al. 2016): torchvision's models, as backbones for dense prediction.

`ResNet` *is* torchvision's `ResNet` with `Bottleneck` blocks (same modules, same state-dict keys,
so torchvision's ImageNet checkpoints load unchanged and `weights_only=True`, see
`bgl.models.weights`). What it adds, because a segmentation head needs it:

- `forward_features`: the outputs of layer1..layer4 (DeepLabV3+ takes layer1 and layer4);
- `num_classes=None`: no avgpool/fc head;
- `width`: the channels of the stem and of layer1's bottleneck (64 in every published ResNet);
  every other width scales with it, so tests train a DeepLab in seconds on a CPU. torchvision's
  builders fix 64, so a narrower network re-makes the stem and stages with torchvision's own
  `_make_layer`. Only width 64 matches published weights.

`replace_stride_with_dilation` is torchvision's: per stage 2-4 the stage keeps stride 1 and
dilates its 3x3 convolutions instead, which is how DeepLab reaches output stride 16 or 8.
Each block's last BatchNorm starts at zero (torchvision's `zero_init_residual=True`), so blocks
start as identities when trained from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import Bottleneck

from bgl.models.weights import find_weights_file, load_state_dict_file

#: Bottleneck blocks per stage (layer1..layer4).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
#: torchvision's ImageNet weights, its default (newest recipe) first; either loads, the layout is
#: the same. The first is the one downloaded when none is in the hub cache.
RESNET_WEIGHTS: dict[int, tuple[models.WeightsEnum, ...]] = {
    50: (models.ResNet50_Weights.IMAGENET1K_V2, models.ResNet50_Weights.IMAGENET1K_V1),
    101: (models.ResNet101_Weights.IMAGENET1K_V2, models.ResNet101_Weights.IMAGENET1K_V1),
}
#: Their file names in the torch hub cache (`resnet50-11ad3fa6.pth`, ...).
RESNET_WEIGHT_FILES: dict[int, tuple[str, ...]] = {
    depth: tuple(w.url.rsplit("/", 1)[-1] for w in weights)
    for depth, weights in RESNET_WEIGHTS.items()
}
#: ImageNet statistics the published weights were trained with (RGB in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Stem width of every published ResNet.
FULL_WIDTH = 64


class ResNet(models.ResNet):
    """torchvision's Bottleneck ResNet with `forward_features`, an optional head and a `width`."""

    def __init__(
        self,
        layers: Sequence[int],
        *,
        width: int = FULL_WIDTH,
        num_classes: int | None = 1000,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
    ) -> None:
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation must have 3 entries (layer2, layer3, layer4), "
                f"got {tuple(replace_stride_with_dilation)}"
            )
        dilate = [bool(d) for d in replace_stride_with_dilation]
        full = width == FULL_WIDTH
        super().__init__(
            Bottleneck,
            list(layers) if full else [1, 1, 1, 1],  # a narrow net re-makes its stages below
            num_classes=num_classes or 1000,
            zero_init_residual=True,
            replace_stride_with_dilation=dilate,
        )
        if not full:
            self._narrow(layers, width, dilate)
        self.width = width
        #: channels of layer1..layer4 outputs
        self.channels: tuple[int, ...] = tuple(
            w * Bottleneck.expansion for w in (width, 2 * width, 4 * width, 8 * width)
        )
        self.num_classes = num_classes
        if num_classes is None:
            del self.avgpool, self.fc

    def _narrow(self, layers: Sequence[int], width: int, dilate: list[bool]) -> None:
        """Re-make stem, stages and head at `width` with torchvision's `_make_layer` and init."""
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        for i, blocks in enumerate(layers):
            stage = self._make_layer(
                Bottleneck, width * 2**i, blocks, stride=1 if i == 0 else 2,
                dilate=False if i == 0 else dilate[i - 1],
            )  # fmt: skip
            setattr(self, f"layer{i + 1}", stage)
        self.fc = nn.Linear(8 * width * Bottleneck.expansion, self.fc.out_features)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # after the loop above, which visits a block before its bn3
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
        return super().forward(x)


def resnet(depth: int = 50, **kwargs: object) -> ResNet:
    """ResNet-50 or -101; keyword options as `ResNet`."""
    if depth not in RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    return ResNet(RESNET_LAYERS[depth], **kwargs)  # type: ignore[arg-type]


def resnet50(**kwargs: object) -> ResNet:
    """ResNet-50 (torchvision's `resnet50()` with the defaults)."""
    return resnet(50, **kwargs)


def resnet101(**kwargs: object) -> ResNet:
    """ResNet-101 (torchvision's `resnet101()` with the defaults)."""
    return resnet(101, **kwargs)


def resnet_weights_path(depth: int, path: str | os.PathLike[str] | None = None) -> str:
    """The ImageNet checkpoint file for ResNet-`depth`: `path`, `$BGL_RESNET<depth>_WEIGHTS`,
    torchvision's file in the torch hub cache, or that file downloaded (`bgl.models.weights`)."""
    if depth not in RESNET_WEIGHT_FILES:
        raise ValueError(f"depth must be one of {sorted(RESNET_WEIGHT_FILES)}, got {depth}")
    found = find_weights_file(
        RESNET_WEIGHT_FILES[depth],
        path,
        env=f"BGL_RESNET{depth}_WEIGHTS",
        what=f"ResNet-{depth} weights",
        source=f"torchvision ResNet{depth}_Weights",
        url=RESNET_WEIGHTS[depth][0].url,
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
