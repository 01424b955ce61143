"""Geometric augmentation shared by the real-data loaders: aligned crops, flips, resizes, boxes.

Why one place: the packed RAW, its RGB reference, a label map and face boxes must move together.
A packed pixel (y, x) covers RGB pixels (2y..2y+1, 2x..2x+1), so RGB crops sit at twice the
packed coordinates; boxes are shifted, clipped and scaled with the image they belong to.

Randomness comes from a ``torch.Generator`` argument; ``None`` uses torch's global RNG, which the
training loop seeds and checkpoints, so a resumed run draws the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Window",
    "apply_flips",
    "boxes_in_window",
    "center_window",
    "flip_boxes",
    "letterbox_geometry",
    "random_flags",
    "random_window",
    "resize_image",
    "resize_labels",
    "square_window",
]


@dataclass(frozen=True)
class Window:
    """A crop window (top, left, height, width) in source pixels."""

    top: int
    left: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def scaled(self, factor: int) -> Window:
        return Window(
            self.top * factor, self.left * factor, self.height * factor, self.width * factor
        )


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high] (inclusive)."""
    return int(torch.randint(0, high + 1, (1,), generator=generator).item()) if high > 0 else 0


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((1,), generator=generator).item())


def random_window(
    height: int, width: int, size: int, generator: torch.Generator | None = None
) -> Window:
    """A uniformly placed size x size window inside (height, width); errors if it does not fit."""
    if size > height or size > width:
        raise ValueError(f"crop {size} does not fit an image of {height}x{width}")
    return Window(_randint(height - size, generator), _randint(width - size, generator), size, size)


def center_window(height: int, width: int, size: int) -> Window:
    """The centred size x size window."""
    if size > height or size > width:
        raise ValueError(f"crop {size} does not fit an image of {height}x{width}")
    return Window((height - size) // 2, (width - size) // 2, size, size)


def square_window(
    height: int,
    width: int,
    fraction: tuple[float, float],
    generator: torch.Generator | None = None,
    multiple: int = 2,
) -> Window:
    """A random square window whose side is a random fraction of the short side (then resized).

    Sides and offsets are multiples of ``multiple`` (2 keeps the Bayer phase of a mosaic made
    from the crop independent of where it was cut).
    """
    short = min(height, width)
    side = int(round(_uniform(fraction[0], fraction[1], generator) * short))
    side = max(multiple, min(short, side) // multiple * multiple)
    top = _randint((height - side) // multiple, generator) * multiple
    left = _randint((width - side) // multiple, generator) * multiple
    return Window(top, left, side, side)


def random_flags(generator: torch.Generator | None = None, transpose: bool = True) -> tuple:
    """(hflip, vflip, transpose) each with probability 1/2 (SID's augmentation)."""
    draws = torch.rand((3,), generator=generator) < 0.5
    flags = tuple(bool(v) for v in draws)
    return flags if transpose else (flags[0], flags[1], False)


def apply_flips(x: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """Flip/transpose the last two dims of a (..., H, W) tensor; returns a contiguous tensor."""
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if transpose:
        x = x.transpose(-1, -2)
    return x.contiguous()


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, H, W) float image -> (C, height, width), bilinear with antialiasing when shrinking."""
    if image.shape[-2:] == (height, width):
        return image
    shrink = height < image.shape[-2] or width < image.shape[-1]
    out = F.interpolate(
        image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out[0].clamp(0.0, 1.0)


def resize_labels(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) integer labels -> (height, width) by nearest neighbour (ids are never blended)."""
    if labels.shape[-2:] == (height, width):
        return labels
    out = F.interpolate(labels[None, None].float(), size=(height, width), mode="nearest-exact")
    return out[0, 0].to(labels.dtype)


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int]:
    """(scale, new_height, new_width) fitting (height, width) into size x size, sides even."""
    scale = size / max(height, width)
    new_h = max(2, int(round(height * scale)) // 2 * 2)
    new_w = max(2, int(round(width * scale)) // 2 * 2)
    return scale, min(new_h, size), min(new_w, size)


def boxes_in_window(boxes: np.ndarray, window: Window) -> np.ndarray:
    """Boxes (N, 4) x1 y1 x2 y2 seen through a crop window: shifted and clipped to it.

    A box is kept when its centre lies inside the window (the SSD/DSFD convention); a face cut
    by the border keeps its visible part. Boxes outside the crop are not in the image any more,
    so leaving them out is the augmentation, not a loss of data.
    """
    if boxes.size == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (
        (cx >= window.left)
        & (cx < window.left + window.width)
        & (cy >= window.top)
        & (cy < window.top + window.height)
    )
    out = boxes[keep].astype(np.float32).copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]] - window.left, 0, window.width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]] - window.top, 0, window.height)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes left-right inside an image of the given width."""
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out
