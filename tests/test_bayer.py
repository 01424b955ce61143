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


def test_bilinear_demosaic_matches_opencv_in_the_interior():
    """OpenCV's bilinear Bayer conversion is the independent reference (its BayerRGGB names the
    same RGGB tile); borders differ by design (bgl mirrors, OpenCV replicates)."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    from bgl.raw.bayer import bilinear_demosaic

    packed = torch.rand(1, 4, 12, 14, generator=torch.Generator().manual_seed(0))
    ours = bilinear_demosaic(packed.double())[0].permute(1, 2, 0).numpy()
    mosaic = (unpack(packed)[0, 0].numpy() * 65535).round().astype(np.uint16)
    theirs = cv2.cvtColor(mosaic, cv2.COLOR_BayerRGGB2RGB).astype(np.float64) / 65535
    assert np.abs(ours[2:-2, 2:-2] - theirs[2:-2, 2:-2]).max() < 1e-4


def test_bilinear_demosaic_keeps_samples_and_is_exact_on_flat_and_linear_images():
    from bgl.raw.bayer import bilinear_demosaic

    # samples are kept at their own sites
    packed = torch.rand(2, 4, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rgb = bilinear_demosaic(packed)
    assert rgb.shape == (2, 3, 12, 16)
    assert torch.equal(mosaic_rgb(rgb, "RGGB"), packed)
    # a flat colour comes back exactly, borders included (mirroring keeps the CFA parity)
    colour = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    flat = colour[None, :, None, None].expand(1, 3, 10, 12)
    assert torch.allclose(bilinear_demosaic(mosaic_rgb(flat)), flat, atol=1e-12)
    # a horizontal ramp is reproduced exactly away from the borders (bilinear is exact on it)
    ramp = torch.linspace(0, 1, 16, dtype=torch.float64)[None, None, None].expand(1, 3, 12, 16)
    out = bilinear_demosaic(mosaic_rgb(ramp.contiguous()))
    assert torch.allclose(out[..., 1:-1, 1:-1], ramp[..., 1:-1, 1:-1], atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B,4,h,w\)"):
        bilinear_demosaic(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("pattern", ALL)
def test_unify_to_rggb_equals_packing_the_cropped_mosaic(pattern):
    """Against the definition: crop the mosaic to start on its red site, pack it as RGGB."""
    from bgl.raw.bayer import unify_to_rggb

    mosaic = torch.arange(8 * 10, dtype=torch.float32).reshape(1, 8, 10)
    unified, (r0, c0) = unify_to_rggb(pack(mosaic, pattern)[0], pattern)
    assert (r0, c0) == channel_offsets(pattern)[0]
    crop = mosaic[:, r0 : r0 + 8 - 2 * r0, c0 : c0 + 10 - 2 * c0]
    assert torch.equal(unified, pack(crop, "RGGB")[0])
    assert unified.shape == (4, 4 - r0, 5 - c0)
    with pytest.raises(ValueError, match="too small"):
        unify_to_rggb(torch.zeros(4, 1, 1), "BGGR")
