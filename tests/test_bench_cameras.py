"""`bgl bench cameras`: test DNGs of real photographs through four cameras' colour matrices and
all four CFA layouts, developed by bgl and compared with LibRaw's own development.

The reference is LibRaw itself: a block that starts as the classical development of the
canonical RAW (`model.generator_residual: develop`, untrained) must land within the targets on
every camera and layout, which checks the metadata path (as-shot white balance, colour matrix),
the input scaling of a gain model and the alignment of non-RGGB layouts end to end; SID's plain
U-Net, untrained, must not.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import rawpy

from bgl.bench.cameras import (
    LOW_RATIO,
    PATTERNS,
    render_markdown,
    run_cameras_bench,
    write_camera_files,
)
from bgl.cli import main
from bgl.config import from_dict
from bgl.train.loop import Trainer
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.usefixtures("single_thread")
pytest.importorskip("skimage")


def _checkpoint(tmp_path, residual: str):
    cfg = from_dict(
        tiny_config_dict(
            tmp_path,
            model={"generator_width": 4, "generator_residual": residual},
            task={"options": {"width": 4, "input_gain": 30}},
            data={"raw_space": "canonical", "camera_seed": None, "crop": 64},
        )
    )
    return Trainer(cfg).save(tmp_path / f"{residual}.pt")


def test_test_files_are_real_dngs_of_four_cameras_and_layouts(tmp_path):
    files = write_camera_files(tmp_path, max_side=128)
    assert [f.pattern for f in files] == list(PATTERNS)
    for file in files:
        with rawpy.imread(str(file.path)) as raw:
            assert raw.raw_image_visible.shape[0] <= 128
            assert raw.camera_whitebalance[0] > raw.camera_whitebalance[1]  # red gain > green


def test_classical_start_meets_the_targets_and_plain_unet_does_not(tmp_path, capsys):
    residual, plain = _checkpoint(tmp_path, "develop"), _checkpoint(tmp_path, "none")
    rows = run_cameras_bench(
        {"residual": residual, "plain": plain}, out_dir=tmp_path / "bench", max_side=192
    )
    by_block = {k: [r for r in rows if r["checkpoint"] == k] for k in ("residual", "plain")}
    # F alone and F + G for each of the four files
    assert len(by_block["residual"]) == 8 and {r["mode"] for r in rows} == {"F", "F+G"}
    alone = [r for r in by_block["residual"] if r["mode"] == "F"]
    assert sorted(r["pattern"] for r in alone) == sorted(PATTERNS)
    for row in alone:
        assert row["worst_mean_error"] <= 0.15 and row["ssim_grey"] >= 0.8, row
        assert row["meets_targets"]
    assert not any(r["meets_targets"] for r in by_block["plain"])
    (written,) = (tmp_path / "bench").glob("cameras-*.parquet")
    assert pq.read_table(written).num_rows == 16
    table = render_markdown(rows).splitlines()
    assert len(table) == 2 + 4  # header, rule, (residual, plain) x (F, F+G)
    assert table[2].startswith("| residual | photo normal | F |") and table[2].endswith("| 4/4 |")
    # a short exposure with the training data's noise, developed at its ratio: the colour path
    # holds there too (LibRaw's rendering is as noisy as the file, so SSIM is lower)
    low = run_cameras_bench(
        {"residual": residual}, out_dir=tmp_path / "low", max_side=192, exposure="low"
    )
    assert {r["exposure"] for r in low} == {"low"} and {r["ratio"] for r in low} == {LOW_RATIO}
    for row in (r for r in low if r["mode"] == "F"):
        assert row["worst_mean_error"] <= 0.15 and row["ssim_grey"] >= 0.6, row


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["bench", "cameras", str(tmp_path / "nope.pt")]) == 2
    captured = capsys.readouterr()
    assert "checkpoint not found" in captured.out + captured.err
