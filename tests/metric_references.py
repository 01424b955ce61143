"""Reference implementations the metric tests compare against, made importable here.

- the lpips package's LPIPS module built around torchvision's own AlexNet (loaded through
  torchvision's API), independently of how bgl maps a checkpoint onto the package's slices.
- BasicSR's NIQE and MATLAB-imresize ports are loaded file by file: its package __init__ imports
  its whole model zoo (torchvision, CUDA ops).
- scikit-video's niqe() is run with `scipy.misc.imresize` restored (through Pillow, as the
  removed function did) and `np.int`; PyPI brisque's score path with its numpy-2 float() bug
  side-stepped.
Each loader skips the calling test when the package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch


def import_piq() -> Any:
    if importlib.util.find_spec("piq") is None:
        pytest.fail("piq is missing: ./install.sh test installs it (--no-deps piq==0.8.0)")
    return importlib.import_module("piq")


def lpips_package_model(features: torch.nn.Sequential) -> Any:
    """The lpips package's own LPIPS(net='alex') module around a torchvision AlexNet whose
    `features` are the given trunk (the package takes `torchvision.models.alexnet().features`)."""
    if importlib.util.find_spec("lpips") is None:
        pytest.fail("lpips is missing: ./install.sh installs it (lpips==0.1.4)")
    import lpips
    import torchvision

    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.features = features
    with mock.patch.object(lpips.pretrained_networks.tv, "alexnet", lambda *a, **k: alexnet):
        return lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()


def load_basicsr() -> tuple[Any, Any, Path]:
    """(basicsr.metrics.niqe, basicsr.utils.matlab_functions, package root), loaded per file."""
    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("basicsr is missing: ./install.sh installs it (--no-deps basicsr==1.4.2)")
    root = Path(next(iter(spec.submodule_search_locations)))
    names = (
        "basicsr",
        "basicsr.metrics",
        "basicsr.utils",
        "basicsr.metrics.metric_util",
        "basicsr.utils.registry",
        "basicsr.utils.matlab_functions",
        "basicsr.metrics.niqe",
    )
    saved = {k: sys.modules.get(k) for k in names}

    def load(name: str, path: Path) -> Any:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    try:
        for name, sub in (
            ("basicsr", root),
            ("basicsr.metrics", root / "metrics"),
            ("basicsr.utils", root / "utils"),
        ):
            package = types.ModuleType(name)
            package.__path__ = [str(sub)]
            sys.modules[name] = package
        util = types.ModuleType("basicsr.metrics.metric_util")
        util.reorder_image = util.to_y_channel = None
        sys.modules["basicsr.metrics.metric_util"] = util
        load("basicsr.utils.registry", root / "utils" / "registry.py")
        matlab = load("basicsr.utils.matlab_functions", root / "utils" / "matlab_functions.py")
        with warnings.catch_warnings():  # its scipy.ndimage.filters import is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            niqe = load("basicsr.metrics.niqe", root / "metrics" / "niqe.py")
        return niqe, matlab, root
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def skvideo_niqe(monkeypatch: pytest.MonkeyPatch, grey: np.ndarray) -> float:
    """scikit-video's niqe() on a grey [0, 255] image, with scipy.misc.imresize restored."""
    pytest.importorskip("skvideo")
    import scipy.misc
    from PIL import Image

    def imresize(arr: np.ndarray, size: float, interp: str = "bicubic", mode: str = "F"):
        assert interp == "bicubic" and mode == "F"
        im = Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
        new = tuple((np.array(im.size) * size).astype(int))
        return np.asarray(im.resize(new, resample=Image.BICUBIC))

    monkeypatch.setattr(scipy.misc, "imresize", imresize, raising=False)
    monkeypatch.setattr(np, "int", int, raising=False)
    from skvideo.measure import niqe

    return float(niqe(grey)[0])


def brisque_package_score(rgb_uint8: np.ndarray) -> float:
    """PyPI brisque 0.2.0's BRISQUE.score, with its float(array) conversion fixed for NumPy 2."""
    for name in ("cv2", "libsvm", "brisque", "skimage"):
        pytest.importorskip(name)
    import cv2
    import skimage.color
    from brisque import BRISQUE

    model = BRISQUE(url=False)
    grey = skimage.color.rgb2gray(rgb_uint8)
    full = model.calculate_brisque_features(grey, kernel_size=7, sigma=7 / 6)
    half = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    down = model.calculate_brisque_features(half, kernel_size=7, sigma=7 / 6)
    features = [float(np.ravel(v)[0]) for v in np.concatenate((full, down))]
    return float(model.calculate_image_quality_score(features))


def natural_image(name: str, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A crop of one of scikit-image's bundled photographs, (H, W, 3) uint8."""
    data = pytest.importorskip("skimage.data")
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    r, c = offset
    crop = image[r : r + size[0], c : c + size[1]]
    assert crop.shape[:2] == size, f"{name} is smaller than {size} at {offset}"
    return np.ascontiguousarray(crop)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (1, C, H, W) float64 in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float64) / 255.0
