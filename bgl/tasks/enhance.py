"""Low-light enhancement as the downstream task: G is a Retinex illumination net (SCI-style).

Bilevel problem (BGL, Liu et al. 2023, enhancement setting):

    x = F(raw; ω)                       generative block (SID U-Net), unclamped
    L = G(x; θ)                         illumination, in [min_illumination, 1]
    y = clamp(x / L, 0, 1)              enhanced image (Retinex reflectance)

    L_G(ω, θ) = fidelity_weight * MSE(L, clamp(x, 0, 1)) + smooth_weight * S(L; x)    (lower)
    L_F(ω, θ) = L1(y, rgb)                                                              (upper)

The lower loss is SCI's self-supervised illumination loss (Ma et al., CVPR 2022), so G learns
without ground truth while F is steered by the supervised upper loss through the hypergradient.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bgl.metrics.image import psnr, ssim
from bgl.metrics.registry import get_metric, validate_metrics
from bgl.models.enhance import IlluminationNet
from bgl.raw.bayer import packed_to_rgb
from bgl.raw.tone import reexpose
from bgl.tasks.base import Batch, Task, eval_mode

log = logging.getLogger(__name__)

#: BT.601 RGB -> YCbCr (rows: Y, Cb, Cr) for inputs in [0, 1]; the offsets cancel in differences.
_YCBCR = torch.tensor(
    [
        [0.257, 0.504, 0.098],
        [-0.148, -0.291, 0.439],
        [0.439, -0.368, -0.071],
    ],
    dtype=torch.float64,
)

#: Neighbour offsets (dy, dx) of SCI's smoothness term: the 12 distinct offsets of a 5x5 window
#: (each unordered pixel pair once). SCI lists every pair in both directions (24 terms), which
#: doubles the value; `sci_smoothness` keeps that factor 2 so `smooth_weight` means what it does
#: in SCI.
SCI_OFFSETS: tuple[tuple[int, int], ...] = (
    (1, 0), (0, 1), (1, 1), (1, -1),
    (2, 0), (0, 2), (2, 1), (2, -1), (1, 2), (1, -2), (2, 2), (2, -2),
)  # fmt: skip


#: Illumination at or above this level leaves a pixel's channel as G received it.
PASSTHROUGH_LEVEL = 0.99


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """BT.601 YCbCr of an RGB batch (B, 3, H, W), without the constant offsets."""
    return torch.einsum("oc,bchw->bohw", _YCBCR.to(dtype=x.dtype, device=x.device), x)


def _pair(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned views (a, b) of t with a = t[p + (dy, dx)] and b = t[p] over all valid pixels p."""
    h, w = t.shape[-2:]
    if dx >= 0:
        return t[..., dy:, dx:], t[..., : h - dy, : w - dx]
    return t[..., dy:, : w + dx], t[..., : h - dy, -dx:]


def sci_smoothness(
    illumination: torch.Tensor, guide: torch.Tensor, sigma: float = 10.0
) -> torch.Tensor:
    """SCI's edge-aware smoothness of the illumination, guided by the image it was estimated from.

    S(L; x) = 2 * sum_{(dy,dx) in SCI_OFFSETS} mean_{i,j} w_ij * ||L_{p+d} - L_p||_1
    with w_ij = exp(-||YCbCr(x)_{p+d} - YCbCr(x)_p||_2^2 / (2 sigma^2)), the L1 norm over the
    3 channels and the mean over the valid (B, H - dy, W - |dx|) positions of each offset.

    Differences from SCI's code: the RGB->YCbCr conversion is applied per pixel over the channel
    axis (SCI reshapes NCHW to (-1, 3), mixing pixels) with the standard BT.601 luma row. With
    sigma = 10 and images in [0, 1] the weights are within 2% of 1, so, as in SCI, S is in effect
    a 5x5-neighbourhood L1 total variation of L; a smaller sigma makes it edge-aware.

    The edge weights are constants (computed from a detached guide), as in SCI where the guide is
    the fixed input image. Here the guide x = F(z) depends on ω; L_G still reaches ω through L =
    G(x) and the fidelity term, and the backward pass keeps no graph for 12 weight maps (about
    half of L_G's activation memory at 256 px).
    """
    ycc = rgb_to_ycbcr(guide.detach())
    scale = -1.0 / (2.0 * sigma * sigma)
    total = illumination.new_zeros(())
    for dy, dx in SCI_OFFSETS:
        ya, yb = _pair(ycc, dy, dx)
        la, lb = _pair(illumination, dy, dx)
        weight = torch.exp((ya - yb).pow(2).sum(dim=1, keepdim=True) * scale)
        total = total + (weight * (la - lb).abs().sum(dim=1, keepdim=True)).mean()
    return 2.0 * total


class EnhanceTask(Task):
    """Enhancement: G = IlluminationNet, L_G = SCI's loss on x = F(raw), L_F = L1(y, rgb).

    Default weights follow SCI's released training code, whose loss is
    `1.5 * fidelity + 1.0 * smoothness` (sigma 10). `input_residual` selects G's SCI-style
    L = clamp(x + s) (default) or the plain L = clamp(s); `headroom_residual` the never-saturating
    L = x + (1 - x) s. With `smooth_sigma` well below 1 the smoothness is edge-aware; at SCI's 10
    it is a plain total variation that a constant L = 1 zeroes, so on a bright, textured x the
    identity minimises L_G (README: "What G does"). See `IlluminationNet`.

    `metrics` names the image-quality metrics `evaluate` reports for the enhanced image (see
    `bgl.metrics.registry.METRICS`: psnr, ssim, lpips, vif, fsim, brisque, niqe, loe); psnr and
    ssim are always reported. `metric_options` passes keyword options per metric, e.g.
    `{"lpips": {"alexnet_weights": "/path/alexnet-owt-7be5be79.pth"}}`.
    """

    name = "enhance"
    primary_metric = "psnr"
    mode = "max"

    def __init__(
        self,
        width: int = 16,
        min_illumination: float = 1e-3,
        smooth_weight: float = 1.0,
        fidelity_weight: float = 1.5,
        smooth_sigma: float = 10.0,
        input_residual: bool = True,
        headroom_residual: bool = False,
        warm_generator_weight: float = 1.0,
        warm_detach_lower: bool = True,
        input_gain: float | None = None,
        l1_weight: float = 0.0,
        metrics: Sequence[str] = ("psnr", "ssim"),
        metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if min(smooth_weight, fidelity_weight, warm_generator_weight, l1_weight) < 0:
            raise ValueError(
                f"loss weights must be >= 0, got smooth_weight={smooth_weight}, "
                f"fidelity_weight={fidelity_weight}, warm_generator_weight={warm_generator_weight}"
                f", l1_weight={l1_weight}"
            )
        if smooth_sigma <= 0:
            raise ValueError(f"smooth_sigma must be > 0, got {smooth_sigma}")
        self.width = width
        self.min_illumination = min_illumination
        self.smooth_weight = float(smooth_weight)
        self.fidelity_weight = float(fidelity_weight)
        self.smooth_sigma = float(smooth_sigma)
        self.input_residual = bool(input_residual)
        self.headroom_residual = bool(headroom_residual)
        self.warm_generator_weight = float(warm_generator_weight)
        self.l1_weight = float(l1_weight)
        self.warm_detach_lower = bool(warm_detach_lower)
        if input_gain is not None and not input_gain > 0:
            raise ValueError(f"input_gain must be > 0 (or null), got {input_gain}")
        self.input_gain = None if input_gain is None else float(input_gain)
        if isinstance(metrics, str):
            raise ValueError(f"metrics must be a list of metric names, got the string {metrics!r}")
        self.metrics = validate_metrics(tuple(metrics), metric_options)
        self.metric_options = {k: dict(v) for k, v in (metric_options or {}).items()}
        self.build_lower()  # validate the G options now, not mid-study

    def build_lower(self) -> nn.Module:
        """A fresh illumination net G(x; θ)."""
        return IlluminationNet(
            width=self.width,
            min_illumination=self.min_illumination,
            input_residual=self.input_residual,
            headroom_residual=self.headroom_residual,
        )

    # -- shared pieces ---------------------------------------------------------------------------

    def upper_input(self, batch: Batch) -> torch.Tensor:
        """F's input: the exposure-amplified RAW, or with `input_gain` g the short exposure at
        gain g (raw / ratio · g), so F develops a still-dark image and G has to brighten it."""
        raw = batch["raw"]
        if self.input_gain is None:
            return raw
        ratio = batch["ratio"].to(raw.dtype).reshape(-1, 1, 1, 1)
        return raw * (self.input_gain / ratio)

    def outputs(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, x01, L, y): F's raw output, its [0, 1] clamp, the illumination, the enhanced image.

        Only `lower.__call__` is used (not `lower.enhance`), so G may be wrapped (DDP) or called
        through parameter substitution by a solver.
        """
        x = upper(self.upper_input(batch))
        rgb = batch.get("rgb")
        if rgb is not None and rgb.shape != x.shape:
            raise ValueError(
                f"F(raw) has shape {tuple(x.shape)} but batch['rgb'] has {tuple(rgb.shape)}; "
                "expected rgb at twice the packed RAW resolution"
            )
        x01 = x.clamp(0.0, 1.0)
        illumination = lower(x01)
        y = (x01 / illumination).clamp(0.0, 1.0)
        return x, x01, illumination, y

    def lower_terms(
        self, x01: torch.Tensor, illumination: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fidelity, smoothness), unweighted: MSE(L, x) and SCI's smoothness S(L; x)."""
        fidelity = F.mse_loss(illumination, x01)
        if torch.is_grad_enabled() and illumination.requires_grad:
            # recomputed in backward: keeps 2 maps instead of ~60 full-resolution intermediates
            smooth = checkpoint(
                sci_smoothness, illumination, x01, self.smooth_sigma, use_reentrant=False
            )
        else:
            smooth = sci_smoothness(illumination, x01, sigma=self.smooth_sigma)
        return fidelity, smooth

    def _lower_from(self, x01: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        fidelity, smooth = self.lower_terms(x01, illumination)
        return self.fidelity_weight * fidelity + self.smooth_weight * smooth

    # -- the bilevel losses ----------------------------------------------------------------------

    def lower_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_G(ω, θ): SCI's self-supervised illumination loss; depends on ω through x = F(raw)."""
        return self.lower_criterion(self.lower_prediction(upper, lower, batch), batch)

    def lower_prediction(
        self, upper: nn.Module, lower: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, ...]:
        """What L_G's criterion reads: (x01, L), G's input and its illumination map."""
        _, x01, illumination, _ = self.outputs(upper, lower, batch)
        return x01, illumination

    def lower_criterion(self, prediction: tuple[torch.Tensor, ...], batch: Batch) -> torch.Tensor:
        """L_G from `lower_prediction` (Gauss-Newton curvature needs the split)."""
        del batch
        x01, illumination = prediction
        return self._lower_from(x01, illumination)

    def upper_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """L_F(ω, θ): L1 between the enhanced image y = clamp(x / L, 0, 1) and the reference,
        plus `l1_weight` times L1(F(raw), `generator_target`), as the detection task's option.

        Why the second term: through y alone ω learns whatever x G turns into the reference, so
        F stops being a developer of its own (the quickstart run: F alone, re-exposed, falls from
        16.6 dB at the classical start to 7.0 dB while F + G rises to 16.5 dB). The term pulls F
        back towards its own target while the bilevel phase adapts it to G, at a cost to F + G
        (README "Other cameras").
        """
        x, _, _, y = self.outputs(upper, lower, batch)
        loss = F.l1_loss(y, batch["rgb"])
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(x, self.generator_target(batch))
        return loss

    def warm_loss(self, upper: nn.Module, lower: nn.Module, batch: Batch) -> torch.Tensor:
        """Warm-start objective, optimised jointly over ω and θ on the training batch.

            L_G(x, θ) + L1(y, rgb) + warm_generator_weight * L1(F(raw), rgb)

        Why not L_G alone: the self-supervised L_G is minimised by a trivially smooth x (a
        constant image has a perfectly smooth illumination equal to itself), so it would collapse
        F. Why the two extra choices (both on by default, both switchable):

        - `warm_detach_lower`: L_G is evaluated on x.detach(), so only θ learns from it and ω is
          trained by the supervised terms alone. Through ω, SCI's smoothness term (a 24-neighbour
          L1 total variation: 1.3 for a 64 px colour ramp, 4.3 for a 32 px texture) outweighs
          an L1 of 0.05-0.4 and still flattens F; in a 400-step toy warm start the plain
          L_G + L1(y, rgb) reached 9.8 dB against 25.3 dB with both options on. G is then run
          twice (once on the detached x), which updates BatchNorm running statistics twice.
        - `warm_generator_weight`: SID's own L1 on the unclamped F(raw). Every later loss sees F
          only through clamp(x, 0, 1), so an output channel that starts out negative everywhere
          never gets gradient back from them; this term revives it.

        With `warm_detach_lower=False, warm_generator_weight=0` this is L_G + L1(y, rgb) exactly.
        """
        x, x01, illumination, y = self.outputs(upper, lower, batch)
        if self.warm_detach_lower:
            x_lower = x01.detach()
            lower_value = self._lower_from(x_lower, lower(x_lower))
        else:
            lower_value = self._lower_from(x01, illumination)
        loss = lower_value + F.l1_loss(y, batch["rgb"])
        if self.warm_generator_weight:
            loss = loss + self.warm_generator_weight * F.l1_loss(x, self.generator_target(batch))
        return loss

    def generator_alone(self, x01: torch.Tensor, batch: Batch) -> torch.Tensor:
        """F's image at the reference's exposure: x itself, or with `input_gain` g x re-exposed
        by ratio / g (undoing `generator_target`'s darkening), as `bgl develop` shows F alone."""
        if self.input_gain is None:
            return x01
        return reexpose(x01, batch["ratio"].to(x01.dtype) / self.input_gain)

    def generator_target(self, batch: Batch) -> torch.Tensor:
        """What F alone should render in the warm start: the reference, or with `input_gain` g
        the reference re-exposed to the short exposure at gain g (g / ratio of it)."""
        rgb = batch["rgb"]
        if self.input_gain is None:
            return rgb
        return reexpose(rgb, self.input_gain / batch["ratio"].to(rgb.dtype))

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(
        self, upper: nn.Module, lower: nn.Module, batches: Iterable[Batch]
    ) -> dict[str, float]:
        """Per-image means over the set: psnr, ssim (of y), psnr_generator, upper/lower losses.

        PSNR and SSIM are computed per image and averaged over images (not over a concatenated
        set); `psnr_generator` scores F alone: clamp(F(raw), 0, 1), re-exposed by ratio / g for a
        block with `input_gain` g (`generator_alone`), so it is what F renders without G. The
        losses are batch means weighted by batch size. Both modules run in eval mode (BatchNorm
        running statistics) under no_grad; their previous train/eval flags are restored
        afterwards. `psnr_input` is the naive baseline: the amplified RAW shown directly (see
        `amplified_input`).

        What G itself does: `psnr_g_input` scores G's input clamp(F(raw), 0, 1) as it is (for a
        gain model F may stop rendering a dark image in the bilevel phase, and re-exposing it
        then says little), so psnr - psnr_g_input is G's own gain; `g_passthrough` is the
        fraction of pixel values (pixels x channels) whose illumination is >= 0.99, where y = x and
        G does nothing (1.0: G has become the identity, as SCI's loss allows with L = 1; 2/3: G
        works on one channel only).

        The further `metrics` are per-image means of y as well, keyed by name; LOE compares y
        with that amplified input (the low-light image it was enhanced from). An image a metric
        leaves undefined (NaN, e.g. BRISQUE of a perfectly flat image) is left out of that
        metric's mean, with a warning.
        """
        keys = (
            "psnr", "ssim", "psnr_generator", "psnr_input", "psnr_g_input", "g_passthrough",
            "upper_loss", "lower_loss",
        )  # fmt: skip
        extra = [get_metric(m) for m in self.metrics if m not in keys]
        sums = dict.fromkeys(keys, 0.0)
        extra_sums = {spec.name: 0.0 for spec in extra}
        extra_counts = {spec.name: 0 for spec in extra}
        count = 0
        with torch.no_grad(), eval_mode(upper, lower):
            for batch in batches:
                x, x01, illumination, y = self.outputs(upper, lower, batch)
                rgb = batch["rgb"]
                n = rgb.shape[0]
                sums["psnr"] += psnr(y, rgb).sum().item()
                sums["ssim"] += ssim(y, rgb).sum().item()
                sums["psnr_generator"] += psnr(self.generator_alone(x01, batch), rgb).sum().item()
                sums["psnr_input"] += psnr(amplified_input(batch["raw"]), rgb).sum().item()
                sums["psnr_g_input"] += psnr(x01, rgb).sum().item()
                passthrough = (illumination >= PASSTHROUGH_LEVEL).flatten(1)
                sums["g_passthrough"] += passthrough.float().mean(dim=1).sum().item()
                upper_value = F.l1_loss(y, rgb)
                if self.l1_weight:
                    upper_value += self.l1_weight * F.l1_loss(x, self.generator_target(batch))
                sums["upper_loss"] += upper_value.item() * n
                sums["lower_loss"] += self._lower_from(x01, illumination).item() * n
                count += n
                inputs = amplified_input(batch["raw"]) if extra else None
                for spec in extra:
                    values = spec(y, rgb, inputs, **self.metric_options.get(spec.name, {}))
                    values = values.detach().double().cpu()
                    defined = ~torch.isnan(values)
                    extra_sums[spec.name] += values[defined].sum().item()
                    extra_counts[spec.name] += int(defined.sum())
        if count == 0:
            raise ValueError("evaluate() got no batches")
        out = {key: value / count for key, value in sums.items()}
        for name, total in extra_sums.items():
            defined = extra_counts[name]
            if defined < count:
                undefined = count - defined
                log.warning("%s is undefined (NaN) for %d of %d images", name, undefined, count)
            out[name] = total / defined if defined else math.nan
        return out


def amplified_input(raw: torch.Tensor) -> torch.Tensor:
    """The "amplify the input" baseline: exposure-amplified RAW, nearest demosaic, gamma 1/2.2."""
    return packed_to_rgb(raw).clamp(0.0, 1.0) ** (1 / 2.2)
