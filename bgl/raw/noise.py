"""Physics-based sensor noise for synthetic low-light RAW, after Wei et al., "A Physics-based Noise
Formation Model for Extreme Low-light Raw Denoising" (CVPR 2020, "ELD").

Why: Brooks et al.'s heteroscedastic Gaussian (``bgl.raw.unprocess.add_noise``) matches a sensor's
first two moments at normal exposure, but in extreme low light a real short exposure is counted
electrons (discrete, skewed), carries banding that is shared along each sensor row, and is
digitised by an ADC whose step the exposure ratio later amplifies. This module models those four
terms on the *dark* signal (before the ratio amplifies it), in normalised units (1 = white level):

    x_noisy = Q_bits( K * Poisson(x / K) + N(0, sigma_read^2) + r_row )

- K: the system gain in normalised signal per electron, which is Brooks' shot level;
- sigma_read^2: Brooks' read level. bgl uses *Gaussian* read noise; ELD fits a Tukey-lambda
  distribution (heavier tails) per camera, which bgl leaves out;
- r_row ~ N(0, sigma_row^2), one draw per image and *mosaic* row, sigma_row = row_ratio *
  sigma_read (ELD's calibration, see ``ROW_READ_RATIO``);
- Q_bits: rounding to the ADC step 1/(2^bits - 1) of the white level.

Known gap: sigma_read follows Brooks' joint (shot, read) law, fitted at normal-exposure gains.
At bgl's default gains (K = 1e-5 to 3e-4) it gives sigma_read of about 0.1-4 DN at 14 bits, below
ELD's Sony A7S2 calibration at the same K (about 1.2-8 DN), so for about a quarter of the images
the 14-bit rounding (variance step^2/12) is larger than the read variance.

All randomness comes from one ``torch.Generator`` argument (``None``: torch's global RNG), drawn in
float64 on the generator's device and cast to the input's dtype and device, as in
:mod:`bgl.raw.unprocess`. Each image of a batch has its own parameters (shape (B,)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bgl.raw.bayer import channel_offsets

__all__ = [
    "DEFAULT_BITS",
    "NOISE_MODELS",
    "ROW_READ_RATIO",
    "PhysicsLevels",
    "add_physics_noise",
    "check_noise_model",
    "physics_levels",
    "quantize",
]

#: Noise models of :func:`bgl.raw.unprocess.synthesize_low_light` (and ``data.noise``):
#: "gaussian" is Brooks et al.'s heteroscedastic Gaussian, "physics" this module's model.
NOISE_MODELS: tuple[str, ...] = ("gaussian", "physics")

#: ADC bits of the simulated sensor. SID's camera (Sony A7S2) and every camera ELD calibrated
#: record 14-bit RAW (SID: white level 16383, black level 512; ELD's noise.py normalises by
#: 16383 - 800), so 14 bits is the sensor bgl imitates. 12 bits would suit phone sensors.
DEFAULT_BITS = 14

# sigma_row / sigma_read. Source: ELD's released calibration, camera_params/release/*_params.npy
# in github.com/Vandermode/ELD ("Profile-1": log sigma = slope * log K + bias + N(0, sigma), per
# noise term), read here as unpacked to JSON in github.com/DanielNobbe/rawnoise (eld-params/):
#   Sony A7S2     R_scale 0.5275 log K - 0.5917, g_scale 0.5407 log K + 1.2182
#                 -> sigma_R / sigma_g = exp(-1.810 - 0.013 log K) = 0.16-0.17 over its K range
#   Nikon D850    exp(-2.597 - 0.115 log K) = 0.05-0.08;  Canon 70D exp(-2.935 + 0.161 log K)
#   = 0.05-0.09;  Canon 700D exp(-2.856 - 0.030 log K) = 0.05-0.06  (each over the camera's
#   calibrated Kmin-Kmax, in DN/e-).
# g_scale is ELD's Gaussian read-noise scale, the counterpart of bgl's Gaussian read noise (their
# Tukey-lambda scale G_scale gives larger ratios, ~0.3 for the Sony). bgl takes the Sony A7S2,
# SID's camera: 0.16; the other cameras show 0.05-0.09, so this is the high end of ELD's sensors.
ROW_READ_RATIO = 0.16


class PhysicsLevels(NamedTuple):
    """Per-image parameters of the physics model, each (B,) (or a scalar for the whole batch)."""

    gain: torch.Tensor | float  # K: normalised signal per electron (Brooks' shot level)
    read_std: torch.Tensor | float  # sigma_read: sqrt of Brooks' read level
    row_std: torch.Tensor | float  # sigma_row: std of the per-mosaic-row offset


def check_noise_model(name: str) -> str:
    """``name`` if it is one of ``NOISE_MODELS``; a ValueError naming the choices otherwise."""
    if name not in NOISE_MODELS:
        raise ValueError(f"noise_model must be one of {', '.join(NOISE_MODELS)}; got {name!r}")
    return name


def physics_levels(
    shot: torch.Tensor | float,
    read: torch.Tensor | float,
    *,
    row_ratio: float = ROW_READ_RATIO,
) -> PhysicsLevels:
    """Brooks' (shot, read) levels as physics parameters: K = shot, sigma_read = sqrt(read),
    sigma_row = row_ratio * sigma_read.

    Why: both models then share one draw of the camera, the ratio and the noise levels
    (``bgl.raw.unprocess.random_noise_levels``), so per seed they differ only in the noise law
    and their mean and per-pixel variance agree (up to the row and quantisation terms).
    """
    if not (isinstance(row_ratio, (int, float)) and math.isfinite(row_ratio) and row_ratio >= 0):
        raise ValueError(f"row_ratio must be a finite number >= 0; got {row_ratio!r}")
    shot_t = torch.as_tensor(shot)
    read_t = torch.as_tensor(read)
    if not bool((shot_t > 0).all()):
        raise ValueError("shot (the gain K) must be positive")
    if not bool((read_t >= 0).all()):
        raise ValueError("read (the read-noise variance) must be non-negative")
    read_std = read_t.sqrt()
    return PhysicsLevels(gain=shot_t, read_std=read_std, row_std=row_ratio * read_std)


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _per_image(
    value: torch.Tensor | float, batch: int, device: torch.device, name: str
) -> torch.Tensor:
    """A float or a (B,) tensor as float64 (B,1,1,1) on ``device``."""
    value = torch.as_tensor(value, dtype=torch.float64).to(device)
    if value.dim() == 0:
        value = value.expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must be a scalar or shaped ({batch},); got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite")
    return value.view(batch, 1, 1, 1)


def _check_bits(bits: int | None) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32] or None; got {bits!r}")


def quantize(x: torch.Tensor, bits: int | None = DEFAULT_BITS) -> torch.Tensor:
    """Round to the ADC grid: multiples of 1/(2^bits - 1) of the white level (``None``: as is).

    No clipping: below 0 a real sensor still reads down to its black level offset, and the
    white clip belongs to the caller (``synthesize_low_light`` clips after amplification).
    """
    _check_bits(bits)
    if bits is None:
        return x
    levels = float(2**bits - 1)
    return torch.round(x * levels) / levels


def add_physics_noise(
    dark: torch.Tensor,
    levels: PhysicsLevels,
    generator: torch.Generator | None = None,
    *,
    bits: int | None = DEFAULT_BITS,
    pattern: str = "RGGB",
) -> torch.Tensor:
    """Noisy packed RAW (B,4,h,w) from the clean dark signal ``dark`` (normalised, >= 0).

    Poisson shot noise K * Poisson(dark / K); Gaussian read noise; one Gaussian offset per image
    and mosaic row (the packed R and G share a mosaic row, B and G2 the other one of each 2x2
    tile; ``pattern`` says which is on top, as in :func:`bgl.raw.bayer.pack`); then rounding to
    ``bits`` (``None``: no quantisation). Set ``read_std``/``row_std`` to 0 to leave a term out.
    Negative values (read/row noise at black) are kept, as a sensor's black-level margin does.
    """
    if dark.dim() != 4 or dark.shape[1] != 4:
        raise ValueError(f"dark must be packed RAW (B,4,h,w); got shape {tuple(dark.shape)}")
    if not dark.is_floating_point():
        raise ValueError(f"dark must be a floating-point tensor; got {dark.dtype}")
    if not isinstance(levels, PhysicsLevels):
        raise ValueError(
            f"levels must be a PhysicsLevels (see physics_levels); got {type(levels).__name__}"
        )
    _check_bits(bits)
    rows = [row for row, _ in channel_offsets(pattern)]  # mosaic row (0/1) of R, G, B, G2
    batch, _, height, width = dark.shape
    device = _device_of(generator)
    gain = _per_image(levels.gain, batch, device, "gain")
    read_std = _per_image(levels.read_std, batch, device, "read_std")
    row_std = _per_image(levels.row_std, batch, device, "row_std")
    if not bool((gain > 0).all()):
        raise ValueError("gain (K) must be positive")
    if not bool((read_std >= 0).all() and (row_std >= 0).all()):
        raise ValueError("read_std and row_std must be non-negative")

    signal = dark.detach().to(device=device, dtype=torch.float64).clamp_min(0.0)
    electrons = torch.poisson(signal / gain, generator=generator)
    noisy = gain * electrons
    read = torch.randn(noisy.shape, generator=generator, device=device, dtype=torch.float64)
    noisy = noisy + read_std * read
    # One offset per mosaic row: mosaic row 2i + p is packed row i of the channels on parity p.
    offsets = torch.randn(
        (batch, 2 * height), generator=generator, device=device, dtype=torch.float64
    )
    offsets = offsets.view(batch, height, 2)
    per_channel = offsets[:, :, rows].permute(0, 2, 1).unsqueeze(-1)  # (B,4,h,1)
    noisy = noisy + row_std * per_channel
    noisy = quantize(noisy, bits)
    return noisy.to(dtype=dark.dtype, device=dark.device)
