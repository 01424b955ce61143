"""LPIPS (AlexNet, v0.1): weight discovery, the lpips package's module, and the formula.

Tests never download (tests/conftest.py), so they write a random backbone in torchvision's
checkpoint format and check the pipeline (scaling, trunk, normalisation, the wheel's linear
weights, averaging) against an independent functional computation and against the lpips
package's module built around torchvision's own AlexNet with the same trunk.
"""

from __future__ import annotations

import math
from pathlib import Path

import lpips as lpips_package
import pytest
import torch
import torch.nn.functional as F
import torchvision

import bgl.metrics.lpips as lpips_module
from bgl.metrics.lpips import ALEXNET_ENV, ALEXNET_FILES, build_lpips, lpips
from tests.metric_references import lpips_package_model

pytestmark = pytest.mark.usefixtures("single_thread")

TORCHVISION_FEATURE_KEYS = [f"{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]
SHAPES = {
    "0.weight": (64, 3, 11, 11),
    "3.weight": (192, 64, 5, 5),
    "6.weight": (384, 192, 3, 3),
    "8.weight": (256, 384, 3, 3),
    "10.weight": (256, 256, 3, 3),
}


#: The linear layers w_l shipped in the lpips wheel.
LINEAR_WEIGHTS = Path(lpips_package.__file__).parent / "weights" / "v0.1" / "alex.pth"


def random_alexnet_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full torchvision-style AlexNet state dict (features.* and classifier.*)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in SHAPES.items():
        fan_in = math.prod(shape[1:])
        index = key.split(".")[0]
        state[f"features.{index}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)
        state[f"features.{index}.bias"] = 0.1 * torch.randn(shape[0], generator=g)
    state["classifier.1.weight"] = torch.randn(8, 4, generator=g)  # ignored by LPIPS
    state["classifier.1.bias"] = torch.randn(8, generator=g)
    return state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch hub cache ($TORCH_HOME) holding a random alexnet-owt-7be5be79.pth."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ALEXNET_ENV, raising=False)
    monkeypatch.setattr(lpips_module, "_CACHE", {})
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = random_alexnet_checkpoint()
    torch.save(state, checkpoints / ALEXNET_FILES[0])
    return state


def images(b: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, size, size, generator=g)
    pred = (target + 0.15 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
    return pred, target


def independent_lpips(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """Zhang et al.'s formula written out with functional ops, in float64."""
    lin = torch.load(LINEAR_WEIGHTS, map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    w = {k: v.double() for k, v in state.items()}

    def relus(img):
        h = ((2 * img.double() - 1) - shift) / scale
        out = []
        h = F.relu(F.conv2d(h, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        h = F.relu(F.conv2d(h, w["features.3.weight"], w["features.3.bias"], padding=2))
        out.append(h)
        h = F.max_pool2d(h, 3, 2)
        for i in (6, 8, 10):
            h = F.relu(F.conv2d(h, w[f"features.{i}.weight"], w[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(relus(x), relus(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        weights = lin[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total += ((a - b) ** 2 * weights).sum(dim=1).mean(dim=(1, 2))
    return total


def test_metric_is_the_lpips_package_on_torchvisions_alexnet(hub) -> None:
    model = build_lpips()
    assert isinstance(model, lpips_package.LPIPS) and model.version == "0.1"
    # the trunk: torchvision's alexnet().features, index for index, holding the checkpoint
    reference = torchvision.models.alexnet(weights=None).features
    trunk = {k.split(".", 1)[1]: v for k, v in model.net.state_dict().items()}
    assert list(trunk) == TORCHVISION_FEATURE_KEYS == list(reference.state_dict())
    for key, shape in SHAPES.items():
        assert torch.equal(trunk[key], hub[f"features.{key}"]) and trunk[key].shape == shape
    layers = [m for s in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                          model.net.slice5) for m in s]  # fmt: skip
    assert [repr(m) for m in layers] == [repr(m) for m in reference[: len(layers)]]
    # the linear layers: the wheel's file, non-negative as LPIPS clamps them
    lin = torch.load(LINEAR_WEIGHTS, map_location="cpu", weights_only=True)
    for k, layer in enumerate(model.lins):
        assert torch.equal(layer.model[1].weight, lin[f"lin{k}.model.1.weight"])
        assert layer.model[1].weight.shape == (1, (64, 192, 384, 256, 256)[k], 1, 1)
    assert all((v >= 0).all() for v in lin.values())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_matches_independent_formula(hub) -> None:
    pred, target = images()
    got = lpips(pred, target)
    assert got.shape == (2,)
    torch.testing.assert_close(
        got.double(), independent_lpips(hub, pred, target), rtol=1e-5, atol=1e-7
    )
    assert (got > 0).all()


def test_matches_lpips_package_module(hub) -> None:
    trunk = torchvision.models.alexnet(weights=None).features
    trunk.load_state_dict(
        {k[len("features.") :]: v for k, v in hub.items() if k.startswith("features.")}
    )
    reference = lpips_package_model(trunk)
    pred, target = images(b=3, size=48, seed=3)
    with torch.no_grad():
        ref = reference(pred, target, normalize=True).view(-1)
    torch.testing.assert_close(lpips(pred, target), ref, rtol=1e-5, atol=1e-7)


def test_identical_images_and_grey_input(hub) -> None:
    pred, target = images(b=1)
    torch.testing.assert_close(lpips(target, target), torch.zeros(1))
    grey_p, grey_t = pred[:, :1], target[:, :1]
    torch.testing.assert_close(
        lpips(grey_p, grey_t), lpips(grey_p.expand(-1, 3, -1, -1), grey_t.expand(-1, 3, -1, -1))
    )


def test_explicit_path_and_env_var(tmp_path, monkeypatch, hub) -> None:
    other = tmp_path / "mine.pth"
    torch.save(random_alexnet_checkpoint(seed=1), other)
    pred, target = images(b=1)
    from_hub = lpips(pred, target)
    explicit = lpips(pred, target, alexnet_weights=other)
    assert not torch.allclose(from_hub, explicit)
    monkeypatch.setenv(ALEXNET_ENV, str(other))
    torch.testing.assert_close(lpips(pred, target), explicit)
    monkeypatch.setenv(ALEXNET_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="BGL_ALEXNET_WEIGHTS"):
        lpips(pred, target)


def test_missing_backbone_names_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv(ALEXNET_ENV, raising=False)
    pred, target = images(b=1)
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as info:
        lpips(pred, target)
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in str(info.value)


def test_wrong_checkpoint_is_reported(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="AlexNet"):
        build_lpips(bad)


def test_bad_inputs(hub) -> None:
    pred, target = images(b=1)
    with pytest.raises(ValueError, match="shapes differ"):
        lpips(pred, target[..., :-1])
    with pytest.raises(ValueError, match="channels"):
        lpips(pred[:, :2], target[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lpips(pred * 255, target * 255)
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(pred[..., :30, :30], target[..., :30, :30])
