"""Pixel-domain VIF (VIF-P; Sheikh & Bovik 2006, `vifp_mscale.m`) through torchmetrics.

torchmetrics implements the four-scale pixel-domain estimator with the reference's visual-noise
variance sigma_n^2 = 2, a constant tuned for 8-bit data, but does not rescale its inputs, and it
averages over colour channels. Here images in [0, 1] are mapped to [0, 255] first and colour
images are scored on their BT.601 luma (0.299 R + 0.587 G + 0.114 B), the grey image the
reference code is run on (`rgb2gray`, and piq's `vif_p`). Computed in float64.
"""

from __future__ import annotations

import torch

from bgl.metrics._validate import check_images

#: Four scales with 17/9/5/3-tap valid filters and 2x subsampling need at least 41 pixels.
MIN_SIZE = 41
SIGMA_N_SQ = 2.0
LUMA = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB batch, shape (B, 1, H, W); grey batches are returned unchanged."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def vif(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """VIF-P of each image against its target, shape (B,); 1 for identical images, higher better.

    Images are (B, 1|3, H, W) in [0, 1], at least 41x41. Can exceed 1 for contrast-enhanced
    images (VIF rewards gain), and is NaN for a perfectly flat target (no information to keep).
    """
    check_images("vif", pred, target, min_size=(MIN_SIZE, MIN_SIZE))
    p = luma(pred.to(torch.float64)) * 255.0
    t = luma(target.to(torch.float64)) * 255.0
    from torchmetrics.functional.image import visual_information_fidelity  # seconds: on use

    return visual_information_fidelity(p, t, sigma_n_sq=SIGMA_N_SQ, reduction="none")
