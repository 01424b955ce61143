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
