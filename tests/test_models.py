"""GenerativeBlock (SID U-Net) and IlluminationNet (SCI-style Retinex G)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bgl.models.enhance import IlluminationNet
from bgl.models.generator import GenerativeBlock, build_generator


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sid_param_count(w: int) -> int:
    """Closed form for the SID U-Net with base width w (4 RAW channels in, 12 out)."""

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    def block(cin: int, cout: int) -> int:
        return conv(cin, cout, 3) + conv(cout, cout, 3)

    widths = [w, 2 * w, 4 * w, 8 * w, 16 * w]
    total = block(4, w) + sum(block(widths[i], widths[i + 1]) for i in range(4))
    for i in range(4, 0, -1):  # up path: 16w->8w, ..., 2w->w
        total += conv(widths[i], widths[i - 1], 2)  # ConvTranspose2d(k=2) has the same count
        total += block(2 * widths[i - 1], widths[i - 1])
    return total + conv(w, 12, 1)


@pytest.mark.parametrize("h,w", [(16, 16), (32, 16)])
def test_generator_output_is_twice_the_packed_resolution(h: int, w: int) -> None:
    net = build_generator(width=8)
    out = net(torch.rand(2, 4, h, w))
    assert out.shape == (2, 3, 2 * h, 2 * w)


@pytest.mark.parametrize("h,w", [(17, 21), (5, 9), (30, 16)])
def test_generator_handles_sizes_not_multiple_of_16(h: int, w: int) -> None:
    net = build_generator(width=8)
    z = torch.rand(1, 4, h, w)
    out = net(z)
    assert out.shape == (1, 3, 2 * h, 2 * w)
    assert torch.isfinite(out).all()


def test_generator_reflect_pads_then_crops() -> None:
    # A 20x24 input is reflect-padded to 32x32; the output is the padded input's output, cropped.
    net = build_generator(width=8).eval()
    z = torch.rand(1, 4, 20, 24)
    padded = torch.nn.functional.pad(z, (0, 8, 0, 12), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(net(z), net(padded)[..., :40, :48])


def test_generator_parameter_count_matches_closed_form_and_scales_with_width() -> None:
    counts = {w: n_params(GenerativeBlock(width=w)) for w in (8, 16, 32)}
    for w, c in counts.items():
        assert c == sid_param_count(w)
    # conv weights dominate: doubling the width roughly quadruples the count
    assert 3.9 < counts[16] / counts[8] < 4.0
    assert 3.9 < counts[32] / counts[16] < 4.0
    # SID's published network (width 32) has about 7.76 M parameters
    assert counts[32] == 7_760_748


def test_generator_uses_leaky_relu_0_2_and_sid_layout() -> None:
    net = GenerativeBlock(width=8)
    relus = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 18  # 9 conv blocks x 2 convs
    assert all(m.negative_slope == pytest.approx(0.2) for m in relus)
    assert not any(isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh)) for m in net.modules())
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride) for m in ups] == [((2, 2), (2, 2))] * 4
    assert net.head.out_channels == 12 and net.head.kernel_size == (1, 1)


def test_generator_leaky_slope_is_active() -> None:
    # A block fed a negative constant must leak 0.2 * x through its activation.
    block = GenerativeBlock(width=8).down[0]
    act = block[1]
    x = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(act(x), torch.tensor([-0.2, 2.0]))


def test_generator_output_is_not_clamped() -> None:
    net = GenerativeBlock(width=8)
    with torch.no_grad():
        net.head.bias.fill_(5.0)
    out = net(torch.rand(1, 4, 16, 16))
    assert out.max() > 1.0


def test_generator_rejects_wrong_input() -> None:
    net = GenerativeBlock(width=8)
    with pytest.raises(ValueError, match="packed RAW"):
        net(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError):
        GenerativeBlock(width=0)


@pytest.mark.parametrize("residual", [True, False])
def test_illumination_within_bounds(residual: bool) -> None:
    g = IlluminationNet(width=8, min_illumination=0.05, input_residual=residual)
    # push the sigmoid to both extremes
    with torch.no_grad():
        g.out_conv[0].bias.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    x = torch.rand(2, 3, 32, 32) * 1.4 - 0.2  # slightly outside [0, 1], like F's output
    x[:, 0] = -0.1  # red: sigmoid ~ 0 and (if residual) x clamped to 0 -> L at the floor
    illum = g(x)
    assert illum.shape == x.shape
    assert illum.min() >= 0.05 and illum.max() <= 1.0
    torch.testing.assert_close(illum[:, 0], torch.full_like(illum[:, 0], 0.05))
    torch.testing.assert_close(illum[:, 2], torch.ones_like(illum[:, 2]))


def test_illumination_clamps_its_input() -> None:
    g = IlluminationNet(width=8).eval()
    x = torch.rand(1, 3, 16, 16) * 3 - 1
    torch.testing.assert_close(g(x), g(x.clamp(0, 1)))


@pytest.mark.parametrize("residual", [True, False])
def test_enhance_is_x_over_illumination_clipped(residual: bool) -> None:
    g = IlluminationNet(width=8, input_residual=residual).eval()
    x = torch.rand(2, 3, 16, 16)
    y, illum = g.enhance(x)
    by_hand = torch.minimum(torch.maximum(x / g(x), torch.zeros(())), torch.ones(()))
    torch.testing.assert_close(illum, g(x))
    torch.testing.assert_close(y, by_hand)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("residual", [True, False])
def test_illumination_net_layout(residual: bool) -> None:
    g = IlluminationNet(width=8, input_residual=residual)
    assert isinstance(g.mid_conv[1], nn.BatchNorm2d)
    assert g.in_conv[0].out_channels == 8 and g.out_conv[0].out_channels == 3
    # stage residual: with the middle branch switched off, L is computed from in-stage features
    with torch.no_grad():
        g.mid_conv[0].weight.zero_()
        g.mid_conv[0].bias.zero_()
        g.mid_conv[1].bias.fill_(-10.0)  # ReLU kills the middle branch
    g.eval()
    x = torch.rand(1, 3, 16, 16) * 0.5
    s = g.out_conv(g.in_conv(x))
    expected = (s + x if residual else s).clamp(g.min_illumination, 1.0)
    torch.testing.assert_close(g(x), expected)


def test_input_residual_illumination_dominates_input() -> None:
    # SCI-style L = clamp(x + s) >= x, so y = x / L never needs clipping at 1
    g = IlluminationNet(width=8, input_residual=True)
    x = torch.rand(2, 3, 16, 16) * 1.2 - 0.1
    illum = g(x)
    assert (illum >= x.clamp(0, 1) - 1e-6).all()
    y, _ = g.enhance(x)
    torch.testing.assert_close(y, x.clamp(0, 1) / illum)


def test_headroom_residual_is_x_plus_headroom_times_s() -> None:
    g = IlluminationNet(width=8, headroom_residual=True).eval()
    x = torch.rand(2, 3, 16, 16) * 1.2 - 0.1
    x01 = x.clamp(0, 1)
    fea = g.in_conv(x01)
    s = g.out_conv(fea + g.mid_conv(fea))
    by_hand = x01 + (1 - x01) * s
    torch.testing.assert_close(g(x), by_hand)
    assert (g(x) >= x01 - 1e-6).all() and (g(x) <= 1).all()


def test_headroom_residual_keeps_a_gradient_where_sci_saturates() -> None:
    # s near 1 on a bright x: SCI's clamp(x + s, ., 1) is flat at 1, x + (1 - x) s is not
    x = torch.full((1, 3, 8, 8), 0.8)
    grads = {}
    for headroom in (False, True):
        torch.manual_seed(0)
        g = IlluminationNet(width=4, headroom_residual=headroom)
        with torch.no_grad():
            g.out_conv[0].bias.fill_(3.0)  # s ~ 0.95
        g(x).mean().backward()
        grads[headroom] = g.out_conv[0].bias.grad.abs().sum().item()
    assert grads[False] == 0.0
    assert grads[True] > 1e-3


def test_illumination_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="needs input_residual"):
        IlluminationNet(input_residual=False, headroom_residual=True)
    with pytest.raises(ValueError):
        IlluminationNet(min_illumination=0.0)
    with pytest.raises(ValueError):
        IlluminationNet(width=8)(torch.rand(1, 4, 8, 8))


def test_develop_residual_starts_as_the_classical_development_and_then_learns() -> None:
    from bgl.raw.tone import classical_development

    torch.manual_seed(0)
    block = build_generator(4, residual="develop")
    z = torch.rand(2, 4, 10, 13)  # not a multiple of 16: padded for the U-Net, not for D
    assert torch.equal(block(z), classical_development(z))
    # the zero-initialised head still learns, and then the U-Net's correction shows
    loss = (block(z) - 0.5).abs().mean()
    loss.backward()
    assert block.head.weight.grad is not None and block.head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        block.head.bias += 0.1
    assert torch.allclose(block(z), classical_development(z) + 0.1, atol=1e-6)
    # the plain U-Net is SID's: no skip, a non-zero head
    plain = build_generator(4)
    assert plain.residual == "none" and plain.head.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="residual must be one of none, develop"):
        GenerativeBlock(4, residual="isp")
