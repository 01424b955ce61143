"""Classification backbones in plain torch, with torchvision's layer layout and state-dict keys.

bgl never imports torchvision (its builds pin their own torch). The modules here reproduce
torchvision's `nn.Sequential` layouts index for index, so a torchvision checkpoint loads into them
unchanged: `alexnet_features()` takes the `features.*` entries of `alexnet-owt-7be5be79.pth`.
"""

from __future__ import annotations

from torch import nn

#: torchvision `alexnet().features` indices of the five ReLUs whose outputs LPIPS compares
#: (relu1..relu5, Zhang et al. 2018).
ALEXNET_RELU_INDICES: tuple[int, ...] = (1, 4, 7, 9, 11)
#: Channels of those five activations.
ALEXNET_RELU_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk (torchvision `alexnet().features`, "one weird trick" variant).

    Keys are `0.weight`, `0.bias`, `3.weight`, ... exactly as torchvision's, i.e. the
    `features.<i>.*` entries of a full torchvision AlexNet checkpoint without the prefix. ReLUs are
    not in-place so that intermediate activations can be kept.
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
        nn.ReLU(),  # 1
        nn.MaxPool2d(kernel_size=3, stride=2),  # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
        nn.ReLU(),  # 4
        nn.MaxPool2d(kernel_size=3, stride=2),  # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
        nn.ReLU(),  # 7
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
        nn.ReLU(),  # 9
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
        nn.ReLU(),  # 11
        nn.MaxPool2d(kernel_size=3, stride=2),  # 12
    )


#: torchvision's VGG16 configuration "D": channels per 3x3 conv, "M" a 2x2 stride-2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
#: torchvision `vgg16().features` indices of the ReLUs after conv3_3, conv4_3 and conv5_3.
VGG16_RELU3_3, VGG16_RELU4_3, VGG16_RELU5_3 = 15, 22, 29


def vgg16_features(width_mult: float = 1.0) -> nn.Sequential:
    """VGG16's convolutional trunk (torchvision `vgg16().features`, 31 modules, indices 0..30).

    Keys are `0.weight`, `0.bias`, `2.weight`, ... `28.bias` exactly as torchvision's, so the
    `features.*` entries of `vgg16-397923af.pth` (or the first 29 indices of SSD/DSFD's
    `vgg16_reducedfc.pth`) load unchanged at `width_mult=1`. `width_mult` scales every conv's
    channels (at least 1), for small test networks. ReLUs are not in-place so intermediate
    activations (conv3_3, conv4_3, conv5_3 for detection) can be kept.
    """
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    layers: list[nn.Module] = []
    in_channels = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_channels = max(1, round(int(v) * width_mult))
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = out_channels
    return nn.Sequential(*layers)
