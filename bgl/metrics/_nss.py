"""Natural-scene statistics shared by BRISQUE and NIQE (Mittal, Moorthy & Bovik).

Both start from mean-subtracted contrast-normalised (MSCN) coefficients of the grey image in
[0, 255],

    MSCN = (I - mu) / (sigma + 1),  mu, sigma: local mean and deviation under a 7x7
                                    Gaussian window (sigma 7/6),

and describe MSCN values and products of neighbouring MSCN values by (asymmetric) generalised
Gaussian fits. The fits are moment matching: the shape alpha solves
rho(alpha) = Gamma(2/alpha)^2 / (Gamma(1/alpha) Gamma(3/alpha)) = a moment ratio of the data,
either by the reference codes' table look-up over alpha = 0.2, 0.201, ..., 10 or by root finding
(PyPI `brisque`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# scipy is imported inside the functions: importing bgl.metrics (the training loop does) stays
# cheap, and only BRISQUE / NIQE pay for it.

#: MATLAB's 0.2:0.001:10 (LIVE BRISQUE, 9801 values).
ALPHA_GRID_MATLAB = 0.2 + 0.001 * np.arange(9801)
#: scikit-video's np.arange(0.2, 10, 0.001) (NIQE).
ALPHA_GRID_SKVIDEO = np.arange(0.2, 10, 0.001)


def rho(alpha: np.ndarray | float) -> np.ndarray:
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)): E|x|^2 / E[x^2] of a GGD with shape a."""
    from scipy import special

    a = np.asarray(alpha, dtype=np.float64)
    return np.exp(2 * special.gammaln(2 / a) - special.gammaln(1 / a) - special.gammaln(3 / a))


_RHO_CACHE: dict[int, np.ndarray] = {}


def _rho_grid(grid: np.ndarray) -> np.ndarray:
    key = id(grid)
    if key not in _RHO_CACHE:
        _RHO_CACHE[key] = rho(grid)
    return _RHO_CACHE[key]


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """fspecial('gaussian', size, sigma): normalised to sum 1."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def mscn(
    image: np.ndarray,
    c: float = 1.0,
    window: np.ndarray | None = None,
    padding: Literal["zero", "replicate"] = "zero",
) -> np.ndarray:
    """MSCN coefficients of a 2-D float image.

    `padding="zero"` is MATLAB's filter2(..., 'same') (BRISQUE, scikit-video), `"replicate"`
    imfilter(..., 'replicate') (the NIQE release).
    """
    from scipy import ndimage

    w = gaussian_window() if window is None else window
    mode = "constant" if padding == "zero" else "nearest"
    image = np.asarray(image, dtype=np.float64)
    mu = ndimage.correlate(image, w, mode=mode, cval=0.0)
    sigma = np.sqrt(np.abs(ndimage.correlate(image * image, w, mode=mode, cval=0.0) - mu**2))
    return (image - mu) / (sigma + c)


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """LIVE `estimateggdparam`: (alpha by table look-up, mean of squares)."""
    x = np.ravel(x)
    sigma_sq = float(np.mean(x * x))
    e = float(np.mean(np.abs(x)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float64(sigma_sq) / np.float64(e) ** 2  # NaN, not an exception, if flat
        pos = int(np.argmin(np.abs(ratio - 1.0 / _rho_grid(ALPHA_GRID_MATLAB))))
    return float(ALPHA_GRID_MATLAB[pos]), sigma_sq


def aggd_fit(
    x: np.ndarray,
    *,
    right: Literal["positive", "non-negative"],
    solver: Literal["matlab-grid", "skvideo-grid", "root"],
) -> tuple[float, float, float]:
    """Asymmetric GGD moment fit: (alpha, left_std, right_std).

    left_std, right_std are root mean squares of the negative and the positive (MATLAB) or
    non-negative (scikit-video, PyPI brisque) values. alpha matches
    rho(alpha) = r_hat (g^3 + 1)(g + 1) / (g^2 + 1)^2 with g = left_std / right_std and
    r_hat = mean|x|^2 / mean(x^2). Degenerate inputs follow the grid codes: an undefined ratio
    selects the first grid value (0.2), as MATLAB's min and NumPy's argmin do.
    """
    x = np.ravel(np.asarray(x, dtype=np.float64))
    neg = x[x < 0]
    pos = x[x > 0] if right == "positive" else x[x >= 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        left_std = float(np.sqrt(np.mean(neg * neg))) if neg.size else float("nan")
        right_std = float(np.sqrt(np.mean(pos * pos))) if pos.size else float("nan")
        if solver == "skvideo-grid":  # scikit-video: empty side -> 0, zero right side -> inf
            left_std = 0.0 if not neg.size else left_std
            right_std = 0.0 if not pos.size else right_std
        g = np.float64(left_std) / np.float64(right_std) if right_std != 0 else np.float64(np.inf)
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x * x)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
        if solver == "root":
            alpha = _solve_alpha(float(r_norm))
        else:
            grid = ALPHA_GRID_MATLAB if solver == "matlab-grid" else ALPHA_GRID_SKVIDEO
            alpha = float(grid[int(np.argmin((_rho_grid(grid) - r_norm) ** 2))])
    return alpha, left_std, right_std


def _solve_alpha(target: float) -> float:
    """The alpha with rho(alpha) = target (rho increases from 0 to 3/4); NaN if out of range."""
    from scipy import optimize

    if not np.isfinite(target) or not 0.0 < target < 0.75:
        return float("nan")
    lo, hi = 0.02, 1.0
    while rho(hi) < target and hi < 1e4:
        hi *= 2.0
    if rho(hi) < target:
        return float("nan")
    return float(optimize.brentq(lambda a: float(rho(a)) - target, lo, hi, xtol=1e-14, rtol=1e-14))


def aggd_shape_terms(alpha: float) -> tuple[float, float]:
    """(sqrt(Gamma(1/a) / Gamma(3/a)), Gamma(2/a) / Gamma(1/a)): std -> scale, and mean factor."""
    from scipy import special

    g1, g2, g3 = (special.gamma(k / alpha) for k in (1.0, 2.0, 3.0))
    return float(np.sqrt(g1) / np.sqrt(g3)), float(g2 / g1)
