"""Full-reference image quality: per-image PSNR and SSIM.

Both return one value per image (shape (B,)) so that callers average over images, the convention of
low-light papers, rather than computing one PSNR over a concatenated batch (which weights images by
their error and is not the mean of per-image PSNRs).
"""

from __future__ import annotations

import torch

# torchmetrics is imported where it is used: its package imports torchvision, torch._dynamo and
# scipy.signal (seconds), which a study's driver and preflight have no use for

#: SSIM Gaussian window (Wang et al. 2004): sigma 1.5, truncated at 3.5 sigma -> 11x11.
SSIM_SIGMA = 1.5
SSIM_KERNEL = 11


def _check(pred: torch.Tensor, target: torch.Tensor, min_size: int = 1) -> None:
    if pred.ndim != 4 or target.ndim != 4:
        raise ValueError(
            f"expected 4-D (B, C, H, W) tensors, got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {pred.shape[1]}")
    if min(pred.shape[-2:]) < min_size:
        raise ValueError(
            f"images must be at least {min_size}x{min_size}, got {tuple(pred.shape[-2:])}"
        )


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image, shape (B,); inf for an image identical to its target."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check(pred, target)
    return peak_signal_noise_ratio(
        pred.float() if not pred.is_floating_point() else pred,
        target.float() if not target.is_floating_point() else target,
        data_range=data_range,
        reduction="none",
        dim=(1, 2, 3),
    )


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image, shape (B,), averaged over channels and the valid (uncropped) region.

    Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, population covariance. The 5-pixel border,
    where the window would reach outside the image, is excluded from the mean as in Wang et al. and
    scikit-image (torchmetrics averages its reflect-padded full map instead), so the values match
    `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`. Images must be at least 11x11.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(pred, target, min_size=SSIM_KERNEL)
    pred = pred if pred.is_floating_point() else pred.float()
    target = target if target.is_floating_point() else target.float()
    _, full = structural_similarity_index_measure(
        pred,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL,
        reduction="none",
        data_range=data_range,
        return_full_image=True,
    )
    pad = (SSIM_KERNEL - 1) // 2
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
