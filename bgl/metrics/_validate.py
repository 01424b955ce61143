"""Input checks shared by the quality metrics: clear errors instead of silently wrong numbers."""

from __future__ import annotations

import torch


def check_images(
    name: str,
    pred: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    min_size: tuple[int, int] = (1, 1),
    channels: tuple[int, ...] = (1, 3),
    value_range: bool = True,
) -> None:
    """Raise ValueError unless pred (and target) are (B, C, H, W) images the metric can score.

    Every metric here is defined on images in [0, 1] (they rescale to the 8-bit range their
    constants were tuned for), so values outside it are an error rather than clipped: a caller
    passing [0, 255] data would otherwise get numbers that look plausible and are wrong.
    """
    tensors = {"pred": pred} if target is None else {"pred": pred, "target": target}
    for label, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{name}: expected a 4-D (B, C, H, W) tensor for {label}, got {tuple(t.shape)}"
            )
    if target is not None and pred.shape != target.shape:
        raise ValueError(
            f"{name}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.shape[1] not in channels:
        want = " or ".join(str(c) for c in channels)
        raise ValueError(f"{name}: expected {want} channels, got {pred.shape[1]}")
    h, w = pred.shape[-2:]
    if h < min_size[0] or w < min_size[1]:
        raise ValueError(
            f"{name}: images must be at least {min_size[0]}x{min_size[1]} (H x W), got {h}x{w}"
        )
    if value_range:
        for label, t in tensors.items():
            if t.numel() == 0:
                continue
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: {label} contains NaN or inf")
            lo, hi = float(t.min()), float(t.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"{name}: {label} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                    "(scale 8-bit data by 1/255 and clamp network outputs)"
                )
