"""bgl.metrics: image quality for the enhancement task (the paper's eight metrics).

Every metric maps a (B, C, H, W) batch in [0, 1] to one value per image, shape (B,). Each lives
in its own module, named after it (`bgl.metrics.lpips.lpips`, `bgl.metrics.fsim.fsim`, ...);
`METRICS` lists them all with their direction and what they compare against.
The `bgl eval` command is in `bgl.cli.eval`.

Names are resolved lazily (PEP 562) so that importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "psnr": "bgl.metrics.image",
    "ssim": "bgl.metrics.image",
    "METRICS": "bgl.metrics.registry",
    "PAPER_TABLE": "bgl.metrics.registry",
    "MetricSpec": "bgl.metrics.registry",
    "get_metric": "bgl.metrics.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bgl.metrics' has no attribute {name!r}")
