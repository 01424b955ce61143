"""SID / DARK FACE / ACDC loaders on tiny copies of their published layouts.

Every check compares against values computed here from the files that were written (hand
packing of the mosaic, rawpy's own development, the PNG pixels, the label text).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import rawpy
import torch
from torch.utils.data import default_collate

from bgl.config import ConfigError, DataConfig
from bgl.data.acdc import ACDCNight, check_label_ids
from bgl.data.darkface import DarkFace, parse_label_file
from bgl.data.errors import DataError
from bgl.data.fixtures import make_acdc, make_darkface, make_sid
from bgl.data.png import read_png, write_png
from bgl.data.sid import SIDSony, exposure_seconds, read_sid_list
from bgl.data.splits import build_splits

BLACK, WHITE = 512, 16383
RGGB_SITES = [(0, 0), (0, 1), (1, 1), (1, 0)]


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    root = tmp_path_factory.mktemp("sid")
    return make_sid(root, {"train": 2, "val": 1, "test": 1}, shots=(0.1, 0.04, 0.033))


def _hand_packed(mosaic: np.ndarray) -> np.ndarray:
    return np.stack([mosaic[r::2, c::2] for r, c in RGGB_SITES]).astype(np.float64)


# -- SID ----------------------------------------------------------------------------------------


def test_exposure_and_ratio_from_names(sid):
    assert exposure_seconds("00001_00_0.04s.ARW") == ("00001", 0.04)
    assert exposure_seconds("./Sony/long/10003_00_10s.ARW") == ("10003", 10.0)
    pairs = read_sid_list(sid.root, "train")
    assert len(pairs) == 6  # 2 scenes x 3 short exposures
    ratios = sorted({p.ratio for p in pairs})
    assert ratios == pytest.approx([100.0, 250.0, 300.0])  # 10/0.1, 10/0.04, min(10/0.033, 300)
    assert all(p.iso == 200 and p.aperture == 8.0 for p in pairs)


def test_sid_item_matches_hand_packing_and_rawpy_development(sid):
    ds = SIDSony(sid.root, "test", crop=32, cache=False)
    assert len(ds) == 3 and not ds.random
    for index, pair in enumerate(ds.pairs):
        item = ds[index]
        assert item["raw"].shape == (4, 16, 16) and item["rgb"].shape == (3, 32, 32)
        packed = _hand_packed(sid.mosaics[pair.short])  # (4, 32, 48)
        y, x = (32 - 16) // 2, (48 - 16) // 2  # centre crop in packed pixels
        want = np.clip((packed[:, y : y + 16, x : x + 16] - BLACK) / (WHITE - BLACK), 0, None)
        want = np.clip(want * pair.ratio, 0, 1)
        np.testing.assert_allclose(item["raw"].numpy(), want, atol=1e-5)
        with rawpy.imread(str(sid.root / pair.long)) as raw:
            rgb = raw.postprocess(
                use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16
            )
        want_rgb = rgb[2 * y : 2 * y + 32, 2 * x : 2 * x + 32].transpose(2, 0, 1) / 65535.0
        np.testing.assert_allclose(item["rgb"].numpy(), want_rgb, atol=1e-6)
        assert float(item["ratio"]) == pytest.approx(pair.ratio)


def test_sid_random_crops_stay_aligned(sid):
    """Each random crop must be *some* flip/transpose of the packed and RGB windows at (y, x)
    and (2y, 2x) -- searched exhaustively here."""
    g = torch.Generator().manual_seed(3)
    ds = SIDSony(sid.root, "train", crop=16, cache=False, generator=g)
    seen_flags = set()
    for index in range(len(ds)):
        pair = ds.pairs[index]
        item = ds[index]
        packed = np.clip((_hand_packed(sid.mosaics[pair.short]) - BLACK) / (WHITE - BLACK), 0, None)
        packed = np.clip(packed * pair.ratio, 0, 1)
        with rawpy.imread(str(sid.root / pair.long)) as raw:
            rgb = raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16) / 65535
        windows = np.lib.stride_tricks.sliding_window_view(packed, (4, 8, 8))[0]
        found = None
        for flags in itertools.product((False, True), repeat=3):
            raw = _unflip(item["raw"].numpy(), *flags)
            error = np.abs(windows - raw).max(axis=(2, 3, 4))  # (positions y, positions x)
            for y, x in zip(*np.nonzero(error < 1e-5)):
                b = rgb[2 * y : 2 * y + 16, 2 * x : 2 * x + 16].transpose(2, 0, 1)
                if np.allclose(_unflip(item["rgb"].numpy(), *flags), b, atol=1e-6):
                    found = flags
        assert found is not None, f"item {index}: crop not aligned with any window"
        seen_flags.add(found)
    assert len(seen_flags) > 1  # the augmentation actually varies


def _unflip(a: np.ndarray, h: bool, v: bool, t: bool) -> np.ndarray:
    """Undo "mirror left-right (h), then up-down (v), then transpose (t)"."""
    if t:
        a = np.swapaxes(a, -1, -2)
    if v:
        a = a[..., ::-1, :]
    if h:
        a = a[..., ::-1]
    return a


def test_sid_full_frame_and_collate(sid):
    ds = SIDSony(sid.root, "val", crop=0, cache=False)
    batch = default_collate([ds[0], ds[1]])
    assert batch["raw"].shape == (2, 4, 32, 48) and batch["rgb"].shape == (2, 3, 64, 96)
    assert 0 <= batch["raw"].min() and batch["raw"].max() <= 1


def test_sid_list_line_pointing_nowhere(sid, tmp_path):
    root = tmp_path / "copy"
    fixture = make_sid(root, {"train": 1, "val": 1, "test": 1}, shots=(0.1,))
    lines = fixture.lines["train"] + ["./Sony/short/00009_00_0.1s.ARW ./Sony/long/00009_00_10s.ARW"]
    (root / "Sony_train_list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        SIDSony(root, "train", crop=16, cache=False)
    assert info.value.line == 2 and "Sony_train_list.txt:2" in str(info.value)
    assert "00009_00_0.1s.ARW" in str(info.value)
    ds = SIDSony(root, "train", crop=16, cache=False, skip_bad=True)
    assert len(ds) == 1 and len(ds.bad) == 1 and ds.bad.items[0].line == 2
    assert "skipped 1 bad item" in ds.bad.summary()


@pytest.mark.parametrize(
    "line, reason",
    [
        ("./Sony/short/00001_00_0.1s.ARW", "expected"),
        ("./Sony/short/00001_00_fast.ARW ./Sony/long/00001_00_10s.ARW", "exposure time"),
        ("./Sony/short/00001_00_0.1s.ARW ./Sony/long/00002_00_10s.ARW", "different scenes"),
        ("./Sony/short/00001_00_0.1s.ARW ./Sony/long/00001_00_10s.ARW ISOfast", "ISO"),
    ],
)
def test_sid_malformed_lines_name_the_line(tmp_path, line, reason):
    make_sid(tmp_path, {"train": 1, "val": 0, "test": 0}, shots=(0.1,))
    (tmp_path / "Sony_train_list.txt").write_text(f"# comment\n{line}\n")
    with pytest.raises(DataError, match=reason) as info:
        read_sid_list(tmp_path, "train")
    assert info.value.line == 2


def test_sid_truncated_file_fails_on_the_fly_naming_it(tmp_path):
    fixture = make_sid(tmp_path, {"train": 1, "val": 0, "test": 0}, shots=(0.1,))
    short = tmp_path / next(k for k in fixture.mosaics if "short" in k)
    short.write_bytes(short.read_bytes()[:3000])
    ds = SIDSony(tmp_path, "train", crop=16, cache=False)
    with pytest.raises(DataError, match="truncated") as info:
        ds[0]
    assert info.value.file == str(short)
    # with --skip-bad the loader probes files up front and leaves the pair out, listed
    with pytest.raises(DataError, match="no usable pairs"):
        SIDSony(tmp_path, "train", crop=16, cache=False, skip_bad=True)


# -- DARK FACE ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def darkface(tmp_path_factory):
    root = tmp_path_factory.mktemp("darkface")
    return root, make_darkface(root, 6, size=(48, 64), faces=3)


def test_darkface_letterbox_scales_boxes_exactly(darkface):
    root, boxes = darkface
    ds = DarkFace(root, "test", crop=32, cache=False)
    item = ds[0]
    key = ds.items[0].key.split("/")[-1].removesuffix(".png")
    scale = 32 / 64  # long side 64 -> 32
    n = int(item["num_boxes"])
    assert n == 3 and item["boxes"].shape == (256, 4)
    np.testing.assert_allclose(item["boxes"][:n].numpy(), boxes[key] * scale, atol=1e-5)
    assert (item["boxes"][n:] == -1).all()
    # the image: resized PNG in the top 24 rows, black padding below
    assert item["rgb"].shape == (3, 32, 32) and item["raw"].shape == (4, 16, 16)
    assert item["rgb"][:, 24:].abs().max() == 0
    png = read_png(root / ds.items[0].key)
    assert abs(item["rgb"][:, :24].mean().item() - png.mean() / 255) < 0.01


def test_darkface_native_size_keeps_pixels_and_boxes(darkface):
    root, boxes = darkface
    ds = DarkFace(root, "test", crop=0, cache=False)
    item = ds[0]
    key = ds.items[0].key.split("/")[-1].removesuffix(".png")
    png = read_png(root / ds.items[0].key)
    np.testing.assert_allclose(item["rgb"].permute(1, 2, 0).numpy(), png / 255.0, atol=1e-6)
    np.testing.assert_allclose(item["boxes"][:3].numpy(), boxes[key])


def test_darkface_random_crops_keep_boxes_inside_and_collate(darkface):
    root, _ = darkface
    ds = DarkFace(root, "train", crop=32, cache=False, generator=torch.Generator().manual_seed(0))
    assert len(ds) == 4  # 6 images: 4 train, 1 val, 1 test
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        n = int(item["num_boxes"])
        b = item["boxes"][:n]
        assert (b >= 0).all() and (b <= 32).all() and (b[:, 2] >= b[:, 0]).all()
    batch = default_collate(items)
    assert batch["boxes"].shape == (4, 256, 4) and batch["num_boxes"].shape == (4,)


def test_darkface_unprocessing_is_seeded_per_image(darkface):
    root, _ = darkface
    a = DarkFace(root, "test", crop=32, cache=False)[0]
    b = DarkFace(root, "test", crop=32, cache=False)[0]
    torch.testing.assert_close(a["raw"], b["raw"])
    other = DarkFace(root, "test", crop=32, cache=False, synth_seed=1)[0]
    assert not torch.equal(a["raw"], other["raw"])


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("2\n1 1 5 5\n", 1, "declares 2 faces but lists 1"),
        ("1\n-3 1 5 5\n", 2, "negative"),
        ("1\n5 5 2 9\n", 2, "empty box"),
        ("x\n", 1, "number of faces"),
        ("1\n1 2 3\n", 2, "four numbers"),
        ("1\n100 1 120 5\n", 2, "outside"),
    ],
)
def test_darkface_bad_label_names_file_and_line(tmp_path, text, line, reason):
    path = tmp_path / "7.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=reason) as info:
        parse_label_file(path, height=48, width=64)
    assert info.value.line == line and str(path) in str(info.value)


def test_darkface_skip_bad_lists_broken_labels(tmp_path):
    make_darkface(tmp_path, 6, size=(48, 64))
    (tmp_path / "label" / "2.txt").write_text("3\n1 1 4 4\n")
    (tmp_path / "label" / "99.txt").write_text("0\n")  # a label without an image
    with pytest.raises(DataError, match="99.txt"):
        DarkFace(tmp_path, "train", crop=32, cache=False)
    total = 0
    for split in ("train", "val", "test"):
        ds = DarkFace(tmp_path, split, crop=32, cache=False, skip_bad=True)
        assert {str(i.file).split("/")[-1] for i in ds.bad.items} == {"2.txt", "99.txt"}
        total += len(ds)
    assert total == 5


# -- ACDC ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    root = tmp_path_factory.mktemp("acdc")
    return root, make_acdc(root, {"train": 8, "val": 2}, size=(48, 64))


def test_acdc_splits_and_native_labels(acdc):
    root, labels = acdc
    sizes = {s: len(ACDCNight(root, s, crop=0, cache=False)) for s in ("train", "val", "test")}
    assert sizes == {"train": 7, "val": 1, "test": 2}
    ds = ACDCNight(root, "test", crop=0, cache=False)
    item = ds[0]
    np.testing.assert_array_equal(item["labels"].numpy(), labels[ds.items[0].key])
    assert item["labels"].dtype == torch.int64
    png = read_png(root / ds.items[0].key)
    np.testing.assert_allclose(item["rgb"].permute(1, 2, 0).numpy(), png / 255.0, atol=1e-6)


def test_acdc_letterbox_pads_with_ignore(acdc):
    root, _ = acdc
    item = ACDCNight(root, "test", crop=32, cache=False)[0]
    assert item["labels"].shape == (32, 32)
    assert (item["labels"][24:] == 255).all()  # padding below the 24-row image
    values = set(item["labels"].unique().tolist())
    assert values <= set(range(19)) | {255}


def test_acdc_random_crops_collate(acdc):
    root, _ = acdc
    ds = ACDCNight(root, "train", crop=32, cache=False, generator=torch.Generator().manual_seed(1))
    batch = default_collate([ds[0], ds[1]])
    assert batch["labels"].shape == (2, 32, 32) and batch["raw"].shape == (2, 4, 16, 16)


def test_acdc_label_ids_outside_range(tmp_path):
    make_acdc(tmp_path, {"train": 4, "val": 1}, size=(48, 64))
    bad = sorted((tmp_path / "gt/night/val").rglob("*.png"))[0]
    labels = read_png(bad, mode="label").copy()
    labels[0, :5] = 19
    labels[1, :2] = 40
    write_png(bad, labels)
    ds = ACDCNight(tmp_path, "test", crop=0, cache=False)
    with pytest.raises(DataError, match="19 \\(5 px\\), 40 \\(2 px\\)") as info:
        ds[0]
    assert info.value.file == str(bad)
    with pytest.raises(DataError, match="no usable images"):  # skipped up front, then empty
        ACDCNight(tmp_path, "test", crop=0, cache=False, skip_bad=True)
    check_label_ids(np.array([[0, 18, 255]]), "ok.png")


# -- registry -----------------------------------------------------------------------------------


def test_build_splits_registers_real_datasets(sid, darkface, acdc, caplog):
    cfg = DataConfig(name="sid", root=str(sid.root), crop=32, train_size=4, val_size=0)
    cfg.test_size, cfg.select_size = 0, 1
    with caplog.at_level(logging.WARNING):
        splits = build_splits(cfg)
    # the selection item is held out of SID's validation list: L_F never sees it
    assert [len(splits[s]) for s in ("train", "val", "select", "test")] == [4, 2, 1, 3]
    val_raw = [splits["val"][i]["raw"] for i in range(2)]
    assert not any(torch.equal(splits["select"][0]["raw"], r) for r in val_raw)
    assert "decoding them on the fly" in caplog.text
    with pytest.raises(ConfigError, match="data.select_size: sid's validation split has 3"):
        build_splits(
            DataConfig(
                name="sid", root=str(sid.root), crop=32, train_size=4, val_size=0, test_size=0
            )
        )
    cfg = DataConfig(name="darkface", root=str(darkface[0]), crop=32, train_size=0, val_size=0)
    cfg.test_size, cfg.select_size = 0, 1
    # six images: 4 train, 1 val, 1 test; the one val image cannot also give a selection split
    with pytest.raises(ConfigError, match="darkface's validation split has 1 items"):
        build_splits(cfg)
    assert len(DarkFace(darkface[0], "train", 32, cache=False)) == 4
    cfg = DataConfig(name="acdc", root=str(acdc[0]), crop=32, train_size=0, val_size=0)
    cfg.test_size, cfg.select_size = 0, 1
    with pytest.raises(ConfigError, match="acdc's validation split has 1 items"):
        build_splits(cfg)
    assert ACDCNight(acdc[0], "test", 32, cache=False)[0]["labels"].shape == (32, 32)
    with pytest.raises(ConfigError, match="data.train_size"):
        build_splits(DataConfig(name="sid", root=str(sid.root), crop=32, train_size=50))
    with pytest.raises(ConfigError, match="data.root"):
        build_splits(DataConfig(name="acdc", root=None))
    assert len(build_splits(DataConfig(train_size=4, val_size=2, test_size=2, crop=32))["val"]) == 2
