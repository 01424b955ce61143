"""Bayer packing: exact values against hand-built mosaics, for all four CFA layouts."""

from __future__ import annotations

import pytest
import torch

from bgl.raw.bayer import (
    PATTERNS,
    cfa_index_grid,
    channel_offsets,
    mosaic_rgb,
    pack,
    packed_to_rgb,
    unpack,
)

ALL = ["RGGB", "GRBG", "BGGR", "GBRG"]

# Quarter-resolution planes of arange(16).view(4, 4), read at each (row, col) offset of the tile.
_PLANE = {
    (0, 0): [[0, 2], [8, 10]],
    (0, 1): [[1, 3], [9, 11]],
    (1, 0): [[4, 6], [12, 14]],
    (1, 1): [[5, 7], [13, 15]],
}

# Written out by hand: channel order R, G (on R's row), B, G2 (on B's row).
EXPECTED_4X4 = {
    "RGGB": [_PLANE[0, 0], _PLANE[0, 1], _PLANE[1, 1], _PLANE[1, 0]],
    "GRBG": [_PLANE[0, 1], _PLANE[0, 0], _PLANE[1, 0], _PLANE[1, 1]],
    "BGGR": [_PLANE[1, 1], _PLANE[1, 0], _PLANE[0, 0], _PLANE[0, 1]],
    "GBRG": [_PLANE[1, 0], _PLANE[1, 1], _PLANE[0, 1], _PLANE[0, 0]],
}


def _letter(pattern: str, row: int, col: int) -> str:
    """The CFA colour letter at a pixel, read straight from the pattern name."""
    return pattern[2 * (row % 2) + (col % 2)]


def test_patterns_listed() -> None:
    assert sorted(PATTERNS) == sorted(ALL)


@pytest.mark.parametrize("pattern", ALL)
def test_pack_hand_built_4x4(pattern: str) -> None:
    mosaic = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    expected = torch.tensor([EXPECTED_4X4[pattern]], dtype=torch.float32)
    assert torch.equal(pack(mosaic, pattern), expected)
    assert torch.equal(pack(mosaic[:, 0], pattern), expected)  # (B,H,W) form


@pytest.mark.parametrize("pattern", ALL)
def test_offsets_follow_the_pattern_name(pattern: str) -> None:
    (rr, rc), (gr, gc), (br, bc), (g2r, g2c) = channel_offsets(pattern)
    assert _letter(pattern, rr, rc) == "R"
    assert _letter(pattern, br, bc) == "B"
    assert _letter(pattern, gr, gc) == "G" and gr == rr
    assert _letter(pattern, g2r, g2c) == "G" and g2r == br
    assert len({(rr, rc), (gr, gc), (br, bc), (g2r, g2c)}) == 4


def test_index_grid_matches_rawpy_raw_pattern() -> None:
    # rawpy: color_desc b"RGBG", RGGB -> [[0,1],[3,2]], GRBG -> [[1,0],[2,3]].
    assert cfa_index_grid("RGGB") == [[0, 1], [3, 2]]
    assert cfa_index_grid("GRBG") == [[1, 0], [2, 3]]
    assert cfa_index_grid("BGGR") == [[2, 3], [1, 0]]
    assert cfa_index_grid("GBRG") == [[3, 2], [0, 1]]


@pytest.mark.parametrize("pattern", ALL)
def test_round_trip(pattern: str) -> None:
    g = torch.Generator().manual_seed(0)
    mosaic = torch.rand((3, 1, 6, 10), generator=g, dtype=torch.float64)
    packed = pack(mosaic, pattern)
    assert packed.shape == (3, 4, 3, 5)
    assert torch.equal(unpack(packed, pattern), mosaic)
    again = torch.rand((2, 4, 4, 7), generator=g)
    assert torch.equal(pack(unpack(again, pattern), pattern), again)


@pytest.mark.parametrize("pattern", ALL)
def test_mosaic_rgb_reads_cfa_sites(pattern: str) -> None:
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand((2, 3, 4, 6), generator=g)
    packed = mosaic_rgb(rgb, pattern)
    assert packed.shape == (2, 4, 2, 3)
    plane_of = {"R": 0, "G": 1, "B": 2}
    for b in range(2):
        for i in range(4):
            for j in range(6):
                letter = _letter(pattern, i, j)
                if letter == "G":
                    # G is the green on R's row; G2 the green on B's row.
                    on_r_row = "R" in pattern[2 * (i % 2) : 2 * (i % 2) + 2]
                    channel = 1 if on_r_row else 3
                else:
                    channel = {"R": 0, "B": 2}[letter]
                assert packed[b, channel, i // 2, j // 2] == rgb[b, plane_of[letter], i, j]


def test_packed_to_rgb_nearest_and_green_mean() -> None:
    packed = torch.tensor([0.1, 0.2, 0.3, 0.6]).view(1, 4, 1, 1)
    rgb = packed_to_rgb(packed)
    assert rgb.shape == (1, 3, 2, 2)
    assert torch.allclose(rgb[0, 0], torch.full((2, 2), 0.1))
    assert torch.allclose(rgb[0, 1], torch.full((2, 2), 0.4))
    assert torch.allclose(rgb[0, 2], torch.full((2, 2), 0.3))
    bigger = torch.arange(8.0).view(1, 4, 1, 2)
    assert torch.equal(packed_to_rgb(bigger)[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]))


@pytest.mark.parametrize("shape", [(1, 1, 5, 4), (1, 1, 4, 7), (2, 3, 3)])
def test_odd_sizes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="even"):
        pack(torch.zeros(shape))


def test_odd_rgb_raises_and_bad_pattern_raises() -> None:
    with pytest.raises(ValueError, match="even"):
        mosaic_rgb(torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="pattern"):
        pack(torch.zeros(1, 1, 4, 4), "RGBG")
    with pytest.raises(ValueError, match="pattern"):
        channel_offsets("XTRANS")
