"""Bayer packing in one canonical channel order.

Every packed tensor in bgl has the channel order of Learning-to-See-in-the-Dark (SID):
``R, G, B, G2``, where ``G`` is the green on the same row as ``R`` and ``G2`` the green on the
same row as ``B``. Keeping one order for all four CFA layouts means the networks never need to
know which camera a RAW file came from; only this module does.
"""

from __future__ import annotations

import torch

__all__ = [
    "CHANNELS",
    "CFA_OFFSETS",
    "PATTERNS",
    "bilinear_demosaic",
    "channel_offsets",
    "cfa_index_grid",
    "mosaic_rgb",
    "pack",
    "packed_to_rgb",
    "unify_to_rggb",
    "unpack",
]

#: Names of the packed channels, in order.
CHANNELS: tuple[str, str, str, str] = ("R", "G", "B", "G2")

Offset = tuple[int, int]

#: The one layout table: (row, col) of R, G, B, G2 inside each 2x2 tile, per CFA layout.
#: G shares a row with R, G2 shares a row with B (rawpy's ``color_desc`` b"RGBG" indexes
#: 0 R, 1 G, 2 B, 3 G2 in the same sense, so ``cfa_index_grid`` matches ``raw_pattern``).
CFA_OFFSETS: dict[str, tuple[Offset, Offset, Offset, Offset]] = {
    "RGGB": ((0, 0), (0, 1), (1, 1), (1, 0)),
    "GRBG": ((0, 1), (0, 0), (1, 0), (1, 1)),
    "BGGR": ((1, 1), (1, 0), (0, 0), (0, 1)),
    "GBRG": ((1, 0), (1, 1), (0, 1), (0, 0)),
}

#: The supported layout names.
PATTERNS: tuple[str, ...] = tuple(CFA_OFFSETS)


def channel_offsets(pattern: str = "RGGB") -> tuple[Offset, Offset, Offset, Offset]:
    """(row, col) of R, G, B, G2 within the 2x2 tile of ``pattern``; the single lookup point."""
    try:
        return CFA_OFFSETS[pattern.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}; got {pattern!r}") from None


def cfa_index_grid(pattern: str = "RGGB") -> list[list[int]]:
    """The 2x2 grid of channel indices (0 R, 1 G, 2 B, 3 G2), in rawpy's ``raw_pattern`` form."""
    grid = [[-1, -1], [-1, -1]]
    for index, (row, col) in enumerate(channel_offsets(pattern)):
        grid[row][col] = index
    return grid


def _check_even(height: int, width: int, what: str) -> None:
    if height % 2 or width % 2:
        raise ValueError(
            f"{what} height and width must be even to pack 2x2 Bayer tiles; got {height}x{width}"
        )


def pack(mosaic: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Pack a Bayer mosaic (B,1,H,W) or (B,H,W) into (B,4,H/2,W/2) ordered R, G, B, G2."""
    if mosaic.dim() == 4:
        if mosaic.shape[1] != 1:
            raise ValueError(f"mosaic must have one channel; got shape {tuple(mosaic.shape)}")
        mosaic = mosaic[:, 0]
    elif mosaic.dim() != 3:
        raise ValueError(f"mosaic must be (B,1,H,W) or (B,H,W); got shape {tuple(mosaic.shape)}")
    _check_even(mosaic.shape[-2], mosaic.shape[-1], "mosaic")
    return torch.stack([mosaic[:, r::2, c::2] for r, c in channel_offsets(pattern)], dim=1)


def unpack(packed: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Inverse of :func:`pack`: (B,4,h,w) -> mosaic (B,1,2h,2w)."""
    if packed.dim() != 4 or packed.shape[1] != 4:
        raise ValueError(f"packed must be (B,4,h,w); got shape {tuple(packed.shape)}")
    batch, _, h, w = packed.shape
    mosaic = packed.new_empty((batch, 1, 2 * h, 2 * w))
    for channel, (r, c) in enumerate(channel_offsets(pattern)):
        mosaic[:, 0, r::2, c::2] = packed[:, channel]
    return mosaic


def mosaic_rgb(rgb: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Sample linear RGB (B,3,H,W) at its CFA sites, returning the packed (B,4,H/2,W/2) RAW."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be (B,3,H,W); got shape {tuple(rgb.shape)}")
    _check_even(rgb.shape[-2], rgb.shape[-1], "rgb")
    source = (0, 1, 2, 1)  # R, G, B, G2 read from the red, green, blue, green planes
    offsets = channel_offsets(pattern)
    return torch.stack([rgb[:, s, r::2, c::2] for s, (r, c) in zip(source, offsets)], dim=1)


def packed_to_rgb(packed: torch.Tensor) -> torch.Tensor:
    """Naive RGB (B,3,2h,2w) from packed RAW: R, mean(G, G2), B upsampled by nearest neighbour.

    This is the "just amplify the input" baseline; it ignores white balance, colour correction
    and the half-pixel offsets between CFA sites.
    """
    if packed.dim() != 4 or packed.shape[1] != 4:
        raise ValueError(f"packed must be (B,4,h,w); got shape {tuple(packed.shape)}")
    rgb = torch.stack([packed[:, 0], 0.5 * (packed[:, 1] + packed[:, 3]), packed[:, 2]], dim=1)
    return rgb.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


#: Bilinear interpolation kernels: red and blue sites fill a quarter of the grid, green half.
_RB_KERNEL = ((0.25, 0.5, 0.25), (0.5, 1.0, 0.5), (0.25, 0.5, 0.25))
_G_KERNEL = ((0.0, 0.25, 0.0), (0.25, 1.0, 0.25), (0.0, 0.25, 0.0))


def bilinear_demosaic(packed: torch.Tensor) -> torch.Tensor:
    """Packed RAW (B,4,h,w) -> linear RGB (B,3,2h,2w) by bilinear interpolation, RGGB layout.

    Why RGGB whatever the camera: bgl packs every file into R, G, B, G2 and its networks see
    that order as an RGGB tile (the half-pixel offsets of other layouts are dropped, as in SID),
    so a development of the packed tensor must read it the same way. Each colour plane keeps its
    samples and fills the others with the mean of the nearest same-colour neighbours (the
    classic kernels, as OpenCV's ``COLOR_Bayer*2RGB``); edges are mirrored, which keeps the CFA
    parity, so no border darkens.
    """
    if packed.dim() != 4 or packed.shape[1] != 4:
        raise ValueError(f"packed must be (B,4,h,w); got shape {tuple(packed.shape)}")
    batch, _, h, w = packed.shape
    planes = packed.new_zeros((batch, 3, 2 * h, 2 * w))
    for channel, (r, c) in enumerate(channel_offsets("RGGB")):
        planes[:, (0, 1, 2, 1)[channel], r::2, c::2] = packed[:, channel]
    kernels = torch.tensor(
        (_RB_KERNEL, _G_KERNEL, _RB_KERNEL), dtype=packed.dtype, device=packed.device
    )[:, None]
    mode = "reflect" if min(h, w) > 1 else "replicate"
    padded = torch.nn.functional.pad(planes, (1, 1, 1, 1), mode=mode)
    return torch.nn.functional.conv2d(padded, kernels, groups=3)


def unify_to_rggb(packed: torch.Tensor, pattern: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Packed RAW of any layout (…, 4, h, w) -> the packing of its RGGB-aligned crop, and the
    crop's origin (r0, c0) in the mosaic: 0 or 1 each.

    Why: bgl packs every layout into R, G, B, G2 at its own sites, so in a GRBG file red sits one
    pixel right of where an RGGB-trained network assumes it and the rendering comes out shifted
    by a pixel against the scene, its colours sampled at the wrong sites. Cropping the mosaic to
    start on a red site makes the layout RGGB exactly ("Bayer pattern unification", Liu et al.,
    CVPRW 2019); the crop loses one row and/or one column of 2x2 cells, which a caller pads back
    (the rendered pixel (y, x) is mosaic pixel (y + r0, x + c0)).
    """
    if packed.dim() < 3 or packed.shape[-3] != 4:
        raise ValueError(f"packed must be (..., 4, h, w); got shape {tuple(packed.shape)}")
    r0, c0 = channel_offsets(pattern)[0]
    h, w = packed.shape[-2] - r0, packed.shape[-1] - c0
    if h < 1 or w < 1:
        raise ValueError(f"a {pattern} frame of {tuple(packed.shape[-2:])} cells is too small")
    planes = []
    for channel, (r, c) in enumerate(channel_offsets("RGGB")):
        dy, dx = (r0 + r) // 2, (c0 + c) // 2  # the original cell holding this site
        planes.append(packed[..., channel, dy : dy + h, dx : dx + w])
    return torch.stack(planes, dim=-3), (r0, c0)
