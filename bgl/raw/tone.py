"""The forward tone steps of Brooks et al.'s simple camera pipeline, and re-exposing an sRGB image.

Why: the enhancement task's generative block can be asked to develop the *short* exposure (at a
camera gain, still dark) and leave brightening to the enhancement network; its warm-start target
is then the reference re-exposed to that gain: sRGB -> linear (the inverses in
:mod:`bgl.raw.unprocess`) -> times the gain -> sRGB again.
"""

from __future__ import annotations

import torch

from bgl.raw.bayer import bilinear_demosaic
from bgl.raw.unprocess import _per_image, gamma_expansion, inverse_smoothstep

__all__ = [
    "GENERATOR_RESIDUALS",
    "classical_development",
    "gamma_compression",
    "reexpose",
    "smoothstep",
]


def smoothstep(image: torch.Tensor) -> torch.Tensor:
    """The global tone curve 3x^2 - 2x^3 on [0, 1] (inverse: `unprocess.inverse_smoothstep`)."""
    image = image.clamp(0.0, 1.0)
    return image * image * (3.0 - 2.0 * image)


def gamma_compression(image: torch.Tensor) -> torch.Tensor:
    """x ** (1/2.2) (inverse: `unprocess.gamma_expansion`); the floor keeps the gradient finite."""
    return image.clamp_min(1e-8) ** (1.0 / 2.2)


def reexpose(rgb: torch.Tensor, gain: torch.Tensor | float) -> torch.Tensor:
    """An sRGB image (B,3,H,W) as the same pipeline renders it at `gain` times the exposure
    (per image: a (B,) tensor), clipping in linear space as a sensor does."""
    linear = gamma_expansion(inverse_smoothstep(rgb)) * _per_image(gain, rgb)
    return smoothstep(gamma_compression(linear.clamp(0.0, 1.0)))


#: What a generative block adds to its U-Net's output (``model.generator_residual``): nothing
#: (SID), or :func:`classical_development` of its input (:mod:`bgl.models.generator`).
GENERATOR_RESIDUALS: tuple[str, ...] = ("none", "develop")


def classical_development(packed: torch.Tensor) -> torch.Tensor:
    """Packed linear RAW (B,4,h,w) -> sRGB (B,3,2h,2w): bilinear demosaic, clip, gamma 1/2.2,
    smoothstep; Brooks et al.'s forward pipeline after white balance and colour correction.

    On a *canonical* RAW (:mod:`bgl.raw.colour`: already white-balanced, in sRGB primaries) this
    is a complete if plain development, the exact inverse of unprocessing up to demosaicing and
    noise; a generative block can learn its residual (denoising, detail) instead of colour.
    """
    return smoothstep(gamma_compression(bilinear_demosaic(packed).clamp(0.0, 1.0)))
