"""RAW reading: real DNG files written here, decoded by rawpy/LibRaw, packed by bgl.

Expected values are computed by hand from the mosaic that was written (slicing with a layout
table written out below, not bayer.py's), so a wrong CFA lookup or black level shows up.
"""

from __future__ import annotations

import numpy as np
import pytest
import rawpy
import tifffile
import torch

from bgl.raw.dng import mosaic_from_linear, write_dng
from bgl.raw.read import (
    RawReadError,
    cfa_layout,
    normalize_packed,
    read_packed,
    read_raw,
    read_reference_rgb,
)

# (row, col) of R, G (on R's row), B, G2 (on B's row) -- written independently of bayer.py
HAND_SITES = {
    "RGGB": [(0, 0), (0, 1), (1, 1), (1, 0)],
    "GRBG": [(0, 1), (0, 0), (1, 0), (1, 1)],
    "BGGR": [(1, 1), (1, 0), (0, 0), (0, 1)],
    "GBRG": [(1, 0), (1, 1), (0, 1), (0, 0)],
}
# the colour letter at each raster site of the 2x2 tile
HAND_LETTERS = {"RGGB": "RGGB", "GRBG": "GRBG", "BGGR": "BGGR", "GBRG": "GBRG"}


def _mosaic(shape=(64, 96), seed=0, low=400, high=16383):
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint16)


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "BGGR", "GBRG"])
def test_round_trip_packs_each_layout_in_canonical_order(tmp_path, pattern):
    mosaic = _mosaic(seed=hash(pattern) % 1000)
    black = (500.0, 510.0, 520.0, 530.0)  # R, G, B, G2: distinct, so a wrong site shows
    path = write_dng(tmp_path / f"{pattern}.ARW", mosaic, pattern, black=black, white=15000)
    frame = read_raw(path)
    assert frame.pattern == pattern
    assert frame.white == 15000
    assert frame.black == black
    expected = np.stack([mosaic[r::2, c::2] for r, c in HAND_SITES[pattern]])
    np.testing.assert_array_equal(frame.packed, expected)
    # the written CFA really is the layout (letters at raster sites, read through rawpy)
    with rawpy.imread(str(path)) as raw:
        letters = "".join(raw.color_desc.decode()[i] for i in raw.raw_pattern.reshape(-1))
    assert letters == HAND_LETTERS[pattern]
    # normalisation by hand: per-channel black, white, ratio, clip
    ratio = 3.0
    want = np.clip(
        (expected.astype(np.float64) - np.array(black)[:, None, None])
        / (15000 - np.array(black)[:, None, None])
        * ratio,
        0,
        1,
    )
    np.testing.assert_allclose(read_packed(path, ratio), want, rtol=0, atol=1e-6)


def test_normalize_clips_below_black_and_above_white():
    packed = np.array([[[0, 512, 16383, 9000]]] * 4, dtype=np.uint16).reshape(4, 1, 4)
    out = normalize_packed(packed, [512] * 4, 16383, ratio=2.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 1.0, 1.0])
    out = normalize_packed(packed, [512] * 4, 16383, ratio=1.0)
    np.testing.assert_allclose(out[0, 0, 3], (9000 - 512) / (16383 - 512), rtol=1e-6)


def test_mosaic_from_linear_inverts_normalisation():
    linear = torch.rand(4, 8, 12, generator=torch.Generator().manual_seed(0))
    mosaic = mosaic_from_linear(linear, "GBRG", black=(500, 501, 502, 503), white=16000)
    packed = np.stack([mosaic[r::2, c::2] for r, c in HAND_SITES["GBRG"]])
    back = normalize_packed(packed, (500, 501, 502, 503), 16000)
    np.testing.assert_allclose(back, linear.numpy(), atol=1 / 15000)


def test_odd_visible_size_drops_the_last_row_and_column(tmp_path):
    mosaic = _mosaic((65, 97))
    frame = read_raw(write_dng(tmp_path / "odd.dng", mosaic))
    assert frame.packed.shape == (4, 32, 48)
    np.testing.assert_array_equal(frame.packed[0], mosaic[0:64:2, 0:96:2])


def test_reference_rgb_is_sensor_oriented_16_bit(tmp_path):
    mosaic = _mosaic((48, 64))
    path = write_dng(tmp_path / "rot.ARW", mosaic, orientation=6)
    frame = read_raw(path)
    assert frame.flip == 6
    rgb = read_reference_rgb(path)
    assert rgb.dtype == np.uint16 and rgb.shape == (48, 64, 3)  # not rotated: aligned to packed
    with rawpy.imread(str(path)) as raw:  # LibRaw's own default output is rotated
        assert raw.postprocess(output_bps=16).shape == (64, 48, 3)


def test_reference_rgb_tracks_exposure(tmp_path):
    linear = torch.full((4, 16, 24), 0.2)
    bright = write_dng(tmp_path / "b.dng", mosaic_from_linear(linear))
    dark = write_dng(tmp_path / "d.dng", mosaic_from_linear(linear / 8))
    assert read_reference_rgb(bright).mean() > 2 * read_reference_rgb(dark).mean()


def test_x_trans_is_refused_with_file_and_pattern(tmp_path):
    xtrans = np.array(
        [
            [1, 1, 0, 1, 1, 2],
            [1, 1, 2, 1, 1, 0],
            [2, 0, 1, 0, 2, 1],
            [1, 1, 2, 1, 1, 0],
            [1, 1, 0, 1, 1, 2],
            [0, 2, 1, 2, 0, 1],
        ]
    )
    path = write_dng(tmp_path / "fuji.RAF.dng", _mosaic((72, 96)), xtrans)
    with pytest.raises(RawReadError, match="X-Trans") as info:
        read_raw(path)
    assert str(path) in str(info.value) and "GGRGGB" in str(info.value)


def test_linear_dng_without_cfa_is_refused(tmp_path):
    path = tmp_path / "linear.dng"
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),
        (50708, "s", 0, "linear", True),
        (50717, "H", 1, 16383, True),
        (50721, "2i", 9, [v for x in (1, 0, 0, 0, 1, 0, 0, 0, 1) for v in (x, 1)], True),
    ]
    rgb = np.zeros((32, 48, 3), np.uint16)
    tifffile.imwrite(path, rgb, photometric=34892, extratags=tags, subfiletype=0)
    with pytest.raises(RawReadError, match="Foveon") as info:
        read_raw(path)
    assert str(path) in str(info.value)


def test_non_rgb_cfa_is_refused():
    with pytest.raises(RawReadError, match="CMYG|not an RGB Bayer"):
        cfa_layout(np.array([[0, 1], [2, 3]]), b"CMYG", "x.dng")


def test_cfa_layout_accepts_both_green_conventions():
    assert cfa_layout(np.array([[0, 1], [3, 2]]), b"RGBG", "a") == "RGGB"
    assert cfa_layout(np.array([[0, 1], [1, 2]]), b"RGBG", "a") == "RGGB"  # one green index
    assert cfa_layout(np.array([[2, 3], [1, 0]]), b"RGBG", "a") == "BGGR"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"not a raw file at all" * 50), "not a RAW file"),
        ("truncate", "truncated"),
    ],
)
def test_bad_files_name_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.ARW"
    if make == "truncate":
        write_dng(path, _mosaic())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        make(path)
    with pytest.raises(RawReadError, match=reason) as info:
        read_raw(path)
    assert info.value.file == str(path) and str(path) in str(info.value)


def test_write_dng_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_dng(tmp_path / "a.dng", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="black"):
        write_dng(tmp_path / "a.dng", _mosaic((4, 4)), black=20000, white=16383)
