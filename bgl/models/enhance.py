"""The enhancement task network G(x; θ): a light Retinex illumination estimator.

Follows the self-calibrated illumination (SCI) estimator of Ma et al. (CVPR 2022): Retinex models
an image as x = y ⊙ L, so once the illumination L is known the enhanced image (reflectance) is
y = x ⊙ L^-1. A tiny 3-stage conv net is enough to estimate a smooth L, which keeps G cheap inside
the bilevel loop where it is differentiated twice.
"""

from __future__ import annotations

import torch
from torch import nn


class IlluminationNet(nn.Module):
    """G(x; θ): RGB image (B, 3, H, W) -> illumination L (B, 3, H, W) in [min_illumination, 1].

    Stages: 3x3 conv 3->w + ReLU; 3x3 conv w->w + BatchNorm + ReLU with a residual connection
    from the first stage; 3x3 conv w->3 + sigmoid, giving s in (0, 1). As in SCI's released code,
    `input_residual=True` (the default) returns L = clamp(x + s, min_illumination, 1), so L >= x
    and y = x / L <= 1 by construction: the net only learns how much brighter than x the
    illumination is, and a bright input passes through (L = 1, y = x). With
    `input_residual=False`, L = clamp(s, min_illumination, 1); then SCI's fidelity term pulls
    L onto x itself and the trained y = x / L drifts towards 1 (over-exposed) whatever x is. The
    lower clamp keeps x / L finite.

    `headroom_residual=True` (with `input_residual`) scales s by the headroom above x instead:
    L = x + (1 - x) * s, still in [x, 1] but never clamped at 1. SCI's form has a dead zone: once
    x + s >= 1 on a pixel, L = 1 there and no gradient reaches θ, so a G whose s drifts up (or
    an F that brightens x) freezes into the identity for good (the quickstart run's seed 3).
    """

    def __init__(
        self,
        width: int = 16,
        min_illumination: float = 1e-3,
        input_residual: bool = True,
        headroom_residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if not 0.0 < min_illumination <= 1.0:
            raise ValueError(f"min_illumination must lie in (0, 1], got {min_illumination}")
        self.width = width
        self.min_illumination = float(min_illumination)
        self.input_residual = bool(input_residual)
        self.headroom_residual = bool(headroom_residual)
        if self.headroom_residual and not self.input_residual:
            raise ValueError("headroom_residual scales the input residual: it needs input_residual")
        self.in_conv = nn.Sequential(nn.Conv2d(3, width, kernel_size=3, padding=1), nn.ReLU())
        self.mid_conv = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.out_conv = nn.Sequential(nn.Conv2d(width, 3, kernel_size=3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Illumination L of x; x is clamped to [0, 1] first (F's output is unclamped)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = x.clamp(0.0, 1.0)
        fea = self.in_conv(x)
        fea = fea + self.mid_conv(fea)
        illumination = self.out_conv(fea)
        if self.headroom_residual:
            illumination = x + (1.0 - x) * illumination
        elif self.input_residual:
            illumination = illumination + x
        return illumination.clamp(self.min_illumination, 1.0)

    def enhance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, L) with y = clamp(x / L, 0, 1): the Retinex reflectance y = x ⊙ G(x)^-1."""
        illumination = self(x)
        y = (x.clamp(0.0, 1.0) / illumination).clamp(0.0, 1.0)
        return y, illumination
