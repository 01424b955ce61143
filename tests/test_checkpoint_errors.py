"""A corrupt or foreign checkpoint is named as such wherever it is handed in (`bgl eval`,
`bgl develop`, a resumed trial, `model.generator_checkpoint`): never torch's advice to load it
with weights_only=False."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from bgl.cli import main
from bgl.config import from_dict
from bgl.develop import load_models
from bgl.models.weights import NotACheckpointError
from bgl.train.checkpoint import load_checkpoint
from bgl.train.loop import Trainer
from bgl.train.restore import load_trained
from tests.conftest import tiny_config_dict


class Foreign(nn.Module):  # a pickled module: weights_only refuses it
    pass


@pytest.fixture
def bad_files(tmp_path):
    cfg = from_dict(tiny_config_dict(tmp_path))
    good = Trainer(cfg).save(tmp_path / "good.pt")
    files = {
        "truncated": tmp_path / "truncated.pt",
        "text": tmp_path / "text.pt",
        "pickled module": tmp_path / "module.pt",
        "foreign dict": tmp_path / "foreign.pt",
    }
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["text"].write_text("not a checkpoint\n")
    torch.save(Foreign(), files["pickled module"])
    torch.save({"model": {"w": torch.zeros(2)}}, files["foreign dict"])
    return files


def _message(path) -> str:
    return re.escape(f"{path}: not a bgl checkpoint (corrupt or another format)")


def test_every_loader_names_the_file(bad_files, tmp_path):
    for kind, path in bad_files.items():
        for load in (load_checkpoint, load_trained):
            with pytest.raises(NotACheckpointError, match=_message(path)) as info:
                load(path)
            assert "weights_only" not in str(info.value), kind
        if kind != "foreign dict":  # a dict may be a bare state dict: checked for F's keys
            with pytest.raises(NotACheckpointError, match=_message(path)):
                load_models(path)
        # a resumed trial, and a transfer study's frozen generator
        trainer = Trainer(from_dict(tiny_config_dict(tmp_path)))
        with pytest.raises(NotACheckpointError, match=_message(path)):
            trainer.resume(path)
        cfg = tiny_config_dict(tmp_path, model={"generator_checkpoint": str(path)})
        with pytest.raises(NotACheckpointError, match=_message(path)):
            Trainer(from_dict(cfg))


def test_cli_prints_the_message_and_exits_2(bad_files, capsys):
    path = bad_files["pickled module"]
    assert main(["eval", "enhance", "--checkpoint", str(path)]) == 2
    out = capsys.readouterr().out
    assert "not a bgl checkpoint (corrupt or another format)" in " ".join(out.split())
    assert "weights_only" not in out
