"""Pre-flight: a study that cannot run says why before Ray starts and before anything is
written; a trial that waits for resources says what it waits for."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bgl.cli import main
from bgl.data.fixtures import make_sid
from bgl.study.callbacks import PendingWatch
from bgl.study.schema import load_study
from tests.conftest import TINY_STUDY_BASE

PAPER = Path(__file__).resolve().parents[1] / "studies" / "paper_enhance.yaml"


def _run(*argv: str, capsys) -> tuple[int, str]:
    code = main(["study", "run", *argv, "--no-live"])
    return code, "".join(capsys.readouterr().out.split())  # unwrapped: whitespace removed


def _has(out: str, text: str) -> bool:
    return "".join(text.split()) in out


def test_paper_study_with_a_missing_data_root_fails_before_ray(tmp_path, capsys):
    out_dir = tmp_path / "results"
    args = [str(PAPER), "--set", f"output_dir={out_dir}"]
    code, out = _run(*args, "--set", "base.data.root=/nonexistent", capsys=capsys)
    assert code == 2
    assert _has(out, "base.data.root: /nonexistent does not exist")
    assert not out_dir.exists()  # nothing written: the next attempt needs no --resume

    root = tmp_path / "sid"
    make_sid(root, {"train": 2, "val": 1, "test": 1}, shots=(0.1,))
    missing = next(root.glob("Sony/long/*.ARW"))
    missing.rename(missing.with_suffix(".moved"))
    code, out = _run(*args, "--set", f"base.data.root={root}", capsys=capsys)
    assert code == 2 and _has(out, "base.data.root:") and _has(out, missing.name)
    assert not out_dir.exists()

    missing.with_suffix(".moved").rename(missing)  # the layout is whole: now the GPU is missing
    code, out = _run(*args, "--set", f"base.data.root={root}", capsys=capsys)
    assert code == 2
    assert _has(out, "resources.gpus_per_worker") and _has(out, "--set resources.gpus_per_worker=0")
    assert not out_dir.exists()


def test_darkface_and_acdc_layouts_and_cpu_demand(tmp_path, capsys):
    def study(data: dict, resources: dict | None = None) -> Path:
        base = {**TINY_STUDY_BASE, "data": {**TINY_STUDY_BASE["data"], **data}}
        spec = {"name": "pre", "output_dir": str(tmp_path / "results"), "base": base,
                "resources": resources or {}}  # fmt: skip
        path = tmp_path / "pre.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    (tmp_path / "df" / "image").mkdir(parents=True)
    code, out = _run(str(study({"name": "darkface", "root": str(tmp_path / "df")})), capsys=capsys)
    assert code == 2 and _has(out, f"{tmp_path / 'df' / 'label'}: darkface folder not found")
    code, out = _run(str(study({"name": "acdc", "root": str(tmp_path / "df")})), capsys=capsys)
    assert code == 2 and _has(out, "rgb_anon/night/train: acdc folder not found")
    code, out = _run(str(study({}, {"launcher": "in_trial", "cpus_per_worker": 64})), capsys=capsys)
    assert code == 2 and _has(out, "a trial needs 64 CPUs")
    assert not (tmp_path / "results").exists()
    shutil.rmtree(tmp_path / "df")


def test_a_pending_trial_is_reported_once_with_what_it_needs(tmp_path, caplog):
    spec = {"name": "p", "output_dir": str(tmp_path), "base": TINY_STUDY_BASE,
            "resources": {"pending_warn_s": 0.001}}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    watch = PendingWatch(load_study(path))
    waiting = SimpleNamespace(
        trial_id="t1",
        status="PENDING",
        placement_group_factory=SimpleNamespace(bundles=[{"CPU": 0.01}, {"CPU": 1, "GPU": 1}]),
    )
    running = SimpleNamespace(trial_id="t2", status="RUNNING")
    with caplog.at_level(logging.WARNING):
        watch.on_step_end(0, [waiting, running])
        import time

        time.sleep(0.01)
        watch.on_step_end(1, [waiting, running])
        watch.on_step_end(2, [waiting, running])
    warnings = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
    assert len(warnings) == 1
    assert "trial t1" in warnings[0] and "CPU 1.01, GPU 1" in warnings[0]


def test_study_yaml_checkpoint_keys_are_validated(tmp_path):
    spec = {"name": "c", "output_dir": str(tmp_path), "base": TINY_STUDY_BASE,
            "checkpoints": {"keep": 0}}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(Exception, match="checkpoints.keep: at least 1"):
        load_study(path)
    spec["checkpoints"] = {"keep": None, "score": False, "every": 3}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(Exception, match="checkpoints.every"):
        load_study(path)
    del spec["checkpoints"]["every"]
    path.write_text(yaml.safe_dump(spec))
    assert load_study(path).checkpoints.keep is None
