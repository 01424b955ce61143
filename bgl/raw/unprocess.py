"""RGB -> synthetic RAW, after Brooks et al., "Unprocessing Images for Learned Raw Denoising"
(CVPR 2019), in batched torch.

Why: the embedded dataset and the tests need low-light RAW inputs with a known clean reference,
without downloading SID. Unprocessing inverts a simple camera pipeline (tone curve, gamma, colour
correction, white balance, mosaic) with random per-image camera parameters; the low-light step
then darkens the linear RAW, adds heteroscedastic shot/read noise and amplifies it back by the
exposure ratio, which is what SID loaders hand to the network.

All randomness comes from one ``torch.Generator`` argument (``None`` uses torch's global RNG).
Random numbers are drawn in float64 on the generator's device and then cast to the input's dtype
and device, so results do not depend on where the images live. Each image of a batch draws its own
parameters.
"""

from __future__ import annotations

import math

import torch

from bgl.raw.bayer import mosaic_rgb
from bgl.raw.noise import add_physics_noise, check_noise_model, physics_levels

__all__ = [
    "BROOKS_SHOT_RANGE",
    "DEFAULT_RATIO_RANGE",
    "DEFAULT_SHOT_RANGE",
    "RGB2XYZ",
    "XYZ2CAMS",
    "add_noise",
    "apply_ccm",
    "gamma_expansion",
    "inverse_smoothstep",
    "random_ccm",
    "random_gains",
    "rgb2cam_from_xyz2cam",
    "random_noise_levels",
    "safe_invert_gains",
    "synthesize_low_light",
    "unprocess",
]

# Source: Brooks et al., CVPR 2019, and their reference implementation
# (google-research/unprocessing, unprocess.py: random_ccm). Four XYZ -> camera colour matrices of
# real cameras; a random convex combination of them is a plausible unseen camera.
XYZ2CAMS: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((1.0234, -0.2969, -0.2266), (-0.5625, 1.6328, -0.0469), (-0.0703, 0.2188, 0.6406)),
    ((0.4913, -0.0541, -0.0202), (-0.6130, 1.3513, 0.2906), (-0.1564, 0.2151, 0.7183)),
    ((0.8380, -0.2630, -0.0639), (-0.2887, 1.0725, 0.2496), (-0.0627, 0.1427, 0.5438)),
    ((0.6596, -0.2079, -0.0562), (-0.4782, 1.3016, 0.1933), (-0.0970, 0.1581, 0.5181)),
)

# Linear sRGB (D65) -> CIE XYZ, as used by the same reference implementation.
RGB2XYZ: tuple[tuple[float, float, float], ...] = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)

#: Brooks' shot-noise range (noise of a normally exposed capture), kept for reference and reuse.
BROOKS_SHOT_RANGE: tuple[float, float] = (1e-4, 0.012)

# Defaults of synthesize_low_light. SID's exposure ratios (x100-x300); the noise is added to the
# *dark* signal and amplified with it, so the shot range is lower than Brooks' (which describes a
# normally exposed capture). Measured on 256 scenes of 64x64 (render_scenes, generator seed 0;
# unprocessing/noise generator seed 1), PSNR in dB (mean [min, max] over images) of the naive
# baseline packed_to_rgb(raw).clamp(0, 1) ** (1/2.2):
#                                                against the sRGB ref   against its noise-free self
#   no noise (unprocessing alone: the colour gap)     14.1 [10.0, 18.5]        -
#   defaults: ratio 100-300, shot 1e-5-3e-4           13.5 [ 9.0, 18.4]   26.3 [15.7, 36.1]
#   ratio 100-300, Brooks' shot 1e-4-0.012             9.8 [ 5.5, 17.3]   13.5 [ 6.3, 24.9]
#   ratio 1 (no darkening), Brooks' shot range        14.0 [ 9.9, 18.4]   36.6 [23.0, 46.7]
#   noise_model="physics" (bgl.raw.noise: Poisson shot with gain K = shot, Gaussian read, row
#   noise 0.16 sigma_read, 14-bit ADC), same draws:
#   defaults: ratio 100-300, K 1e-5-3e-4              13.5 [ 9.0, 18.4]   26.2 [15.7, 35.9]
#     the same, 12-bit ADC                            13.3 [ 8.8, 18.3]   24.2 [15.0, 34.5]
#   ratio 100-300, Brooks' K 1e-4-0.012                9.7 [ 5.6, 17.6]   13.4 [ 6.3, 25.0]
#   ratio 1 (no darkening), Brooks' K range           14.0 [ 9.9, 18.5]   36.6 [23.4, 46.7]
# The defaults are visibly noisy (mild to heavy across images) with the scene still legible;
# Brooks' range under SID ratios buries most scenes in noise (both models: 62% of images under
# 15 dB and 86-88% under 20 dB against their noise-free self; at K = 0.012 and ratio 300 a white
# pixel collects 0.28 photoelectrons). The physics model therefore keeps the Gaussian default
# range as its gain range, which is also a measured sensor's: ELD's Sony A7S2 (SID's camera)
# calibration spans K = 0.094-6.0 DN/e- at 14 bits (white ~15600 DN), i.e. 6e-6 to 3.9e-4.
DEFAULT_RATIO_RANGE: tuple[float, float] = (100.0, 300.0)
DEFAULT_SHOT_RANGE: tuple[float, float] = (1e-5, 3e-4)


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=_device_of(generator), dtype=torch.float64)
    return low + (high - low) * u


def _normal(
    shape: tuple[int, ...], mean: float, std: float, generator: torch.Generator | None
) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=_device_of(generator), dtype=torch.float64)
    return mean + std * z


def _per_image(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor as something that broadcasts over (B,C,H,W) like ``like``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        return value
    if value.dim() != 1 or value.shape[0] != like.shape[0]:
        raise ValueError(
            f"per-image parameters must be scalars or shaped ({like.shape[0]},); "
            f"got {tuple(value.shape)}"
        )
    return value.view(-1, *([1] * (like.dim() - 1)))


def _check_range(name: str, value: tuple[float, float], minimum: float) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers; got {value!r}") from None
    if not (minimum <= low <= high) or not math.isfinite(high):
        raise ValueError(f"{name} must satisfy {minimum} <= low <= high < inf; got {value!r}")
    return low, high


def random_ccm(
    batch: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random rgb -> camera matrices (B,3,3): a convex mix of ``XYZ2CAMS`` times ``RGB2XYZ``.

    Rows are normalised to sum to 1 so that grey stays grey before white balance.
    """
    weights = _uniform((batch, len(XYZ2CAMS)), 1e-8, 1.0, generator)
    weights = weights / weights.sum(dim=1, keepdim=True)
    xyz2cams = torch.tensor(XYZ2CAMS, dtype=torch.float64, device=weights.device)
    xyz2cam = torch.einsum("bk,kij->bij", weights, xyz2cams)
    rgb2cam = rgb2cam_from_xyz2cam(xyz2cam)
    return rgb2cam.to(dtype=dtype, device=device if device is not None else weights.device)


def rgb2cam_from_xyz2cam(xyz2cam: torch.Tensor) -> torch.Tensor:
    """linear sRGB -> camera matrices (...,3,3) from XYZ -> camera ones (a camera's ColorMatrix).

    ``xyz2cam @ RGB2XYZ`` with each row normalised to sum to 1, so sRGB grey maps to equal camera
    values (white balance is a separate step). The one place of this rule: Brooks' random cameras
    and the colour matrices of real files (:func:`bgl.raw.colour.camera_matrices`; LibRaw's
    ``cam_xyz_coeff`` normalises the same way) must agree on it.
    """
    rgb2xyz = torch.tensor(RGB2XYZ, dtype=xyz2cam.dtype, device=xyz2cam.device)
    rgb2cam = xyz2cam @ rgb2xyz
    return rgb2cam / rgb2cam.sum(dim=-1, keepdim=True)


def random_gains(
    batch: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (rgb_gain, red_gain, blue_gain), each (B,), with Brooks' distributions.

    rgb gain is 1/N(0.8, 0.1) (the normal draw is floored at 0.4, i.e. 4 sigma, so the gain stays
    finite), red gain U(1.9, 2.4), blue gain U(1.5, 1.9).
    """
    rgb_gain = 1.0 / _normal((batch,), 0.8, 0.1, generator).clamp_min(0.4)
    red_gain = _uniform((batch,), 1.9, 2.4, generator)
    blue_gain = _uniform((batch,), 1.5, 1.9, generator)
    target = device if device is not None else rgb_gain.device
    return tuple(g.to(dtype=dtype, device=target) for g in (rgb_gain, red_gain, blue_gain))


def inverse_smoothstep(image: torch.Tensor) -> torch.Tensor:
    """Undo the global tone curve 3x^2 - 2x^3 (input clipped to [0,1] to stay in asin's domain)."""
    image = image.clamp(0.0, 1.0)
    return 0.5 - torch.sin(torch.asin(1.0 - 2.0 * image) / 3.0)


def gamma_expansion(image: torch.Tensor) -> torch.Tensor:
    """Undo gamma compression (x ** (1/2.2)); the floor keeps the gradient finite at 0."""
    return image.clamp_min(1e-8) ** 2.2


def apply_ccm(image: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
    """Apply a (3,3) or per-image (B,3,3) colour matrix to (B,3,H,W) images."""
    ccm = ccm.to(dtype=image.dtype, device=image.device)
    if ccm.dim() == 2:
        return torch.einsum("ij,bjhw->bihw", ccm, image)
    return torch.einsum("bij,bjhw->bihw", ccm, image)


def safe_invert_gains(
    image: torch.Tensor,
    rgb_gain: torch.Tensor | float,
    red_gain: torch.Tensor | float,
    blue_gain: torch.Tensor | float,
) -> torch.Tensor:
    """Inverse white balance and brightness gain that does not dim saturated highlights.

    Near white (mean above 0.9) the inverse gains are blended quadratically towards 1, so a
    clipped white pixel stays white instead of becoming a grey that no forward gain can restore.
    """
    rgb = _per_image(rgb_gain, image)
    red = _per_image(red_gain, image)
    blue = _per_image(blue_gain, image)
    one = torch.ones_like(red)
    gains = (
        torch.cat([t.expand(image.shape[0], 1, 1, 1) for t in (1.0 / red, one, 1.0 / blue)], dim=1)
        / rgb
    )
    gray = image.mean(dim=1, keepdim=True)
    inflection = 0.9
    mask = ((gray - inflection).clamp_min(0.0) / (1.0 - inflection)) ** 2
    safe_gains = torch.maximum(mask + (1.0 - mask) * gains, gains)
    return image * safe_gains


def unprocess(
    rgb: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    pattern: str = "RGGB",
    camera_seed: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sRGB (B,3,H,W) in [0,1] -> packed linear RAW (B,4,H/2,W/2) and its camera metadata.

    ``camera_seed=None`` draws a colour matrix and gains per image (Brooks' augmentation); an
    integer draws one camera from that seed for the whole batch, as with a dataset shot on a
    single sensor (SID), so a network can learn that camera's colour pipeline.

    Metadata: ``cam2rgb`` (B,3,3), ``rgb_gain``, ``red_gain``, ``blue_gain`` (B,), enough to run
    the forward pipeline again.
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be (B,3,H,W); got shape {tuple(rgb.shape)}")
    batch = rgb.shape[0]
    cam_gen, draws = generator, batch
    if camera_seed is not None:
        cam_gen, draws = torch.Generator().manual_seed(camera_seed), 1
    rgb2cam64 = random_ccm(draws, cam_gen, dtype=torch.float64).expand(batch, 3, 3)
    cam2rgb = torch.linalg.inv(rgb2cam64).to(dtype=rgb.dtype, device=rgb.device)
    rgb2cam = rgb2cam64.to(dtype=rgb.dtype, device=rgb.device)
    rgb_gain, red_gain, blue_gain = (
        g.expand(batch) for g in random_gains(draws, cam_gen, dtype=rgb.dtype, device=rgb.device)
    )
    image = inverse_smoothstep(rgb)
    image = gamma_expansion(image)
    image = apply_ccm(image, rgb2cam)
    image = safe_invert_gains(image, rgb_gain, red_gain, blue_gain)
    image = image.clamp(0.0, 1.0)
    raw = mosaic_rgb(image, pattern)
    metadata = {
        "cam2rgb": cam2rgb,
        "rgb_gain": rgb_gain,
        "red_gain": red_gain,
        "blue_gain": blue_gain,
    }
    return raw, metadata


def random_noise_levels(
    batch: int,
    generator: torch.Generator | None = None,
    shot_range: tuple[float, float] = BROOKS_SHOT_RANGE,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (shot, read) noise levels, each (B,), from Brooks' joint distribution.

    log shot ~ U(log lo, log hi); log read = 2.18 log shot + 1.20 + N(0, 0.26).
    """
    low, high = _check_range("shot_range", shot_range, 1e-300)
    log_shot = _uniform((batch,), math.log(low), math.log(high), generator)
    log_read = 2.18 * log_shot + 1.20 + _normal((batch,), 0.0, 0.26, generator)
    target = device if device is not None else log_shot.device
    return (
        log_shot.exp().to(dtype=dtype, device=target),
        log_read.exp().to(dtype=dtype, device=target),
    )


def add_noise(
    raw: torch.Tensor,
    shot: torch.Tensor | float,
    read: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add heteroscedastic Gaussian noise with variance ``raw * shot + read`` per pixel."""
    variance = raw.clamp_min(0.0) * _per_image(shot, raw) + _per_image(read, raw)
    z = torch.randn(
        raw.shape, generator=generator, device=_device_of(generator), dtype=torch.float64
    ).to(dtype=raw.dtype, device=raw.device)
    return raw + z * variance.sqrt()


def synthesize_low_light(
    rgb: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    shot_range: tuple[float, float] = DEFAULT_SHOT_RANGE,
    pattern: str = "RGGB",
    camera_seed: int | None = None,
    noise_model: str = "gaussian",
) -> dict[str, torch.Tensor]:
    """A SID-style training pair from clean sRGB: amplified noisy short exposure and reference.

    Steps: unprocess to linear RAW; divide by an exposure ratio drawn log-uniformly per image
    from ``ratio_range``; add shot/read noise to that dark signal; multiply back by the ratio and
    clip to [0,1], as SID loaders do with the real short exposure. ``camera_seed``: see
    :func:`unprocess`. ``noise_model``: "gaussian" (Brooks' heteroscedastic Gaussian,
    :func:`add_noise`) or "physics" (Poisson shot, Gaussian read, row noise and 14-bit
    quantisation, :mod:`bgl.raw.noise`, with K = shot and sigma_read^2 = read); both draw the same
    camera, ratio and (shot, read) levels for a seed, so they differ only in the noise law.

    Returns ``{"raw": (B,4,H/2,W/2), "rgb": the input (B,3,H,W), "ratio": (B,)}`` and the camera
    that made the RAW: ``cam2rgb`` (B,3,3), ``red_gain``, ``blue_gain`` (B,), the colour matrix and
    white balance a real file carries, so the RAW can be re-expressed camera-independently
    (:func:`bgl.raw.colour.canonical_packed`) exactly as ``bgl develop`` does with a file's own,
    and ``rgb_gain`` (B,), the brightness gain unprocessing divided out.
    """
    ratio_low, ratio_high = _check_range("ratio_range", ratio_range, 1.0)
    _check_range("shot_range", shot_range, 1e-300)
    check_noise_model(noise_model)
    raw, camera = unprocess(rgb, generator, pattern=pattern, camera_seed=camera_seed)
    batch = rgb.shape[0]
    log_ratio = _uniform((batch,), math.log(ratio_low), math.log(ratio_high), generator)
    ratio = log_ratio.exp().to(dtype=rgb.dtype, device=rgb.device)
    shot, read = random_noise_levels(
        batch, generator, shot_range, dtype=rgb.dtype, device=rgb.device
    )
    scale = _per_image(ratio, raw)
    dark = raw / scale
    if noise_model == "physics":
        noisy = add_physics_noise(dark, physics_levels(shot, read), generator, pattern=pattern)
    else:
        noisy = add_noise(dark, shot, read, generator)
    amplified = (noisy * scale).clamp(0.0, 1.0)
    return {
        "raw": amplified,
        "rgb": rgb,
        "ratio": ratio,
        "cam2rgb": camera["cam2rgb"],
        "rgb_gain": camera["rgb_gain"],
        "red_gain": camera["red_gain"],
        "blue_gain": camera["blue_gain"],
    }
