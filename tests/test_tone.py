"""The forward tone steps and re-exposure (bgl.raw.tone) against closed forms and the inverses
in bgl.raw.unprocess."""

from __future__ import annotations

import numpy as np
import torch

from bgl.raw.tone import gamma_compression, reexpose, smoothstep
from bgl.raw.unprocess import gamma_expansion, inverse_smoothstep


def test_forward_steps_invert_unprocessing() -> None:
    x = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    torch.testing.assert_close(smoothstep(inverse_smoothstep(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(gamma_compression(gamma_expansion(x[1:])), x[1:])
    by_hand = 3 * x.numpy() ** 2 - 2 * x.numpy() ** 3
    np.testing.assert_allclose(smoothstep(x).numpy(), by_hand, atol=1e-15)


def test_reexpose_is_a_gain_in_linear_space() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(reexpose(rgb, 1.0), rgb, rtol=0, atol=1e-9)
    # gains compose while nothing clips (both darken)
    twice = reexpose(reexpose(rgb, 0.5), 0.2)
    torch.testing.assert_close(twice, reexpose(rgb, 0.1), rtol=0, atol=1e-9)
    # per-image gains, and a brightening gain clips in linear space (white stays white)
    per_image = reexpose(rgb, torch.tensor([0.5, 4.0], dtype=torch.float64))
    torch.testing.assert_close(per_image[0], reexpose(rgb[:1], 0.5)[0])
    assert float(per_image[1].max()) == 1.0 and bool((per_image[1] >= rgb[1] - 1e-12).all())
