"""EnhanceTask: losses against hand computations, gradients, evaluation, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bgl.models.enhance import IlluminationNet
from bgl.models.generator import GenerativeBlock
from bgl.tasks import EnhanceTask, build_task, task_class
from bgl.tasks.enhance import sci_smoothness


def make_batch(b: int = 2, h: int = 8, w: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "raw": torch.rand(b, 4, h, w, generator=g),
        "rgb": torch.rand(b, 3, 2 * h, 2 * w, generator=g),
    }


@pytest.fixture
def nets() -> tuple[GenerativeBlock, IlluminationNet]:
    torch.manual_seed(0)
    upper = GenerativeBlock(width=8)
    with torch.no_grad():  # centre F's output in [0, 1] so most pixels are inside the clamp
        upper.head.bias.fill_(0.4)
    lower = EnhanceTask(width=8).build_lower()
    return upper, lower


# ---- independent reference implementations (plain loops / numpy) -----------------------------


def ycbcr_pixel(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb
    return np.array(
        [
            16 / 255 + 0.257 * r + 0.504 * g + 0.098 * b,
            128 / 255 - 0.148 * r - 0.291 * g + 0.439 * b,
            128 / 255 + 0.439 * r - 0.368 * g - 0.071 * b,
        ]
    )


def smoothness_by_hand(illum: np.ndarray, guide: np.ndarray, sigma: float) -> float:
    """SCI's 24 directed neighbour terms, each a mean over its valid positions, by plain loops."""
    bsz, _, h, w = illum.shape
    directed = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]
    assert len(directed) == 24
    total = 0.0
    for dy, dx in directed:
        acc, count = 0.0, 0
        for n in range(bsz):
            for i in range(h):
                for j in range(w):
                    i2, j2 = i + dy, j + dx
                    if not (0 <= i2 < h and 0 <= j2 < w):
                        continue
                    d_guide = ycbcr_pixel(guide[n, :, i2, j2]) - ycbcr_pixel(guide[n, :, i, j])
                    weight = math.exp(-np.sum(d_guide**2) / (2 * sigma**2))
                    acc += weight * np.sum(np.abs(illum[n, :, i2, j2] - illum[n, :, i, j]))
                    count += 1
        total += acc / count
    return total


def psnr_by_hand(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    return [
        10 * math.log10(1.0 / float(((p.double() - t.double()) ** 2).mean()))
        for p, t in zip(pred, target, strict=True)
    ]


# ---- the losses ---------------------------------------------------------------------------------


def test_defaults_follow_sci() -> None:
    task = EnhanceTask()
    assert (task.fidelity_weight, task.smooth_weight, task.smooth_sigma) == (1.5, 1.0, 10.0)
    assert task.input_residual and task.build_lower().input_residual
    assert not EnhanceTask(input_residual=False).build_lower().input_residual
    assert not task.build_lower().headroom_residual
    assert EnhanceTask(headroom_residual=True).build_lower().headroom_residual
    assert (task.warm_generator_weight, task.warm_detach_lower) == (1.0, True)
    assert (task.name, task.primary_metric, task.mode) == ("enhance", "psnr", "max")


@pytest.mark.parametrize("sigma", [10.0, 0.1])
def test_smoothness_matches_hand_computation(sigma: float) -> None:
    g = torch.Generator().manual_seed(1)
    illum = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64)
    guide = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64)
    got = sci_smoothness(illum, guide, sigma=sigma).item()
    assert got == pytest.approx(smoothness_by_hand(illum.numpy(), guide.numpy(), sigma), rel=1e-9)


def test_smoothness_zero_for_constant_illumination() -> None:
    illum = torch.full((1, 3, 8, 8), 0.3)
    assert sci_smoothness(illum, torch.rand(1, 3, 8, 8)).item() == 0.0


@pytest.mark.parametrize("sigma", [10.0, 0.2])
def test_lower_loss_matches_hand_computation(nets, sigma: float) -> None:
    upper, lower = nets
    upper.eval(), lower.eval()
    task = EnhanceTask(width=8, fidelity_weight=0.7, smooth_weight=1.3, smooth_sigma=sigma)
    batch = make_batch(b=1, h=4, w=5)
    with torch.no_grad():
        x = upper(batch["raw"])
        x01 = torch.clamp(x, 0, 1)
        illum = lower(x01)
        got = task.lower_loss(upper, lower, batch).item()
    x_np, l_np = x01.double().numpy(), illum.double().numpy()
    fidelity = float(np.mean((l_np - x_np) ** 2))
    smooth = smoothness_by_hand(l_np, x_np, sigma)
    assert got == pytest.approx(0.7 * fidelity + 1.3 * smooth, rel=1e-5)


def test_upper_and_warm_losses_match_hand_computation(nets) -> None:
    upper, lower = nets
    upper.eval(), lower.eval()
    batch = make_batch(b=2, h=4, w=4)
    with torch.no_grad():
        x = upper(batch["raw"])
        x01 = x.clamp(0, 1)
        y = (x01 / lower(x01)).clamp(0, 1)
        l1_y = (y - batch["rgb"]).abs().mean().item()
        l1_x = (x - batch["rgb"]).abs().mean().item()
        for weight in (0.0, 0.5):
            for detach in (True, False):
                task = EnhanceTask(width=8, warm_generator_weight=weight, warm_detach_lower=detach)
                assert task.upper_loss(upper, lower, batch).item() == pytest.approx(l1_y, rel=1e-6)
                lower_l = task.lower_loss(upper, lower, batch).item()
                warm = task.warm_loss(upper, lower, batch).item()
                assert warm == pytest.approx(lower_l + l1_y + weight * l1_x, rel=1e-6)


def test_warm_loss_detach_keeps_lower_loss_off_omega(nets) -> None:
    upper, lower = nets
    upper.eval(), lower.eval()  # no BatchNorm batch statistics: G's two calls agree
    batch = make_batch()
    params = list(upper.parameters())

    def omega_grad(value: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(value, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    task = EnhanceTask(width=8, warm_generator_weight=0.5, warm_detach_lower=True)
    supervised = task.upper_loss(upper, lower, batch) + 0.5 * torch.nn.functional.l1_loss(
        upper(batch["raw"]), batch["rgb"]
    )
    for got, want in zip(
        omega_grad(task.warm_loss(upper, lower, batch)), omega_grad(supervised), strict=True
    ):
        torch.testing.assert_close(got, want)
    # without detaching, L_G's own ω-gradient is part of the warm-start gradient
    plain = EnhanceTask(width=8, warm_generator_weight=0.0, warm_detach_lower=False)
    combined = plain.lower_loss(upper, lower, batch) + plain.upper_loss(upper, lower, batch)
    for got, want in zip(
        omega_grad(plain.warm_loss(upper, lower, batch)), omega_grad(combined), strict=True
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("loss", ["lower_loss", "upper_loss", "warm_loss"])
def test_losses_reach_both_omega_and_theta(nets, loss: str, residual: bool) -> None:
    upper, _ = nets
    task = EnhanceTask(width=8, input_residual=residual)
    lower = task.build_lower()
    value = getattr(task, loss)(upper, lower, make_batch())
    assert value.ndim == 0 and torch.isfinite(value)
    up_params, low_params = list(upper.parameters()), list(lower.parameters())
    grads = torch.autograd.grad(value, up_params + low_params, allow_unused=True)
    g_upper, g_lower = grads[: len(up_params)], grads[len(up_params) :]
    assert sum(float(g.abs().sum()) for g in g_upper if g is not None) > 0
    assert sum(float(g.abs().sum()) for g in g_lower if g is not None) > 0
    # the first conv of F and the output conv of G both receive gradient
    assert g_upper[0] is not None and g_upper[0].abs().sum() > 0
    out_idx = [id(p) for p in low_params].index(id(lower.out_conv[0].weight))
    assert g_lower[out_idx] is not None and g_lower[out_idx].abs().sum() > 0


def test_rgb_shape_mismatch_is_reported(nets) -> None:
    upper, lower = nets
    batch = make_batch()
    batch["rgb"] = batch["rgb"][..., :-2]
    with pytest.raises(ValueError, match="twice the packed RAW"):
        EnhanceTask(width=8).upper_loss(upper, lower, batch)


# ---- evaluation ---------------------------------------------------------------------------------


def test_evaluate_per_image_means_and_restores_modes(nets) -> None:
    upper, lower = nets
    task = EnhanceTask(width=8)
    batches = [make_batch(b=2, h=8, w=8, seed=1), make_batch(b=1, h=8, w=8, seed=2)]
    upper.train()
    lower.train()
    lower.mid_conv[1].eval()  # a mixed-mode submodule must be restored exactly
    bn = lower.mid_conv[1]
    running = bn.running_mean.clone()

    metrics = task.evaluate(upper, lower, batches)

    assert upper.training and lower.training and not lower.mid_conv[1].training
    torch.testing.assert_close(bn.running_mean, running)
    assert set(metrics) >= {"psnr", "ssim", "psnr_generator", "upper_loss", "lower_loss"}

    upper.eval(), lower.eval()
    per_image, per_image_gen, l1s, lowers, passthrough = [], [], [], [], []
    with torch.no_grad():
        for b in batches:
            x01 = upper(b["raw"]).clamp(0, 1)
            illumination = lower(x01)
            y = (x01 / illumination).clamp(0, 1)
            per_image += psnr_by_hand(y, b["rgb"])
            per_image_gen += psnr_by_hand(x01, b["rgb"])
            for image in illumination:  # values G leaves alone: L >= 0.99
                alone = [float(v) >= 0.99 for v in image.flatten()]
                passthrough.append(sum(alone) / len(alone))
            l1s += [(y - b["rgb"]).abs().mean().item()] * len(y)
            lowers += [task.lower_loss(upper, lower, b).item()] * len(y)
    assert metrics["psnr"] == pytest.approx(sum(per_image) / 3, rel=1e-5)
    assert metrics["psnr_generator"] == pytest.approx(sum(per_image_gen) / 3, rel=1e-5)
    # no input_gain: G's input is F's image itself
    assert metrics["psnr_g_input"] == pytest.approx(sum(per_image_gen) / 3, rel=1e-5)
    assert metrics["g_passthrough"] == pytest.approx(sum(passthrough) / 3, abs=1e-6)
    assert metrics["upper_loss"] == pytest.approx(sum(l1s) / 3, rel=1e-5)
    assert metrics["lower_loss"] == pytest.approx(sum(lowers) / 3, rel=1e-5)
    assert 0.0 < metrics["ssim"] <= 1.0


def test_a_g_saturated_at_one_is_reported_as_passing_everything_through(nets) -> None:
    """A G whose illumination is 1 everywhere is the identity: g_passthrough 1 and the chain's
    PSNR equals that of G's input as it is; for a gain model that input is not re-exposed."""
    upper, lower = nets
    task = EnhanceTask(width=8, input_gain=30.0)
    batch = make_batch(b=2, h=8, w=8, seed=3) | {"ratio": torch.tensor([100.0, 250.0])}
    working = task.evaluate(upper, lower, [batch])
    assert 0.0 <= working["g_passthrough"] < 1.0
    with torch.no_grad():
        lower.out_conv[0].bias.fill_(30.0)  # sigmoid -> 1: L = clamp(x + 1) = 1
        x01 = upper(task.upper_input(batch)).clamp(0, 1)
    saturated = task.evaluate(upper, lower, [batch])
    assert saturated["g_passthrough"] == 1.0
    assert saturated["psnr"] == pytest.approx(saturated["psnr_g_input"], abs=1e-9)
    by_hand = sum(psnr_by_hand(x01, batch["rgb"])) / 2
    assert saturated["psnr_g_input"] == pytest.approx(by_hand, rel=1e-5)
    assert saturated["psnr_generator"] != pytest.approx(by_hand, rel=1e-3)  # re-exposed


def test_evaluate_leaves_eval_modules_in_eval(nets) -> None:
    upper, lower = nets
    upper.eval(), lower.eval()
    EnhanceTask(width=8).evaluate(upper, lower, [make_batch(b=1)])
    assert not upper.training and not lower.training


def test_evaluate_rejects_empty(nets) -> None:
    with pytest.raises(ValueError, match="no batches"):
        EnhanceTask(width=8).evaluate(*nets, [])


# ---- registry -----------------------------------------------------------------------------------


def test_registry_builds_enhance() -> None:
    assert task_class("enhance") is EnhanceTask
    task = build_task("enhance", width=8, smooth_weight=0.5)
    assert isinstance(task, EnhanceTask) and task.smooth_weight == 0.5
    assert isinstance(task.build_lower(), IlluminationNet)
    assert task.build_lower().width == 8


def test_registry_unknown_task_lists_known() -> None:
    with pytest.raises(ValueError, match="known tasks: control, detect, enhance, segment"):
        build_task("deblur")


def test_registry_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="'smoth_weight'"):
        build_task("enhance", smoth_weight=1.0)


def test_invalid_option_values() -> None:
    with pytest.raises(ValueError):
        EnhanceTask(smooth_weight=-1.0)
    with pytest.raises(ValueError):
        EnhanceTask(min_illumination=2.0)


def test_input_gain_feeds_f_the_short_exposure_and_targets_it_re_exposed(nets) -> None:
    """With input_gain g, F sees raw / ratio · g and its warm-start target is the reference
    rendered at g / ratio of the exposure (by hand: sRGB -> linear -> · g/ratio -> sRGB)."""
    upper, lower = nets
    upper.eval(), lower.eval()
    batch = make_batch(b=2, h=4, w=4) | {"ratio": torch.tensor([100.0, 250.0])}
    task = EnhanceTask(width=8, input_gain=30.0, warm_generator_weight=0.5)
    scale = torch.tensor([0.3, 0.12]).view(2, 1, 1, 1)
    torch.testing.assert_close(task.upper_input(batch), batch["raw"] * scale)
    rgb = batch["rgb"].double().numpy()
    linear = (0.5 - np.sin(np.arcsin(1 - 2 * rgb) / 3)) ** 2.2 * scale.double().numpy()
    gamma = np.clip(linear, 0, 1) ** (1 / 2.2)
    expected = torch.from_numpy(3 * gamma**2 - 2 * gamma**3).float()
    target = task.generator_target(batch)
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-5)
    assert float(target.mean()) < 0.5 * float(batch["rgb"].mean())  # darker: G must brighten
    with torch.no_grad():
        x = upper(batch["raw"] * scale)
        x01 = x.clamp(0, 1)
        y = (x01 / lower(x01)).clamp(0, 1)
        l1_y = (y - batch["rgb"]).abs().mean().item()
        l1_x = (x - expected).abs().mean().item()
        warm = task.warm_loss(upper, lower, batch).item()
        lower_l = task.lower_loss(upper, lower, batch).item()
    assert task.upper_loss(upper, lower, batch).item() == pytest.approx(l1_y, rel=1e-6)
    assert warm == pytest.approx(lower_l + l1_y + 0.5 * l1_x, rel=1e-5)
    # l1_weight adds F's own L1 to its re-exposed target to L_F (and to the reported upper_loss)
    anchored = EnhanceTask(width=8, input_gain=30.0, l1_weight=2.0)
    want = l1_y + 2.0 * l1_x
    assert anchored.upper_loss(upper, lower, batch).item() == pytest.approx(want, rel=1e-5)
    big = make_batch(b=2, h=16, w=16, seed=1) | {"ratio": torch.tensor([100.0, 250.0])}
    with torch.no_grad():
        direct = anchored.upper_loss(upper, lower, big).item()
    assert anchored.evaluate(upper, lower, [big])["upper_loss"] == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="l1_weight=-1"):
        EnhanceTask(l1_weight=-1.0)
    # F alone is scored at the reference's exposure: re-exposed by ratio / g
    alone = task.generator_alone(expected.clamp(0, 1), batch)
    torch.testing.assert_close(alone, batch["rgb"], rtol=1e-3, atol=2e-3)
    with pytest.raises(ValueError, match="input_gain"):
        EnhanceTask(input_gain=0.0)
