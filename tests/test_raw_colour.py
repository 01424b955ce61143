"""The canonical RAW (bgl.raw.colour): camera colour undone with white balance and colour matrix.

Closed forms in float64: a linear sRGB scene taken through a known camera (rgb2cam, inverse white
balance, mosaic) comes back as the mosaic of the scene itself. DNG files of every CFA layout and
two real colour matrices are written here and read back through LibRaw, so the metadata path
(rawpy's colour order, its zeroed rgb_xyz_matrix for DNGs) is checked end to end.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rawpy
import torch

from bgl.config import ConfigError, DataConfig, from_dict
from bgl.data.errors import DataError
from bgl.data.fixtures import make_darkface, make_sid
from bgl.data.sid import SIDSony
from bgl.data.splits import build_splits
from bgl.data.synthetic import SyntheticLowLight, in_raw_space
from bgl.raw.bayer import mosaic_rgb
from bgl.raw.colour import (
    IDENTITY,
    camera_matrices,
    canonical_packed,
    libraw_cam2rgb,
    libraw_white_balance,
)
from bgl.raw.dng import mosaic_from_linear, write_dng
from bgl.raw.read import read_raw
from bgl.raw.unprocess import (
    XYZ2CAMS,
    apply_ccm,
    random_ccm,
    rgb2cam_from_xyz2cam,
    synthesize_low_light,
    unprocess,
)
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.usefixtures("single_thread")

# (row, col) of R, G (on R's row), B, G2 (on B's row) -- written independently of bayer.py
HAND_SITES = {
    "RGGB": [(0, 0), (0, 1), (1, 1), (1, 0)],
    "GRBG": [(0, 1), (0, 0), (1, 0), (1, 1)],
    "BGGR": [(1, 1), (1, 0), (0, 0), (0, 1)],
    "GBRG": [(1, 0), (1, 1), (0, 1), (0, 0)],
}


def tile_scene(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Linear sRGB (B,3,2h,2w) in [0.1, 0.7], constant over each 2x2 tile: every packed site
    then sees one colour, so the canonical RAW has a closed form (the scene's own mosaic)."""
    g = torch.Generator().manual_seed(seed)
    half = 0.1 + 0.6 * torch.rand((batch, 3, h, w), generator=g, dtype=torch.float64)
    return half.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def hand_mosaic(rgb: torch.Tensor, pattern: str) -> torch.Tensor:
    """(B,3,H,W) -> packed (B,4,H/2,W/2) from the hand-written site table."""
    source = (0, 1, 2, 1)
    sites = HAND_SITES[pattern]
    return torch.stack([rgb[:, s, r::2, c::2] for s, (r, c) in zip(source, sites)], dim=1)


def through_camera(scene: torch.Tensor, rgb2cam: torch.Tensor, gains: torch.Tensor):
    """A camera's linear RAW of a linear sRGB scene: rgb2cam, then divided by the WB gains."""
    cam = apply_ccm(scene, rgb2cam)
    return cam / gains.to(cam.dtype)[:, :, None, None]


def test_canonical_packed_recovers_the_scene_with_per_image_cameras():
    batch = 3
    scene = tile_scene(batch, 6, 8, seed=0)
    rgb2cam = random_ccm(batch, torch.Generator().manual_seed(1), dtype=torch.float64)
    wb = torch.tensor([[2.2, 1.0, 1.6], [1.9, 1.0, 1.8], [2.4, 1.0, 1.5]], dtype=torch.float64)
    for pattern in HAND_SITES:
        raw = mosaic_rgb(through_camera(scene, rgb2cam, wb), pattern)
        out = canonical_packed(raw, wb, torch.linalg.inv(rgb2cam))
        torch.testing.assert_close(out, hand_mosaic(scene, pattern), rtol=0, atol=1e-12)
    # a single frame (4,h,w) with shared parameters, and float32
    one = mosaic_rgb(through_camera(scene[:1], rgb2cam[:1], wb[:1]), "RGGB")[0].float()
    out = canonical_packed(one, wb[0].tolist(), torch.linalg.inv(rgb2cam[0]).float())
    assert out.shape == one.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, hand_mosaic(scene[:1], "RGGB")[0].float(), rtol=0, atol=1e-5)


def test_green_detail_survives_and_range_is_clipped():
    g = torch.Generator().manual_seed(2)
    raw = 0.2 + 0.3 * torch.rand((2, 4, 5, 7), generator=g, dtype=torch.float64)
    cam2rgb = torch.linalg.inv(random_ccm(2, g, dtype=torch.float64))
    out = canonical_packed(raw, (2.0, 1.0, 1.5, 1.0), cam2rgb)
    inside = ((out[:, [1, 3]] > 0) & (out[:, [1, 3]] < 1)).all(dim=1)  # unclipped greens
    assert inside.float().mean() > 0.9
    detail = (out[:, 1] - out[:, 3])[inside]
    torch.testing.assert_close(detail, (raw[:, 1] - raw[:, 3])[inside], rtol=0, atol=1e-12)
    # a saturated pixel stays white (clipped after white balance, as LibRaw does)
    white = canonical_packed(torch.ones(4, 2, 2), (2.0, 1.0, 1.6), cam2rgb[0])
    torch.testing.assert_close(white, torch.ones(4, 2, 2), rtol=0, atol=1e-6)
    dark_red = canonical_packed(
        torch.tensor([0.5, 0.0, 0.0, 0.0]).view(4, 1, 1), (2, 1, 2), cam2rgb[0]
    )
    assert dark_red.min() >= 0 and dark_red.max() <= 1
    with pytest.raises(ValueError, match="cam2rgb"):
        canonical_packed(raw, (2.0, 1.0, 1.5), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="packed RAW"):
        canonical_packed(torch.zeros(3, 4, 4), (1, 1, 1), torch.eye(3))


def test_camera_matrices_follow_unprocessing():
    for xyz2cam in XYZ2CAMS:
        m = torch.tensor(xyz2cam, dtype=torch.float64)
        cam2rgb = camera_matrices(xyz2cam)
        torch.testing.assert_close(
            cam2rgb @ rgb2cam_from_xyz2cam(m), torch.eye(3, dtype=torch.float64)
        )
        torch.testing.assert_close(cam2rgb.sum(dim=1), torch.ones(3, dtype=torch.float64))  # grey
        four = np.vstack([np.asarray(xyz2cam), np.zeros((1, 3))])  # rawpy's 4x3 form
        torch.testing.assert_close(camera_matrices(four), cam2rgb)
    with pytest.raises(ValueError, match="3x3 or 4x3"):
        camera_matrices(np.zeros((3, 4)))
    # rawpy's choice of source: its XYZ matrix, else the camera -> sRGB colour_matrix, else identity
    matrix, source = libraw_cam2rgb(np.vstack([XYZ2CAMS[2], [0, 0, 0]]), np.zeros((3, 4)))
    assert source == "rgb_xyz_matrix"
    np.testing.assert_allclose(matrix, camera_matrices(XYZ2CAMS[2]).numpy())
    cm = np.hstack([np.asarray(matrix), np.zeros((3, 1))])
    assert libraw_cam2rgb(np.zeros((4, 3)), cm)[1] == "color_matrix"
    assert libraw_cam2rgb(np.zeros((4, 3)), np.zeros((3, 4))) == (IDENTITY, "identity")


def test_white_balance_order_normalisation_and_fallbacks(caplog):
    rggb = (0, 1, 2, 3)  # rawpy's colour index at the sites of R, G, B, G2
    assert libraw_white_balance([4.0, 2.0, 3.0, 2.0], None, rggb) == (
        (2.0, 1.0, 1.5, 1.0),
        "as shot",
    )
    # a zero fourth multiplier means "as G"; a file that calls both greens 1 gets G's gain
    assert libraw_white_balance([2.0, 1.0, 1.6, 0.0], None, rggb)[0] == (2.0, 1.0, 1.6, 1.0)
    assert libraw_white_balance([2.0, 1.0, 1.6, 7.0], None, (0, 1, 2, 1))[0] == (2.0, 1.0, 1.6, 1.0)
    with caplog.at_level(logging.WARNING, logger="bgl.raw.colour"):
        gains, source = libraw_white_balance([0, 0, 0, 0], [2.5, 1.25, 1.5, 0], rggb, "x.NEF")
        assert (gains, source) == ((2.0, 1.0, 1.2, 1.0), "daylight")
        assert "x.NEF" in caplog.text and "daylight" in caplog.text
        caplog.clear()
        assert libraw_white_balance([], [0, 0, 0, 0], rggb, "y.CR2") == ((1.0,) * 4, "none")
        assert "y.CR2" in caplog.text


@pytest.mark.parametrize("pattern", list(HAND_SITES))
def test_dng_metadata_and_canonical_round_trip(tmp_path, pattern):
    scene = tile_scene(1, 32, 48, seed=3)
    for k, (camera, neutral) in enumerate(
        ((XYZ2CAMS[1], (0.48, 1.0, 0.62)), (XYZ2CAMS[2], (0.55, 1.0, 0.7)))
    ):
        gains = torch.tensor([[1 / neutral[0], 1.0, 1 / neutral[2]]], dtype=torch.float64)
        rgb2cam = rgb2cam_from_xyz2cam(torch.tensor(camera, dtype=torch.float64))
        linear = through_camera(scene, rgb2cam[None], gains)
        assert linear.max() <= 1 and linear.min() >= 0  # nothing clips: a closed form
        mosaic = mosaic_from_linear(mosaic_rgb(linear, pattern)[0], pattern)
        path = write_dng(
            tmp_path / f"{pattern}{k}.ARW",
            mosaic,
            pattern,
            as_shot_neutral=neutral,
            color_matrix=camera,
        )
        frame = read_raw(path)
        want_wb = (1 / neutral[0], 1.0, 1 / neutral[2], 1.0)
        np.testing.assert_allclose(frame.wb, want_wb, rtol=1e-4)
        assert frame.wb_source == "as shot"
        np.testing.assert_allclose(
            frame.cam2rgb, camera_matrices(camera).numpy(), rtol=0, atol=1e-5
        )
        with rawpy.imread(str(path)) as raw:  # DNGs: LibRaw fills color_matrix, not rgb_xyz
            assert not np.any(raw.rgb_xyz_matrix)
        want = hand_mosaic(scene, pattern)[0].float().numpy()
        np.testing.assert_allclose(frame.canonical(1.0), want, rtol=0, atol=2e-3)


def test_synthetic_cameras_agree_after_canonicalisation():
    """Two cameras, one scene, no noise: canonical inputs agree up to brightness (rgb gain)."""
    # sRGB, constant per 2x2 tile, neither bright (no highlight-safe gain blending) nor saturated
    # (no negative camera values clipped away)
    scene = 0.3 + 0.4 * tile_scene(3, 4, 4, seed=4).float()
    pairs = [
        synthesize_low_light(
            scene, torch.Generator().manual_seed(s), ratio_range=(1, 1), shot_range=(1e-12, 1e-12)
        )
        for s in (10, 11)
    ]
    assert not torch.allclose(pairs[0]["cam2rgb"], pairs[1]["cam2rgb"])  # per-image cameras

    def mismatch(space: str) -> float:
        a, b = (in_raw_space(p, space)["raw"].double() for p in pairs)
        scale = (a * b).sum(dim=(1, 2, 3), keepdim=True) / (b * b).sum(dim=(1, 2, 3), keepdim=True)
        return float((a - scale * b).abs().amax() / a.abs().amax())

    assert mismatch("canonical") < 1e-4
    assert mismatch("camera") > 0.05
    assert set(in_raw_space(pairs[0], "canonical")) == {"raw", "rgb", "ratio"}

    def dataset(camera_seed, space):
        return SyntheticLowLight(
            4,
            size=32,
            seed=1,
            ratio_range=(1, 1),
            shot_range=(1e-12, 1e-12),
            camera_seed=camera_seed,
            raw_space=space,
        )

    def colour_cast(space: str) -> float:
        """Largest per-channel disagreement between the two cameras' inputs of the same scenes
        (per-image, per-channel median ratio; max over min across channels, 1 = the same up to
        brightness)."""
        a, b = (dataset(c, space).tensors() for c in (5, 6))
        assert torch.equal(a["rgb"], b["rgb"])  # same scenes: camera draws have their own seed
        ratio = ((a["raw"] + 1e-3) / (b["raw"] + 1e-3)).flatten(2).median(dim=2).values
        return float((ratio.amax(dim=1) / ratio.amin(dim=1)).max())

    assert colour_cast("canonical") < 1.01
    assert colour_cast("camera") > 1.05
    per_image = dataset(None, "canonical")
    assert per_image[0]["raw"].shape == (4, 16, 16) and set(per_image[0]) == {"raw", "rgb", "ratio"}


def test_config_and_sid_canonical(tmp_path):
    cfg = from_dict(tiny_config_dict(tmp_path, data={"raw_space": "canonical"}))
    assert cfg.data.raw_space == "canonical"
    with pytest.raises(ConfigError, match="data.raw_space"):
        from_dict(tiny_config_dict(tmp_path, data={"raw_space": "sRGB"}))
    sid = make_sid(tmp_path / "sid", {"train": 1, "val": 1, "test": 1}, shots=(0.1,))
    plain = SIDSony(sid.root, "test", crop=0, cache=False)
    camera = plain[0]["raw"]
    canon = SIDSony(sid.root, "test", crop=0, cache=False, raw_space="canonical")[0]["raw"]
    frame = read_raw(sid.root / plain.pairs[0].short)
    torch.testing.assert_close(canon, canonical_packed(camera, frame.wb, frame.cam2rgb))
    assert not torch.allclose(canon, camera)


def test_sid_cache_without_colour_metadata_is_refused_early(tmp_path, monkeypatch):
    import bgl.data.sid as sid_module

    sid = make_sid(tmp_path / "sid", {"train": 1, "val": 1, "test": 1}, shots=(0.1,))
    decode = sid_module.decode_sid

    def older_cache(root):  # what a cache prepared before raw_space existed holds
        inner = decode(root)

        def without_colour(item):
            arrays, meta = inner(item)
            return arrays, {k: v for k, v in meta.items() if k not in ("wb", "cam2rgb")}

        return without_colour

    monkeypatch.setattr(sid_module, "decode_sid", older_cache)
    SIDSony(sid.root, "test", crop=0, cache=False)  # camera space needs no colour metadata
    with pytest.raises(DataError, match="bgl data prepare sid .*--force"):
        SIDSony(sid.root, "test", crop=0, cache=False, raw_space="canonical")


def test_unprocessed_datasets_take_raw_space_from_the_config(tmp_path):
    """DARK FACE (and ACDC, the same base) unprocess each item with its own camera; canonical
    re-expresses that item's RAW with that camera's metadata."""
    make_darkface(tmp_path, 24, size=(48, 64))  # a validation split of 2: one for selection

    def first_item(space: str) -> dict:
        cfg = DataConfig(
            name="darkface", root=str(tmp_path), crop=32, cache=None, raw_space=space,
            camera_seed=None, train_size=0, val_size=0, test_size=0, select_size=1,
        )  # fmt: skip
        splits = build_splits(cfg)
        assert splits["test"].raw_space == space
        return splits["test"][0]

    camera, canon = first_item("camera"), first_item("canonical")
    torch.testing.assert_close(camera["rgb"], canon["rgb"])
    assert canon["raw"].shape == camera["raw"].shape and not torch.allclose(
        canon["raw"], camera["raw"]
    )
    assert 0 <= canon["raw"].min() and canon["raw"].max() <= 1
    with pytest.raises(ValueError, match="raw_space"):
        SyntheticLowLight(2, size=32, raw_space="srgb")


def test_classical_development_of_the_canonical_raw_inverts_unprocessing():
    """sRGB -> unprocess (a random camera) -> canonical RAW -> classical development is the
    identity on flat patches (where bilinear demosaicing is exact), whatever the camera."""
    from bgl.raw.tone import classical_development

    g = torch.Generator().manual_seed(3)
    colours = torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1
    rgb = colours[:, :, None, None].expand(6, 3, 8, 8).contiguous()
    raw, camera = unprocess(rgb, g)
    gains = (
        torch.stack(
            [camera["red_gain"], torch.ones_like(camera["red_gain"]), camera["blue_gain"]], dim=1
        )
        * camera["rgb_gain"][:, None]
    )
    canonical = canonical_packed(raw, gains, camera["cam2rgb"])
    assert torch.allclose(classical_development(canonical), rgb, atol=1e-6)


def test_synthetic_canonical_raw_develops_to_the_reference_exposure():
    """Noise-free, ratio 1: the classical development of the synthetic canonical RAW is the
    reference (brightness within 2%, PSNR limited by bilinear demosaicing of sharp edges); the
    camera-space RAW carries unprocessing's brightness gain and develops visibly darker."""
    from bgl.metrics.image import psnr
    from bgl.raw.tone import classical_development

    def developed(raw_space):
        data = SyntheticLowLight(
            8,
            size=64,
            seed=0,
            camera_seed=None,
            raw_space=raw_space,
            ratio_range=(1.0, 1.0),
            shot_range=(1e-9, 1e-9),
        )
        raw = torch.stack([data[i]["raw"] for i in range(8)])
        rgb = torch.stack([data[i]["rgb"] for i in range(8)])
        return classical_development(raw), rgb

    out, rgb = developed("canonical")
    brightness = out.mean(dim=(1, 2, 3)) / rgb.mean(dim=(1, 2, 3))
    assert torch.all((brightness - 1).abs() < 0.02), brightness
    assert float(psnr(out, rgb).min()) > 23.0
    camera, _ = developed("camera")
    assert float((camera.mean(dim=(1, 2, 3)) / rgb.mean(dim=(1, 2, 3))).mean()) < 0.97
