"""The positive control's data: vectors z and targets y = z + s, with exact split means.

Why exact means: every solver's fixed point on the control task (`bgl.tasks.control`) is a
closed form in the split means of z and y; drawing the noise and then removing its sample mean
makes those means the configured `mean` and `mean + shift` in every split, so the closed forms
need nothing but the task's options. Different seeds give different samples with the same means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

DTYPE = torch.float64


def per_channel(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    """A scalar or one value per channel, as a (channels,) float64 tensor."""
    values = [float(value)] * channels if isinstance(value, int | float) else list(value)
    if len(values) != channels:
        raise ValueError(f"task.options.{name}: {len(values)} values for {channels} channels")
    return torch.tensor(values, dtype=DTYPE)


class ControlVectors(Dataset):
    """`n` items {"raw": z (channels,), "rgb": y (channels,)}, float64: z = mean + noise·ξ,
    y = z + shift + noise·ζ, ξ and ζ standard normal with their sample means removed."""

    def __init__(
        self,
        n: int,
        size: int | None = None,
        seed: int = 0,
        camera_seed: int | None = None,
        *,
        channels: int,
        mean: float | Sequence[float],
        shift: float | Sequence[float],
        noise: float,
    ) -> None:
        del size, camera_seed  # image settings: nothing to render
        if n < 2:
            raise ValueError("a control split needs at least two items (its noise is centred)")
        g = torch.Generator().manual_seed(seed)
        xi, zeta = (torch.randn(n, channels, generator=g, dtype=DTYPE) for _ in range(2))
        xi, zeta = xi - xi.mean(0), zeta - zeta.mean(0)
        self.z = per_channel(mean, channels, "mean") + noise * xi
        self.y = self.z + per_channel(shift, channels, "shift") + noise * zeta

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"raw": self.z[index], "rgb": self.y[index]}
