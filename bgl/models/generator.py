"""The generative block F(z; ω): packed RAW -> sRGB, the U-Net of "Learning to See in the Dark".

Chen et al. (CVPR 2018) map a packed 4-channel Bayer RAW at half resolution to a full-resolution
RGB image with a 5-level U-Net whose last 1x1 conv emits 12 channels that `pixel_shuffle(2)`
rearranges into 3 channels at twice the spatial size. BGL uses exactly this network as the upper
variable ω, so the layout (widths w..16w, LeakyReLU 0.2, transposed-conv upsampling) follows SID.

``residual="develop"`` adds a fixed skip: F(z) = D(z) + U(z), D the classical development of the
packed RAW (:func:`bgl.raw.tone.classical_development`) and U the U-Net with its last layer
zero-initialised, so F starts as a plain but colour-correct development of a canonical RAW and
learns only the correction. Why: a small U-Net trained for minutes from scratch renders colour
wrongly and leaves a 2-pixel grid from its pixel-shuffle (``bgl bench cameras`` on real
photographs through real cameras' colour matrices; README "Other cameras"); with the skip it
keeps the colour and learns the rest. Not in SID or the paper, so ``"none"`` (the plain U-Net)
is the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bgl.raw.tone import GENERATOR_RESIDUALS, classical_development

#: Spatial size of the input must be divisible by this (four 2x max-pools).
MULTIPLE = 16
#: SID's LeakyReLU slope.
LEAKY_SLOPE = 0.2


class ConvBlock(nn.Sequential):
    """Two 3x3 convs, each followed by LeakyReLU(0.2): one U-Net level of SID."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class GenerativeBlock(nn.Module):
    """SID U-Net F(z; ω): (B, 4, h, w) packed RAW -> (B, 3, 2h, 2w) RGB.

    The output is deliberately *not* clamped: SID trains the unclamped output with an L1 loss
    (clamping would zero the gradient of every saturated pixel). Consumers that need an image in
    [0, 1] clamp it themselves. Inputs whose h or w is not a multiple of 16 are padded (reflect
    where possible) and the output is cropped back to (2h, 2w), so full frames of any size work.
    """

    def __init__(self, width: int = 32, in_channels: int = 4, residual: str = "none") -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if residual not in GENERATOR_RESIDUALS:
            raise ValueError(
                f"residual must be one of {', '.join(GENERATOR_RESIDUALS)}; got {residual!r}"
            )
        self.width = width
        self.in_channels = in_channels
        self.residual = residual
        widths = [width * 2**i for i in range(5)]  # w, 2w, 4w, 8w, 16w
        self.down = nn.ModuleList()
        prev = in_channels
        for ch in widths:
            self.down.append(ConvBlock(prev, ch))
            prev = ch
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for ch in reversed(widths[:-1]):  # 8w, 4w, 2w, w
            self.upsample.append(nn.ConvTranspose2d(prev, ch, kernel_size=2, stride=2))
            self.up.append(ConvBlock(2 * ch, ch))
            prev = ch
        self.head = nn.Conv2d(prev, 12, kernel_size=1)
        if residual == "develop":  # start as the classical development exactly
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Packed RAW (B, 4, h, w) -> unclamped RGB (B, 3, 2h, 2w)."""
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"expected packed RAW of shape (B, {self.in_channels}, h, w), got {tuple(z.shape)}"
            )
        h, w = z.shape[-2:]
        skips = []
        x = _pad_to_multiple(z, MULTIPLE)
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for upsample, block in zip(self.upsample, self.up, strict=True):
            x = upsample(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        x = F.pixel_shuffle(self.head(x), 2)[..., : 2 * h, : 2 * w]
        if self.residual == "develop":
            x = x + classical_development(z)
        return x


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right up to a multiple; reflect when the image is large enough, else replicate.

    Reflect padding avoids the artificial dark border that zero padding would create; it needs the
    pad to be smaller than the side, so tiny inputs fall back to replicate.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def build_generator(width: int = 32, residual: str = "none") -> GenerativeBlock:
    """SID U-Net at the given base width (32 reproduces SID; small widths are for tests), with
    the optional classical-development skip (``residual="develop"``)."""
    return GenerativeBlock(width=width, residual=residual)
