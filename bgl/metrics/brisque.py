"""BRISQUE (Mittal, Moorthy & Bovik, IEEE TIP 2012): no-reference quality, lower is better.

36 natural-scene-statistics features (18 per scale, at full and half resolution: a GGD fit of
the MSCN coefficients and asymmetric GGD fits of their products with the 4 neighbours) are scaled
to [-1, 1] and fed to an epsilon-SVR with an RBF kernel. The SVR and the scaling ranges are LIVE's
original `allmodel` / `allrange`, as shipped in the PyPI package `brisque` 0.2.0
(`brisque/models/svm.txt`, `normalize.pickle`); they are read from the installed package without
importing it (it needs OpenCV and libsvm), and the SVR is evaluated here in float64.

Two feature extractors:

- `features="live"` (default): LIVE's reference MATLAB code (`brisquescore.m`,
  `brisque_feature.m`), the one the SVR was trained with: MATLAB rgb2gray of the 8-bit image,
  circularly shifted neighbour products, GGD table fit of the MSCN values, MATLAB
  imresize(0.5) (antialiased bicubic).
- `features="pypi"`: the PyPI package's own `BRISQUE.score`, for agreement with Python results
  computed with that package: scikit-image rgb2gray (BT.709 weights), cropped neighbour products,
  asymmetric fit of the MSCN values solved by root finding, OpenCV INTER_CUBIC downscaling.
  The two can differ by a few points on large photographs and by tens of points on small
  crops, mostly through the half-scale features (OpenCV's resize does not antialias) and the
  wrapped neighbour pairs at the borders.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bgl.metrics import _nss
from bgl.metrics._packages import package_file
from bgl.metrics._resize import imresize
from bgl.metrics._validate import check_images

BRISQUE_INSTALL = "pip install --no-deps brisque==0.2.0"
#: MATLAB rgb2gray weights (first row of inv of the NTSC YIQ matrix).
MATLAB_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
#: skimage.color.rgb2gray weights (BT.709).
SKIMAGE_GRAY = (0.2125, 0.7154, 0.0721)
#: The half-resolution image must still hold one 7x7 window.
MIN_SIZE = 14

Features = Literal["live", "pypi"]


class _NoGlobals(pickle.Unpickler):
    """normalize.pickle holds a dict of float lists: refuse anything that names a global."""

    def find_class(self, module: str, name: str) -> None:  # type: ignore[override]
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in BRISQUE ranges")


class BrisqueModel:
    """LIVE's BRISQUE epsilon-SVR (RBF) and feature ranges, evaluated in NumPy."""

    def __init__(self, svm_path: Path, ranges_path: Path) -> None:
        self.gamma, self.rho, coef, vectors = _read_libsvm_model(svm_path)
        self.coef = np.asarray(coef)
        self.vectors = np.asarray(vectors)
        with open(ranges_path, "rb") as fh:
            ranges = _NoGlobals(fh).load()
        self.low = np.asarray(ranges["min_"], dtype=np.float64)
        self.high = np.asarray(ranges["max_"], dtype=np.float64)
        if self.low.shape != (36,) or self.vectors.shape[1] != 36:
            raise ValueError(f"{svm_path}: expected a 36-feature BRISQUE model")

    def scale(self, features: np.ndarray) -> np.ndarray:
        """svm-scale -l -1 -u 1 with the stored ranges."""
        return -1.0 + 2.0 * (features - self.low) / (self.high - self.low)

    def predict(self, features: np.ndarray) -> float:
        """SVR output sum_i coef_i exp(-gamma ||sv_i - x||^2) - rho for raw features."""
        x = self.scale(np.asarray(features, dtype=np.float64))
        d2 = ((self.vectors - x[None, :]) ** 2).sum(axis=1)
        return float(self.coef @ np.exp(-self.gamma * d2) - self.rho)


def _read_libsvm_model(path: Path) -> tuple[float, float, list[float], list[list[float]]]:
    """Parse a libsvm text model (epsilon-SVR, RBF): gamma, rho, coefficients, dense SVs."""
    header: dict[str, str] = {}
    coef: list[float] = []
    rows: list[dict[int, float]] = []
    lines = path.read_text().splitlines()
    it = iter(lines)
    for line in it:
        if line.strip() == "SV":
            break
        key, _, value = line.partition(" ")
        header[key] = value.strip()
    for line in it:
        parts = line.split()
        if not parts:
            continue
        coef.append(float(parts[0]))
        rows.append({int(k): float(v) for k, v in (p.split(":") for p in parts[1:])})
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"{path}: expected an epsilon_svr model with an rbf kernel")
    dim = max(max(r, default=0) for r in rows)
    dense = [[r.get(i, 0.0) for i in range(1, dim + 1)] for r in rows]
    if len(coef) != int(header["total_sv"]):
        raise ValueError(f"{path}: {len(coef)} support vectors, header says {header['total_sv']}")
    return float(header["gamma"]), float(header["rho"]), coef, dense


@functools.lru_cache(maxsize=1)
def load_model() -> BrisqueModel:
    """LIVE's SVR and ranges from the installed `brisque` package (cached)."""
    svm = package_file("brisque", "models/svm.txt", distribution="brisque", install=BRISQUE_INSTALL)
    ranges = package_file(
        "brisque", "models/normalize.pickle", distribution="brisque", install=BRISQUE_INSTALL
    )
    return BrisqueModel(svm, ranges)


def _grey(image: np.ndarray, weights: tuple[float, ...], round_result: bool) -> np.ndarray:
    """(C, H, W) in [0, 255] -> (H, W) grey; MATLAB rgb2gray on uint8 rounds the result."""
    if image.shape[0] == 1:
        return image[0]
    grey = np.tensordot(np.asarray(weights), image, axes=1)
    return np.floor(grey + 0.5) if round_result else grey


def _products_circular(m: np.ndarray) -> list[np.ndarray]:
    """MATLAB circshift by [0 1], [1 0], [1 1], [-1 1], each times the unshifted map."""
    shifts = ((0, 1), (1, 0), (1, 1), (-1, 1))
    return [m * np.roll(m, s, axis=(0, 1)) for s in shifts]


def _products_cropped(m: np.ndarray) -> list[np.ndarray]:
    """PyPI brisque: horizontal, vertical, main- and anti-diagonal neighbours, no wrap."""
    return [
        m[:, :-1] * m[:, 1:],
        m[:-1, :] * m[1:, :],
        m[:-1, :-1] * m[1:, 1:],
        m[1:, :-1] * m[:-1, 1:],
    ]


def _scale_features(grey: np.ndarray, features: Features) -> list[float]:
    m = _nss.mscn(grey)
    out: list[float] = []
    if features == "live":
        alpha, sigma_sq = _nss.ggd_fit(m)
        out += [alpha, sigma_sq]
        products = _products_circular(m)
        solver, right = "matlab-grid", "positive"
    else:
        alpha, left, right_std = _nss.aggd_fit(m, right="non-negative", solver="root")
        out += [alpha, (left**2 + right_std**2) / 2]
        products = _products_cropped(m)
        solver, right = "root", "non-negative"
    for p in products:
        alpha, left, right_std = _nss.aggd_fit(p, right=right, solver=solver)  # type: ignore[arg-type]
        to_scale, mean_factor = _nss.aggd_shape_terms(alpha)
        mean = (right_std - left) * mean_factor * to_scale
        out += [alpha, mean, left**2, right_std**2]
    return out


def brisque_features(image: np.ndarray, features: Features = "live") -> np.ndarray:
    """The 36 BRISQUE features of a grey image in [0, 255] (2-D float array)."""
    if features not in ("live", "pypi"):
        raise ValueError(f"features must be 'live' or 'pypi', got {features!r}")
    grey = np.asarray(image, dtype=np.float64)
    method = "matlab" if features == "live" else "opencv"
    half = imresize(grey, method=method, scale=0.5)
    return np.asarray(_scale_features(grey, features) + _scale_features(half, features))


def brisque(pred: torch.Tensor, features: Features = "live", quantize: bool = True) -> torch.Tensor:
    """BRISQUE score of each image, shape (B,); lower is better (about 0-100 on natural images).

    Images are (B, 1|3, H, W) in [0, 1], at least 14x14. `quantize` rounds them to 8 bits first,
    as the reference code sees a saved PNG. A perfectly flat image has no MSCN statistics and
    scores NaN.
    """
    check_images("brisque", pred, min_size=(MIN_SIZE, MIN_SIZE))
    if features not in ("live", "pypi"):
        raise ValueError(f"features must be 'live' or 'pypi', got {features!r}")
    model = load_model()
    batch = pred.detach().to("cpu", torch.float64).numpy() * 255.0
    if quantize:
        batch = np.floor(batch + 0.5)
    weights = MATLAB_GRAY if features == "live" else SKIMAGE_GRAY
    scores = []
    for image in batch:
        grey = _grey(image, weights, round_result=quantize and features == "live")
        f = brisque_features(grey, features)
        scores.append(model.predict(f) if np.isfinite(f).all() else float("nan"))
    return torch.tensor(scores, dtype=torch.float64)
