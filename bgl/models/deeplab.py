"""DeepLabV3+ (Chen et al., ECCV 2018) on torchvision's ResNet-50/101 backbone.

    image (B, 3, H, W) in [0, 1] -> ImageNet normalisation -> ResNet, output stride 16
      layer4 (H/16) -> ASPP: 1x1 | 3x3 rate 6 | 3x3 rate 12 | 3x3 rate 18 | image pooling
                       -> concat -> 1x1 projection (256 ch)
      layer1 (H/4)  -> 1x1 conv to 48 ch
      decoder: upsample ASPP x4, concat with the 48 low-level channels, two 3x3 convs (256 ch),
               1x1 classifier, upsample x4 to (H, W)

Every conv is followed by BatchNorm and ReLU. Output stride 8 (layer3 and layer4 dilated) doubles
the ASPP rates, as the paper does. The decoder uses two 3x3 convolutions, the variant the paper
found best (its Table 2) and that its TensorFlow release uses; some PyTorch ports use one.

The backbone is torchvision's ResNet (`bgl.models.resnet`) with its keys under `backbone.`
(`backbone.layer1.0.conv1.weight`), so ImageNet weights load by
`bgl.models.resnet.load_resnet_weights(model.backbone, path)`. The ASPP and decoder are bgl's own:
torchvision's `deeplabv3_resnet50` is DeepLabV3 without the V3+ decoder and low-level branch.

`width` scales every channel count for tests: the backbone width (64 in published ResNets), the
ASPP and decoder channels (4 * width: 256 at 64) and the low-level projection (3 * width / 4: 48
at 64). `dropout` (off by default) drops ASPP features in training mode only; see
`bgl.tasks.segment` for why the bilevel task leaves it off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bgl.models.resnet import IMAGENET_MEAN, IMAGENET_STD, resnet

#: ASPP atrous rates at output stride 16 (doubled at output stride 8).
ASPP_RATES: tuple[int, int, int] = (6, 12, 18)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU: DeepLab's unit everywhere outside the backbone."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Module):
    """Image-level features: global average pool, 1x1 conv-BN-ReLU, broadcast back to (h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm over a 1x1 map needs more than one image per batch in training mode
        y = self.conv(self.pool(x))
        return y.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, then 1x1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = ASPP_RATES,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels)]
        branches += [ConvBNReLU(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(len(branches) * out_channels, out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.dropout(self.project(y))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: (B, 3, H, W) RGB in [0, 1] -> (B, num_classes, H, W) logits.

    The input is normalised with ImageNet statistics inside the model (non-persistent buffers,
    so they are neither in the state dict nor treated as running statistics).
    """

    def __init__(
        self,
        num_classes: int = 19,
        *,
        depth: int = 50,
        width: int = 64,
        output_stride: int = 16,
        rates: Sequence[int] = ASPP_RATES,
        aspp_channels: int | None = None,
        low_level_channels: int | None = None,
        decoder_convs: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if num_classes < 1 or decoder_convs < 1:
            raise ValueError(
                f"need num_classes >= 1 and decoder_convs >= 1, got {num_classes}, {decoder_convs}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        aspp_channels = aspp_channels or 4 * width
        low_level_channels = low_level_channels or max(1, 3 * width // 4)
        dilate = (False, output_stride == 8, True)
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.rates = tuple(r * 16 // output_stride for r in rates)
        self.backbone = resnet(
            depth, width=width, num_classes=None, replace_stride_with_dilation=dilate
        )
        low_in, high_in = self.backbone.channels[0], self.backbone.channels[-1]
        self.aspp = ASPP(high_in, aspp_channels, self.rates, dropout)
        self.low_level = ConvBNReLU(low_in, low_level_channels)
        decoder: list[nn.Module] = [
            ConvBNReLU(aspp_channels + low_level_channels, aspp_channels, 3)
        ]
        decoder += [ConvBNReLU(aspp_channels, aspp_channels, 3) for _ in range(1, decoder_convs)]
        self.decoder = nn.Sequential(*decoder)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, kernel_size=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for m in (*self.aspp.modules(), *self.low_level.modules(), *self.decoder.modules()):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low, _, _, high = self.backbone.forward_features((x - self.mean) / self.std)
        y = self.aspp(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.low_level(low)], dim=1))
        y = self.classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def deeplabv3plus(num_classes: int = 19, depth: int = 50, **kwargs: object) -> DeepLabV3Plus:
    """DeepLabV3+ with a ResNet-`depth` backbone; options as `DeepLabV3Plus`."""
    return DeepLabV3Plus(num_classes, depth=depth, **kwargs)  # type: ignore[arg-type]
