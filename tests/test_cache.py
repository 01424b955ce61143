"""The packed cache: `bgl data prepare` (through its argparse handler), resumability, crash
safety, staleness, --verify, --skip-bad, loaders reading from it, and `bgl bench data`."""

from __future__ import annotations

import argparse
import hashlib
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bgl.cli.bench import add_data_bench_command
from bgl.cli.data import add_data_commands
from bgl.cli.develop import add_develop_command
from bgl.data import cache as cache_mod
from bgl.data.cache import MANIFEST, PackedCache, default_cache_dir, prepare_items
from bgl.data.darkface import DarkFace
from bgl.data.errors import BadItemLog, DataError
from bgl.data.fixtures import make_acdc, make_darkface, make_sid
from bgl.data.sid import SIDSony, decode_sid, sid_prepare_items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bgl")
    sub = p.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    add_develop_command(sub)
    bench = sub.add_parser("bench")
    add_data_bench_command(bench.add_subparsers(dest="bench", required=True))
    return p


def run(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def sid_root(tmp_path):
    make_sid(tmp_path / "sid", {"train": 2, "val": 1, "test": 1}, shots=(0.1, 0.04))
    return tmp_path / "sid"


def _manifest(root, dataset):
    return pq.read_table(default_cache_dir(root, dataset) / MANIFEST).to_pylist()


def test_prepare_writes_arrays_and_manifest(sid_root):
    assert run("data", "prepare", "sid", "--root", str(sid_root)) == 0
    rows = {r["key"]: r for r in _manifest(sid_root, "sid")}
    assert len(rows) == 4 * 2 + 4  # 8 short exposures, 4 long ones
    short = rows["Sony/short/00001_00_0.1s.ARW"]
    assert short["status"] == "ok" and short["ratio"] == pytest.approx(100.0)
    assert short["arrays"] == ["packed"] and short["shapes"] == [[4, 32, 48]]
    assert rows["Sony/long/00001_00_10s.ARW"]["shapes"] == [[64, 96, 3]]
    folder = default_cache_dir(sid_root, "sid")
    for row in rows.values():  # checksums, recomputed independently of the cache module
        for file, digest, dtype in zip(row["files"], row["checksums"], row["dtypes"]):
            array = np.load(folder / file)
            assert str(array.dtype) == dtype
            assert hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest() == digest


def test_cached_items_equal_decoded_items(sid_root, caplog):
    fly = SIDSony(sid_root, "test", crop=32, cache=False)
    run("data", "prepare", "sid", "--root", str(sid_root))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cached = SIDSony(sid_root, "test", crop=32)
    assert cached.source.cached_fraction == 1.0 and "on the fly" not in caplog.text
    for i in range(len(fly)):
        a, b = fly[i], cached[i]
        for key in ("raw", "rgb", "ratio"):
            torch.testing.assert_close(a[key], b[key])


def test_second_run_skips_and_interrupted_run_resumes(sid_root, monkeypatch):
    items = sid_prepare_items(sid_root, BadItemLog())
    decode = decode_sid(sid_root)
    calls = []

    def interrupted(item):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(item.key)
        return decode(item)

    folder = default_cache_dir(sid_root, "sid")
    with pytest.raises(KeyboardInterrupt):
        prepare_items(PackedCache(folder, "sid", sid_root), items, interrupted)
    rows = pq.read_table(folder / MANIFEST).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(calls)  # exactly the finished entries
    assert not list(folder.rglob("*.tmp"))

    # a crash in the middle of writing an array leaves neither a row nor a temporary
    real_save = np.save

    def crash_save(f, array, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_items(PackedCache(folder, "sid", sid_root), items, decode)
    monkeypatch.setattr(np, "save", real_save)
    assert len(pq.read_table(folder / MANIFEST)) == 5
    assert not list(folder.rglob("*.tmp"))

    summary = prepare_items(PackedCache(folder, "sid", sid_root), items, decode)
    assert (summary.reused, summary.decoded) == (5, len(items) - 5)
    summary = prepare_items(PackedCache(folder, "sid", sid_root), items, decode)
    assert (summary.reused, summary.decoded) == (len(items), 0)


def test_changed_source_and_corrupt_array_are_redone(sid_root):
    run("data", "prepare", "sid", "--root", str(sid_root))
    folder = default_cache_dir(sid_root, "sid")
    items = sid_prepare_items(sid_root, BadItemLog())
    decode = decode_sid(sid_root)
    # a source edited after preparing is stale: the loader decodes it, prepare redoes it
    source = sid_root / "Sony/short/00001_00_0.1s.ARW"
    source.write_bytes(source.read_bytes())  # new mtime
    cache = PackedCache(folder, "sid", sid_root)
    assert cache.fresh("Sony/short/00001_00_0.1s.ARW", ["Sony/short/00001_00_0.1s.ARW"]) is None
    assert prepare_items(cache, items, decode).decoded == 1
    # flipped bytes inside an array: only --verify notices, and redoes that entry
    row = next(r for r in _manifest(sid_root, "sid") if r["key"].endswith("00002_00_10s.ARW"))
    path = folder / row["files"][0]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert prepare_items(PackedCache(folder, "sid", sid_root), items, decode).decoded == 0
    summary = prepare_items(PackedCache(folder, "sid", sid_root), items, decode, verify=True)
    assert summary.corrupt == [row["key"]] and summary.decoded == 1


def test_bad_raw_file_stops_or_is_skipped_and_listed(sid_root, capsys):
    bad = sid_root / "Sony/short/00002_01_0.04s.ARW"
    bad.write_bytes(bad.read_bytes()[:2000])
    assert run("data", "prepare", "sid", "--root", str(sid_root)) == 2
    out = capsys.readouterr().out
    assert "00002_01_0.04s.ARW" in out and "--skip-bad" in out
    assert run("data", "prepare", "sid", "--root", str(sid_root), "--skip-bad") == 0
    out = capsys.readouterr().out
    assert "1 bad item(s) skipped" in out and "00002_01_0.04s.ARW" in out
    rows = {r["key"]: r for r in _manifest(sid_root, "sid")}
    assert rows["Sony/short/00002_01_0.04s.ARW"]["status"] == "bad"
    # loaders refuse the recorded bad file, or leave its pair out under skip_bad
    with pytest.raises(DataError, match="recorded by `bgl data prepare`") as info:
        SIDSony(sid_root, "train", crop=32)
    assert "00002_01_0.04s.ARW" in str(info.value)
    ds = SIDSony(sid_root, "train", crop=32, skip_bad=True)
    assert len(ds) == 3 and len(ds.bad) == 1


def test_partial_cache_decodes_the_rest_with_a_warning(tmp_path, caplog):
    make_darkface(tmp_path, 6)
    from bgl.data.darkface import darkface_prepare_items, decode_darkface

    folder = default_cache_dir(tmp_path, "darkface")
    everything = darkface_prepare_items(tmp_path, BadItemLog())
    assert all(isinstance(item, cache_mod.PrepareItem) for item in everything)
    cache = PackedCache(folder, "darkface", tmp_path)
    prepare_items(cache, everything[:3], decode_darkface(tmp_path))
    with caplog.at_level(logging.WARNING):
        ds = DarkFace(tmp_path, "train", crop=32)
    assert "lacks" in caplog.text and "bgl data prepare darkface" in caplog.text
    assert 0 < ds.source.cached_fraction < 1
    assert all(ds[i]["rgb"].shape == (3, 32, 32) for i in range(len(ds)))


def test_prepare_acdc_with_bad_labels_and_custom_cache(tmp_path, capsys):
    make_acdc(tmp_path / "acdc", {"train": 3, "val": 1})
    from bgl.data.png import read_png, write_png

    label = sorted((tmp_path / "acdc/gt/night/train").rglob("*.png"))[0]
    ids = read_png(label, mode="label").copy()
    ids[0, 0] = 77
    write_png(label, ids)
    cache = tmp_path / "fast-disk"
    args = ["data", "prepare", "acdc", "--root", str(tmp_path / "acdc"), "--cache", str(cache)]
    assert run(*args) == 2
    assert "77 (1 px)" in capsys.readouterr().out
    assert run(*args, "--skip-bad") == 0
    rows = pq.read_table(cache / "acdc" / MANIFEST).to_pylist()
    assert sorted(r["status"] for r in rows) == ["bad", "ok", "ok", "ok"]
    assert {r["arrays"][0] for r in rows if r["status"] == "ok"} == {"rgb"}


def test_bench_data_writes_rows(tmp_path):
    out = tmp_path / "bench"
    code = run(
        "bench", "data", "--datasets", "sid,darkface",
        "--sid-size", "32", "48", "--darkface-size", "32", "48",
        "--sid-crop", "32", "--darkface-crop", "32",
        "--samples", "1", "--cache-samples", "2", "--width", "2", "--lower-width", "2",
        "--no-step", "--output-dir", str(out),
    )  # fmt: skip
    assert code == 0
    files = list(out.glob("data-*.parquet"))
    assert len(files) == 1
    rows = pq.read_table(files[0]).to_pylist()
    assert [(r["dataset"], r["mode"]) for r in rows] == [
        ("sid", "on-the-fly"),
        ("sid", "cache"),
        ("darkface", "on-the-fly"),
        ("darkface", "cache"),
    ]
    for r in rows:
        assert r["time_s"] > 0 and r["samples_per_s"] == pytest.approx(1 / r["time_s"])
        assert r["benchmark"] == "data" and r["config_sid_crop"] == 32 and r["cpu_s"] >= 0
    cached = [r for r in rows if r["mode"] == "cache"]
    assert all(r["speedup"] > 0 and r["prepare_s_per_item"] > 0 for r in cached)


def test_prepare_lock_refuses_a_live_writer_and_takes_over_a_dead_one(sid_root):
    import os

    folder = default_cache_dir(sid_root, "sid")
    folder.mkdir(parents=True)
    items = sid_prepare_items(sid_root, BadItemLog())[:2]
    decode = decode_sid(sid_root)
    (folder / "prepare.lock").write_text(str(os.getppid()))  # a live process
    with pytest.raises(DataError, match="another `bgl data prepare`"):
        prepare_items(PackedCache(folder, "sid", sid_root), items, decode)
    (folder / "prepare.lock").write_text("999999999")  # no such process: a crashed run
    assert prepare_items(PackedCache(folder, "sid", sid_root), items, decode).decoded == 2
    assert not (folder / "prepare.lock").exists()
