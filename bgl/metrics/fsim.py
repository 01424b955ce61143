"""FSIM / FSIMc (Zhang, Zhang, Mou & Zhang, IEEE TIP 2011), following the authors' FeatureSIM.m.

    FSIM  = sum_x S_PC(x) S_G(x) PC_m(x) / sum_x PC_m(x)
    FSIMc = sum_x S_PC(x) S_G(x) [S_I(x) S_Q(x)]^0.03 PC_m(x) / sum_x PC_m(x)

with S(a, b) = (2ab + T) / (a^2 + b^2 + T), phase congruency PC (Kovesi's phasecong2: 4 scales,
4 orientations of log-Gabor filters, noise compensation), PC_m = max(PC_1, PC_2), the Scharr
gradient magnitude G, and T_1..T_4 = 0.85, 160, 200, 200 for 8-bit data (inputs in [0, 1] are
scaled by 255). Colour images are taken to YIQ; the luminance Y carries PC and G.

Details kept from the MATLAB reference (piq, used to cross-check in the tests, differs in the
first three): the median of an even number of values is the mean of the middle two; the
low-pass filter uses its own frequency grid (`lowpassfilter.m`), which differs from the
log-Gabor grid for odd sizes; the chromatic term is real((S_I S_Q)^0.03), i.e.
|S_I S_Q|^0.03 cos(0.03 pi) where the product is negative; images whose short side is >= 384
are first averaged over F x F blocks and subsampled by F = round(min(H, W) / 256).
Where a phase-congruency map has no filter response at all (a perfectly flat image) PC is 0
instead of MATLAB's 0/0; FSIM is NaN only when both images are flat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bgl.metrics._validate import check_images

# phasecong2 parameters used by FeatureSIM.m
N_SCALE = 4
N_ORIENT = 4
MIN_WAVELENGTH = 6
MULT = 2
SIGMA_ON_F = 0.55
D_THETA_ON_SIGMA = 1.2
K_NOISE = 2.0
EPSILON = 1e-4
# FSIM constants (8-bit data)
T1, T2, T3, T4 = 0.85, 160.0, 200.0, 200.0
LAMBDA = 0.03
#: RGB -> YIQ rows as in FeatureSIM.m.
YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
#: Scharr-type kernels of FeatureSIM.m (conv2 'same', zero padded).
SCHARR_X = ((3.0, 0.0, -3.0), (10.0, 0.0, -10.0), (3.0, 0.0, -3.0))
#: Smallest side accepted: the shortest log-Gabor wavelength is 6 pixels.
MIN_SIZE = 8


def _matlab_round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _grid(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """phasecong2's normalised frequency range for one axis (odd and even sizes differ)."""
    if n % 2:
        return torch.arange(-(n - 1) / 2, (n - 1) / 2 + 1, dtype=dtype, device=device) / (n - 1)
    return torch.arange(-n / 2, n / 2, dtype=dtype, device=device) / n


def _lowpass(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """lowpassfilter([rows cols], 0.45, 15): Butterworth, zero frequency at the corner."""
    x = (torch.arange(1, cols + 1, dtype=dtype, device=device) - (cols // 2 + 1)) / cols
    y = (torch.arange(1, rows + 1, dtype=dtype, device=device) - (rows // 2 + 1)) / rows
    radius = torch.sqrt(x[None, :] ** 2 + y[:, None] ** 2)
    f = 1.0 / (1.0 + (radius / 0.45) ** (2 * 15))
    return torch.fft.ifftshift(f)


def _filters(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (orientations, scales, H, W) log-Gabor x angular-spread filter bank of phasecong2."""
    x = _grid(cols, dtype, device)[None, :].expand(rows, cols)
    y = _grid(rows, dtype, device)[:, None].expand(rows, cols)
    radius = torch.fft.ifftshift(torch.sqrt(x**2 + y**2)).clone()
    theta = torch.fft.ifftshift(torch.atan2(-y, x))
    radius[0, 0] = 1.0
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    lp = _lowpass(rows, cols, dtype, device)
    log_gabor = []
    for s in range(N_SCALE):
        fo = 1.0 / (MIN_WAVELENGTH * MULT**s)
        g = torch.exp(-(torch.log(radius / fo) ** 2) / (2 * math.log(SIGMA_ON_F) ** 2)) * lp
        g[0, 0] = 0.0
        log_gabor.append(g)
    theta_sigma = math.pi / N_ORIENT / D_THETA_ON_SIGMA
    bank = []
    for o in range(N_ORIENT):
        angle = o * math.pi / N_ORIENT
        ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        spread = torch.exp(-(torch.atan2(ds, dc).abs() ** 2) / (2 * theta_sigma**2))
        bank.append(torch.stack([g * spread for g in log_gabor]))
    return torch.stack(bank)


def _median(x: torch.Tensor) -> torch.Tensor:
    """MATLAB median over the last axis: the mean of the two middle values for even counts."""
    n = x.shape[-1]
    s = x.sort(dim=-1).values
    if n % 2:
        return s[..., n // 2]
    return 0.5 * (s[..., n // 2 - 1] + s[..., n // 2])


def phase_congruency(image: torch.Tensor) -> torch.Tensor:
    """Kovesi's phase congruency (phasecong2 as shipped with FSIM) of a (B, H, W) float batch."""
    b, rows, cols = image.shape
    filters = _filters(rows, cols, image.dtype, image.device)
    spectrum = torch.fft.fft2(image)
    ifft_filters = torch.fft.ifft2(filters).real * math.sqrt(rows * cols)  # (O, S, H, W)
    energy_all = torch.zeros_like(image)
    an_all = torch.zeros_like(image)
    for o in range(N_ORIENT):
        eo = torch.fft.ifft2(spectrum[:, None] * filters[o][None])  # (B, S, H, W)
        even, odd = eo.real, eo.imag
        an = eo.abs()
        sum_e, sum_o = even.sum(dim=1), odd.sum(dim=1)
        x_energy = torch.sqrt(sum_e**2 + sum_o**2) + EPSILON
        mean_e, mean_o = (sum_e / x_energy)[:, None], (sum_o / x_energy)[:, None]
        energy = (even * mean_e + odd * mean_o - (even * mean_o - odd * mean_e).abs()).sum(dim=1)
        # noise: median of the smallest scale's squared amplitude (Rayleigh statistics)
        em_n = (filters[o, 0] ** 2).sum()
        median_e2n = _median((an[:, 0] ** 2).reshape(b, -1))
        noise_power = (-median_e2n / math.log(0.5)) / em_n  # (B,)
        f = ifft_filters[o]
        sum_an2 = (f**2).sum()
        sum_ai_aj = sum((f[i] * f[j]).sum() for i in range(N_SCALE) for j in range(i + 1, N_SCALE))
        noise_energy2 = 2 * noise_power * sum_an2 + 4 * noise_power * sum_ai_aj
        tau = torch.sqrt(noise_energy2 / 2)
        threshold = tau * math.sqrt(math.pi / 2) + K_NOISE * torch.sqrt((2 - math.pi / 2) * tau**2)
        threshold = threshold / 1.7
        energy_all = energy_all + torch.clamp(energy - threshold[:, None, None], min=0.0)
        an_all = an_all + an.sum(dim=1)
    safe = torch.where(an_all > 0, an_all, torch.ones_like(an_all))
    return torch.where(an_all > 0, energy_all / safe, torch.zeros_like(an_all))


def _conv_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """MATLAB conv2(x, kernel, 'same') of a (B, H, W) batch: true convolution, zero padding."""
    kh, kw = kernel.shape
    # 'same' keeps full-output rows k//2 .. k//2 + n - 1 (the window reaches forward for even k)
    padded = F.pad(x[:, None], (kw - 1 - kw // 2, kw // 2, kh - 1 - kh // 2, kh // 2))
    return F.conv2d(padded, kernel.flip(0, 1)[None, None])[:, 0]


def _gradient_magnitude(y: torch.Tensor) -> torch.Tensor:
    dx = torch.tensor(SCHARR_X, dtype=y.dtype, device=y.device) / 16.0
    gx = _conv_same(y, dx)
    gy = _conv_same(y, dx.T.contiguous())
    return torch.sqrt(gx**2 + gy**2)


def _downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """FeatureSIM.m: F x F box filter (conv2 'same', zero padded), then every F-th pixel."""
    if factor == 1:
        return x
    box = torch.full((factor, factor), 1.0 / factor**2, dtype=x.dtype, device=x.device)
    return _conv_same(x, box)[:, ::factor, ::factor]


def _similarity(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return (2 * a * b + t) / (a**2 + b**2 + t)


def fsim(pred: torch.Tensor, target: torch.Tensor, chromatic: bool = True) -> torch.Tensor:
    """FSIM of each image against its target, shape (B,); 1 for identical images, higher better.

    Images are (B, 1|3, H, W) in [0, 1], at least 8x8; computed in float64. For RGB images
    `chromatic=True` (default, as in piq and pyiqa) gives FSIMc, `False` the luminance-only
    FSIM; grey images always give FSIM.
    """
    check_images("fsim", pred, target, min_size=(MIN_SIZE, MIN_SIZE))
    ref = target.to(torch.float64) * 255.0
    dis = pred.to(torch.float64) * 255.0
    rows, cols = ref.shape[-2:]
    factor = max(1, _matlab_round(min(rows, cols) / 256))
    colour = ref.shape[1] == 3
    if colour:
        yiq = torch.tensor(YIQ, dtype=torch.float64, device=ref.device)
        ref = torch.einsum("oc,bchw->bohw", yiq, ref)
        dis = torch.einsum("oc,bchw->bohw", yiq, dis)
    ref = torch.stack([_downsample(ref[:, c], factor) for c in range(ref.shape[1])], dim=1)
    dis = torch.stack([_downsample(dis[:, c], factor) for c in range(dis.shape[1])], dim=1)
    y1, y2 = ref[:, 0], dis[:, 0]
    pc1, pc2 = phase_congruency(y1), phase_congruency(y2)
    g1, g2 = _gradient_magnitude(y1), _gradient_magnitude(y2)
    pc_m = torch.maximum(pc1, pc2)
    sim = _similarity(pc1, pc2, T1) * _similarity(g1, g2, T2)
    if colour and chromatic:
        prod = _similarity(ref[:, 1], dis[:, 1], T3) * _similarity(ref[:, 2], dis[:, 2], T4)
        # real(z^lambda) for real z: |z|^lambda, times cos(lambda pi) where z < 0
        sign = torch.where(prod < 0, math.cos(LAMBDA * math.pi), 1.0)
        sim = sim * prod.abs() ** LAMBDA * sign
    return (sim * pc_m).sum(dim=(1, 2)) / pc_m.sum(dim=(1, 2))
