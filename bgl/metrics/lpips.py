"""LPIPS v0.1 with the AlexNet trunk (Zhang et al., CVPR 2018), without torchvision or downloads.

    d(x, y) = sum_l mean_{h,w} w_l . (f̂_l(x) - f̂_l(y))^2

f_l are AlexNet's relu1..relu5 activations of the input mapped to [-1, 1] and standardised by
LPIPS's ScalingLayer (shift [-.030, -.088, -.188], scale [.458, .448, .450]); f̂_l is f_l divided
by its channel-wise L2 norm (+1e-10) at every pixel; w_l are the learned non-negative 1x1 weights.

Where the two weight sets come from:
- the linear layers w_l ship inside the `lpips` wheel (`lpips/weights/v0.1/alex.pth`); the file is
  located without importing `lpips`, which would import torchvision;
- the AlexNet trunk is torchvision's ImageNet checkpoint (`alexnet-owt-7be5be79.pth`), read from
  an explicit path, `$BGL_ALEXNET_WEIGHTS`, or the torch hub cache where torchvision keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from bgl.metrics._packages import package_file
from bgl.metrics._validate import check_images
from bgl.models.backbones import ALEXNET_RELU_CHANNELS, ALEXNET_RELU_INDICES, alexnet_features
from bgl.models.weights import find_weights_file, load_state_dict_file

#: torchvision's AlexNet ImageNet checkpoint (current name first, the pre-0.4 name second).
ALEXNET_FILES = ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
#: Environment variable naming the AlexNet checkpoint file.
ALEXNET_ENV = "BGL_ALEXNET_WEIGHTS"
LPIPS_INSTALL = "pip install --no-deps lpips==0.1.4"
#: LPIPS v0.1 ScalingLayer constants (inputs in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: Smallest input side for which AlexNet's three max-pools still have a window to pool.
MIN_SIZE = 31


def lpips_linear_weights_path() -> Path:
    """`lpips/weights/v0.1/alex.pth` inside the installed lpips wheel."""
    return package_file(
        "lpips", "weights/v0.1/alex.pth", distribution="lpips", install=LPIPS_INSTALL
    )


def alexnet_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The AlexNet checkpoint: `path`, else $BGL_ALEXNET_WEIGHTS, else the torch hub cache."""
    return find_weights_file(
        ALEXNET_FILES,
        path,
        env=ALEXNET_ENV,
        what="LPIPS AlexNet backbone (torchvision ImageNet weights)",
        source=f"torchvision's ImageNet AlexNet, {ALEXNET_URL}",
    )


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet): `forward(pred, target)` -> distance per image, shape (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.lins = nn.ModuleList(
            nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in ALEXNET_RELU_CHANNELS
        )
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(
        cls,
        alexnet: str | os.PathLike[str] | None = None,
        linear: str | os.PathLike[str] | None = None,
    ) -> LPIPS:
        """Build from the AlexNet checkpoint (see `alexnet_weights_path`) and the lpips weights."""
        model = cls()
        trunk = load_state_dict_file(alexnet_weights_path(alexnet), prefix="features.")
        try:
            model.features.load_state_dict(trunk)
        except RuntimeError as exc:
            raise ValueError(f"not a torchvision AlexNet checkpoint: {exc}") from exc
        lin_path = Path(linear) if linear is not None else lpips_linear_weights_path()
        lin = load_state_dict_file(lin_path)
        try:
            for i, layer in enumerate(model.lins):
                layer.weight.copy_(lin[f"lin{i}.model.1.weight"])
        except (KeyError, RuntimeError) as exc:
            raise ValueError(f"{lin_path} is not an LPIPS v0.1 AlexNet file: {exc}") from exc
        return model

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1..relu5 of the LPIPS-scaled input x in [0, 1]."""
        h = (2.0 * x - 1.0 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in ALEXNET_RELU_INDICES:
                out.append(h)
            if i == ALEXNET_RELU_INDICES[-1]:
                break
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_images("lpips", pred, target, min_size=(MIN_SIZE, MIN_SIZE))
        if pred.shape[1] == 1:  # grey: the same image on all three channels
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        dtype = self.shift.dtype
        pred, target = pred.to(dtype), target.to(dtype)
        total = pred.new_zeros(pred.shape[0])
        for lin, a, b in zip(self.lins, self.activations(pred), self.activations(target)):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total


_CACHE: dict[tuple[str, str], LPIPS] = {}


def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    alexnet_weights: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) distance of each image to its target, shape (B,); lower is better.

    Images are (B, 3, H, W) in [0, 1] (grey images are repeated to RGB), at least 31x31. The model
    is built once per weights file and device and kept for later calls.
    """
    check_images("lpips", pred, target, min_size=(MIN_SIZE, MIN_SIZE))
    path = alexnet_weights_path(alexnet_weights)
    key = (str(path.resolve()), str(pred.device))
    model = _CACHE.get(key)
    if model is None:
        model = LPIPS.from_files(path).to(pred.device)
        _CACHE[key] = model
    with torch.no_grad():
        return model(pred, target)
