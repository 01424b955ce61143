"""LPIPS v0.1 with the AlexNet trunk (Zhang et al., CVPR 2018): the `lpips` package's own module.

    d(x, y) = sum_l mean_{h,w} w_l . (f̂_l(x) - f̂_l(y))^2

f_l are AlexNet's relu1..relu5 activations of the input mapped to [-1, 1] and standardised by
LPIPS's ScalingLayer; f̂_l is f_l unit-normalised over channels; w_l are the learned 1x1 weights.
The computation is `lpips.LPIPS(net="alex", version="0.1")`; bgl only decides where the weights
come from:

- the linear layers w_l ship inside the `lpips` wheel (`lpips/weights/v0.1/alex.pth`), which the
  package loads itself;
- the AlexNet trunk is torchvision's ImageNet checkpoint (`alexnet-owt-7be5be79.pth`), resolved
  by `bgl.models.weights` (an explicit path, `$BGL_ALEXNET_WEIGHTS`, the torch hub cache, or a
  hash-checked download into it) rather than by the package's own `pretrained` download, so a
  file the user names is used and `BGL_OFFLINE=1` is honoured. It is read with
  `weights_only=True`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bgl.metrics._validate import check_images
from bgl.models.weights import find_weights_file, load_state_dict_file

# The lpips package and torchvision are imported where they are used (seconds of imports that
# every user of the metric registry would otherwise pay). Module attributes, computed on use:
#: ALEXNET_WEIGHTS: torchvision's AlexNet ImageNet weights (downloaded when no file is found);
#: ALEXNET_FILES: its file name, then the pre-0.4 torchvision name of the same network.


def __getattr__(name: str) -> Any:
    if name == "ALEXNET_WEIGHTS":
        from torchvision.models import AlexNet_Weights

        return AlexNet_Weights.IMAGENET1K_V1
    if name == "ALEXNET_FILES":
        url = __getattr__("ALEXNET_WEIGHTS").url
        return (url.rsplit("/", 1)[-1], "alexnet-owt-4df8aa71.pth")
    raise AttributeError(name)


#: Environment variable naming the AlexNet checkpoint file.
ALEXNET_ENV = "BGL_ALEXNET_WEIGHTS"
#: Smallest input side for which AlexNet's three max-pools still have a window to pool.
MIN_SIZE = 31


def alexnet_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The AlexNet checkpoint: `path`, $BGL_ALEXNET_WEIGHTS, the torch hub cache, or a download."""
    url = __getattr__("ALEXNET_WEIGHTS").url
    return find_weights_file(
        __getattr__("ALEXNET_FILES"),
        path,
        env=ALEXNET_ENV,
        what="LPIPS AlexNet backbone (torchvision ImageNet weights)",
        source=f"torchvision's ImageNet AlexNet, {url}",
        url=url,
    )


def build_lpips(alexnet: str | os.PathLike[str] | None = None) -> nn.Module:
    """`lpips.LPIPS(net="alex", version="0.1")` with its trunk loaded from the AlexNet checkpoint
    (see `alexnet_weights_path`) and its linear layers from the wheel; eval mode, no gradients.
    """
    import lpips as lpips_package

    path = alexnet_weights_path(alexnet)
    trunk = load_state_dict_file(path, prefix="features.")
    with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_package.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    # the package splits torchvision's `alexnet().features` into slices that keep its indices:
    # `slice2.3.weight` is `features.3.weight`
    net = model.net
    try:
        net.load_state_dict({k: trunk[k.split(".", 1)[1]] for k in net.state_dict()})
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a torchvision AlexNet checkpoint ({exc})") from None
    return model.requires_grad_(False).eval()


_CACHE: dict[tuple[str, str], nn.Module] = {}


def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    alexnet_weights: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) distance of each image to its target, shape (B,); lower is better.

    Images are (B, 3, H, W) in [0, 1] (grey images are repeated to RGB), at least 31x31, computed
    in float32. The model is built once per weights file and device and kept for later calls.
    """
    check_images("lpips", pred, target, min_size=(MIN_SIZE, MIN_SIZE))
    path = alexnet_weights_path(alexnet_weights)
    key = (str(path.resolve()), str(pred.device))
    model = _CACHE.get(key)
    if model is None:
        model = build_lpips(path).to(pred.device)
        _CACHE[key] = model
    if pred.shape[1] == 1:  # grey: the same image on all three channels
        pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
    with torch.no_grad():
        distance = model(pred.float(), target.float(), normalize=True)
    return distance.reshape(-1)
