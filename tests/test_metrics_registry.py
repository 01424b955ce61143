"""The metric registry, EnhanceTask.evaluate's `metrics` option, and `bgl eval enhance`."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from bgl.cli.eval import add_eval_command
from bgl.metrics import METRICS, PAPER_TABLE, get_metric
from bgl.metrics.registry import validate_metrics
from bgl.models.enhance import IlluminationNet
from bgl.models.generator import build_generator
from bgl.tasks import build_task, task_options
from bgl.tasks.enhance import EnhanceTask
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.usefixtures("single_thread")


def test_registry_lists_the_papers_eight_metrics() -> None:
    assert PAPER_TABLE == ("psnr", "ssim", "lpips", "vif", "fsim", "brisque", "niqe", "loe")
    assert set(PAPER_TABLE) <= set(METRICS)
    directions = {name: METRICS[name].direction for name in PAPER_TABLE}
    assert [n for n, d in directions.items() if d == "max"] == ["psnr", "ssim", "vif", "fsim"]
    assert METRICS["loe"].reference == "input"
    assert METRICS["brisque"].reference is None and METRICS["niqe"].reference is None
    assert METRICS["lpips"].options() == {"alexnet_weights"}
    with pytest.raises(ValueError, match="known metrics: psnr, ssim"):
        get_metric("psnrr")


def test_validate_metrics_checks_names_and_options() -> None:
    assert validate_metrics(["psnr", "fsim", "psnr"]) == ("psnr", "fsim")
    with pytest.raises(ValueError, match="unknown option.*'colour'.*fsim"):
        validate_metrics(["fsim"], {"fsim": {"colour": True}})
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        validate_metrics(["psnr"], {"nope": {}})


def nets(width: int = 4):
    torch.manual_seed(0)
    return build_generator(width), IlluminationNet(width=width)


def batch(b: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "raw": torch.rand(b, 4, size // 2, size // 2, generator=g),
        "rgb": torch.rand(b, 3, size, size, generator=g),
    }


def test_default_evaluate_keys_are_unchanged() -> None:
    metrics = EnhanceTask(width=4).evaluate(*nets(), [batch()])
    assert set(metrics) == {
        "psnr", "ssim", "psnr_generator", "psnr_input", "psnr_g_input", "g_passthrough",
        "upper_loss", "lower_loss",
    }  # fmt: skip
    assert task_options("enhance")["metrics"] == ("psnr", "ssim")


def test_evaluate_reports_selected_metrics_as_per_image_means() -> None:
    from bgl.metrics.fsim import fsim
    from bgl.metrics.loe import loe
    from bgl.tasks.enhance import amplified_input

    upper, lower = nets()
    task = build_task("enhance", width=4, metrics=["psnr", "vif", "fsim", "loe"])
    batches = [batch(seed=0), batch(b=1, seed=1)]
    metrics = task.evaluate(upper, lower, batches)
    ys, refs, inputs = [], [], []
    with torch.no_grad():
        upper.eval(), lower.eval()
        for b in batches:
            *_, y = task.outputs(upper, lower, b)
            ys.append(y), refs.append(b["rgb"]), inputs.append(amplified_input(b["raw"]))
    y, ref, inp = torch.cat(ys), torch.cat(refs), torch.cat(inputs)
    assert metrics["fsim"] == pytest.approx(fsim(y, ref).mean().item(), rel=1e-6)
    assert metrics["loe"] == pytest.approx(loe(y, inp).mean().item(), rel=1e-9)
    assert math.isfinite(metrics["vif"])


def test_undefined_images_are_left_out_of_the_mean(caplog) -> None:
    task = EnhanceTask(width=4, metrics=["brisque"])
    upper, lower = nets()
    with torch.no_grad():
        for p in upper.parameters():
            p.zero_()  # F(raw) = 0: y is black, flat, and BRISQUE undefined
    metrics = task.evaluate(upper, lower, [batch(b=1)])
    assert math.isnan(metrics["brisque"])
    assert "brisque is undefined (NaN) for 1 of 1 images" in caplog.text


def test_task_options_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown metric 'lpip'"):
        EnhanceTask(metrics=["psnr", "lpip"])
    with pytest.raises(ValueError, match="list of metric names"):
        EnhanceTask(metrics="psnr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown option"):
        EnhanceTask(metrics=["lpips"], metric_options={"lpips": {"weights": "x"}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from bgl.config import from_dict
    from bgl.train.loop import Trainer

    tmp = tmp_path_factory.mktemp("eval")
    cfg = from_dict(tiny_config_dict(tmp, train={"warm_steps": 1, "steps": 0}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg)
        trainer.fit()
        return trainer.save(tmp / "checkpoint.pt")
    finally:
        torch.set_num_threads(threads)


def run_eval(*argv: str, capsys=None) -> int:
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "enhance", *argv])
    return args.func(args)


def test_eval_command_prints_table_1(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    monkeypatch.delenv("BGL_ALEXNET_WEIGHTS", raising=False)
    out = tmp_path / "row.json"
    code = run_eval("--checkpoint", str(checkpoint), "--data", "synthetic", "--crop", "64",
                    "--test-size", "2", "--json", str(out))  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    for header in ("PSNR↑", "SSIM↑", "LPIPS↓", "VIF↑", "FSIM↑", "BRISQUE↓", "NIQE↓", "LOE↓"):
        assert header in text
    assert "alexnet-owt-7be5be79.pth" in text  # LPIPS n/a, and why
    assert "96x96" in text  # NIQE n/a on 64 px images, and why
    row = json.loads(out.read_text())
    assert list(row["metrics"]) == list(PAPER_TABLE)
    assert row["metrics"]["lpips"] is None and row["metrics"]["niqe"] is None
    assert row["images"] == 2 and row["size"] == [64, 64]
    for name in ("psnr", "ssim", "vif", "fsim", "brisque", "loe"):
        assert math.isfinite(row["metrics"][name]), name


def test_eval_command_explicit_metrics_must_run(checkpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    monkeypatch.delenv("BGL_ALEXNET_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="niqe cannot run.*96x96"):
        run_eval("--checkpoint", str(checkpoint), "--metrics", "psnr,niqe")
    with pytest.raises(ValueError, match="lpips cannot run.*alexnet-owt-7be5be79.pth"):
        run_eval("--checkpoint", str(checkpoint), "--metrics", "lpips")
    with pytest.raises(ValueError, match="unknown metric 'fsimc'"):
        run_eval("--checkpoint", str(checkpoint), "--metrics", "psnr,fsimc")


def test_eval_command_with_lpips_weights(checkpoint, tmp_path, capsys) -> None:
    from tests.test_metrics_lpips import random_alexnet_checkpoint

    weights = tmp_path / "alexnet.pth"
    torch.save(random_alexnet_checkpoint(), weights)
    out = tmp_path / "row.json"
    code = run_eval("--checkpoint", str(checkpoint), "--metrics", "psnr,lpips",
                    "--alexnet-weights", str(weights), "--json", str(out))  # fmt: skip
    assert code == 0
    assert math.isfinite(json.loads(out.read_text())["metrics"]["lpips"])


def test_eval_command_rejects_non_checkpoints(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"not a bgl checkpoint \(corrupt or another format\)"):
        run_eval("--checkpoint", str(bad))
    with pytest.raises(FileNotFoundError):
        run_eval("--checkpoint", str(tmp_path / "missing.pt"))
