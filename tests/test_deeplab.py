"""ResNet backbones (torchvision's models, dilation, weight files) and DeepLabV3+."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bgl.models.deeplab import ASPP, ASPPPooling, DeepLabV3Plus
from bgl.models.resnet import (
    ResNet,
    load_resnet_weights,
    resnet,
    resnet50,
    resnet101,
    resnet_weights_path,
)

# torchvision's resnet50() state dict, written out from its documented layout (conv1 7x7/2, maxpool,
# bottleneck stages of 3/4/6/3 blocks with widths 64/128/256/512 and expansion 4, stride on the 3x3
# conv, a 1x1 conv + BN projection in each stage's first block, fc 2048 -> 1000). Per entry: key,
# shape. BN entries are weight, bias, running_mean, running_var (C,) and num_batches_tracked ().
BN = ("weight", "bias", "running_mean", "running_var")
RESNET50_STEM_AND_HEAD = {
    "conv1.weight": (64, 3, 7, 7),
    **{f"bn1.{k}": (64,) for k in BN},
    "bn1.num_batches_tracked": (),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}
RESNET50_LAYER1_BLOCK0 = {
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    **{f"layer1.0.bn1.{k}": (64,) for k in BN},
    "layer1.0.bn1.num_batches_tracked": (),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    **{f"layer1.0.bn2.{k}": (64,) for k in BN},
    "layer1.0.bn2.num_batches_tracked": (),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    **{f"layer1.0.bn3.{k}": (256,) for k in BN},
    "layer1.0.bn3.num_batches_tracked": (),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    **{f"layer1.0.downsample.1.{k}": (256,) for k in BN},
    "layer1.0.downsample.1.num_batches_tracked": (),
}
RESNET50_OTHER = {
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.3.conv3.weight": (512, 128, 1, 1),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer3.5.conv2.weight": (256, 256, 3, 3),
    "layer3.5.bn3.running_var": (1024,),
    "layer4.0.conv1.weight": (512, 1024, 1, 1),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.0.downsample.1.running_mean": (2048,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.num_batches_tracked": (),
}
#: documented sizes: torchvision's ResNet50_Weights / ResNet101_Weights meta "num_params"
RESNET50_PARAMS, RESNET101_PARAMS = 25_557_032, 44_549_160


pytestmark = pytest.mark.usefixtures("single_thread")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_resnet50_state_dict_matches_torchvision_layout():
    shapes = _shapes(resnet50())
    for expected in (RESNET50_STEM_AND_HEAD, RESNET50_LAYER1_BLOCK0, RESNET50_OTHER):
        for key, shape in expected.items():
            assert shapes.get(key) == shape, key
    # 53 convs + 53 BNs (2 parameters, 3 buffers) + fc (2) = 320 entries
    assert len(shapes) == 53 + 53 * 5 + 2
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in shapes if k.startswith("layer")}
    assert sorted(blocks) == sorted(
        f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n)
    )
    # only each stage's first block has the projection
    assert {k.split(".downsample")[0] for k in shapes if ".downsample." in k} == {
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
    }
    assert sum(p.numel() for p in resnet50().parameters()) == RESNET50_PARAMS


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_is_torchvisions(depth):
    """bgl's ResNet is torchvision's model: same class, modules, keys; its checkpoints load
    strictly and give torchvision's outputs, with and without DeepLab's dilation."""
    build = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
    for dilate in ((False, False, False), (False, False, True), (False, True, True)):
        ours = resnet(depth, replace_stride_with_dilation=dilate)
        reference = build(weights=None, replace_stride_with_dilation=list(dilate))
        assert isinstance(ours, torchvision.models.ResNet)
        inner, reference_inner = list(ours.modules())[1:], list(reference.modules())[1:]
        assert [type(m) for m in inner] == [type(m) for m in reference_inner]
        assert [repr(m) for m in inner] == [repr(m) for m in reference_inner]
        assert _shapes(ours) == _shapes(reference)
    torch.manual_seed(0)
    for m in reference.modules():  # non-trivial statistics, so eval-mode BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.weight.data.uniform_(0.5, 1.5)
    ours.load_state_dict(reference.state_dict())
    ours.eval(), reference.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))
        reference.avgpool, reference.fc = nn.Identity(), nn.Identity()  # layer4's map, flattened
        assert torch.equal(torch.flatten(ours.forward_features(x)[-1], 1), reference(x))


def test_resnet101_size_and_blocks():
    model = resnet101()
    shapes = _shapes(model)
    assert len(shapes) == 104 + 104 * 5 + 2  # 104 convs and BNs
    assert "layer3.22.conv3.weight" in shapes and "layer3.23.conv1.weight" not in shapes
    assert sum(p.numel() for p in model.parameters()) == RESNET101_PARAMS
    with pytest.raises(ValueError, match="depth"):
        resnet(34)


def test_width_scales_and_head_is_optional():
    model = resnet(50, width=8, num_classes=None)
    assert model.channels == (32, 64, 128, 256)
    # every width starts each block as an identity (last BN at zero), as torchvision's
    # zero_init_residual=True does at full width
    for net in (model, resnet50()):
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        assert all(torch.all(b.bn3.weight == 0) for b in blocks)
        assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    with pytest.raises(RuntimeError, match="no classifier"):
        model(torch.rand(1, 3, 32, 32))
    logits = resnet(50, width=4, num_classes=7)(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7)


def test_dilation_follows_torchvision_rule():
    model = resnet(50, width=4, num_classes=None, replace_stride_with_dilation=(False, False, True))
    first, second = model.layer4[0], model.layer4[1]
    assert first.conv2.stride == (1, 1) and first.conv2.dilation == (1, 1)  # previous dilation
    assert second.conv2.dilation == (2, 2) and second.conv2.padding == (2, 2)
    assert first.downsample[0].stride == (1, 1)
    feats = model.forward_features(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 4]  # output stride 16
    os8 = resnet(50, width=4, num_classes=None, replace_stride_with_dilation=(False, True, True))
    assert [f.shape[-1] for f in os8.forward_features(torch.rand(1, 3, 64, 64))] == [16, 8, 8, 8]
    assert os8.layer4[1].conv2.dilation == (4, 4) and os8.layer4[0].conv2.dilation == (2, 2)


def test_weight_file_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = resnet(50, width=8)  # a classifier checkpoint, fc included, as torchvision ships
    for m in source.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.num_batches_tracked.fill_(7)
    path = tmp_path / "resnet50-test.pth"
    torch.save(source.state_dict(), path)
    target = DeepLabV3Plus(19, width=8).backbone
    load_resnet_weights(target, path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    # a whole-model checkpoint with the backbone under "backbone." loads too
    whole = tmp_path / "deeplab.pth"
    torch.save({f"backbone.{k}": v for k, v in source.state_dict().items()}, whole)
    load_resnet_weights(resnet(50, width=8, num_classes=None), whole)
    # wrong width or depth: an error naming the mismatch
    with pytest.raises(ValueError, match="shape"):
        load_resnet_weights(resnet(50, width=4, num_classes=None), path)
    with pytest.raises(ValueError, match="missing"):
        load_resnet_weights(resnet(101, width=8, num_classes=None), path)
    # a pickled module is refused (weights_only=True)
    pickled = tmp_path / "module.pth"
    torch.save(source, pickled)
    with pytest.raises(ValueError, match=r"not a state-dict file \(corrupt or another format\)"):
        load_resnet_weights(target, pickled)
    # lookup: explicit path, then $BGL_RESNET50_WEIGHTS, then the hub cache
    assert resnet_weights_path(50, path) == str(path)
    monkeypatch.setenv("BGL_RESNET50_WEIGHTS", str(path))
    assert resnet_weights_path(50) == str(path)
    monkeypatch.delenv("BGL_RESNET50_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="resnet50-"):
        resnet_weights_path(50)


def test_deeplab_structure_at_full_width():
    model = DeepLabV3Plus(19, depth=50)
    aspp = model.aspp
    assert isinstance(aspp, ASPP) and len(aspp.branches) == 5
    assert aspp.branches[0][0].kernel_size == (1, 1)
    assert [b[0].dilation for b in aspp.branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert isinstance(aspp.branches[4], ASPPPooling)
    assert all(
        b[0].out_channels == 256 if isinstance(b, nn.Sequential) else True for b in aspp.branches
    )
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[0].out_channels == 256
    assert model.low_level[0].in_channels == 256 and model.low_level[0].out_channels == 48
    assert model.decoder[0][0].in_channels == 256 + 48
    assert [m[0].kernel_size for m in model.decoder] == [(3, 3), (3, 3)]
    assert model.classifier.out_channels == 19
    # backbone at output stride 16 with torchvision keys under "backbone."
    assert model.backbone.layer4[1].conv2.dilation == (2, 2)
    assert model.state_dict()["backbone.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    # the ImageNet normalisation constants are not part of the state dict
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    assert DeepLabV3Plus(19, width=4, output_stride=8).rates == (12, 24, 36)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplab_forward_and_backward(output_stride):
    torch.manual_seed(0)
    model = DeepLabV3Plus(19, width=4, output_stride=output_stride)
    x = torch.rand(2, 3, 64, 96, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 19, 64, 96)
    logits.logsumexp(1).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # any size, one image in eval mode
        assert model(torch.rand(1, 3, 50, 70)).shape == (1, 19, 50, 70)


def test_invalid_options():
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(19, width=4, output_stride=32)
    with pytest.raises(ValueError, match="dropout"):
        DeepLabV3Plus(19, width=4, dropout=1.0)
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        ResNet((3, 4, 6, 3), replace_stride_with_dilation=(True,))
