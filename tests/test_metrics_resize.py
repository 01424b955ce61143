"""The three bicubic resizers the metric references use, each against its library."""

from __future__ import annotations

import numpy as np
import pytest

from bgl.metrics._resize import imresize
from tests.metric_references import load_basicsr

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(64, 64), (65, 47), (50, 96)]


@pytest.mark.parametrize("shape", SHAPES)
def test_opencv_matches_cv2(shape: tuple[int, int]) -> None:
    cv2 = pytest.importorskip("cv2")
    x = np.random.default_rng(0).random(shape)
    ref = cv2.resize(x, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    got = imresize(x, method="opencv", scale=0.5)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_pil_matches_pillow(shape: tuple[int, int]) -> None:
    from PIL import Image

    x = (np.random.default_rng(1).random(shape) * 255).astype(np.float32)
    h, w = shape
    ref = np.asarray(Image.fromarray(x, mode="F").resize((w // 2, h // 2), Image.BICUBIC))
    got = imresize(x, method="pil", scale=0.5)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4)  # Pillow's float32 accumulation


@pytest.mark.parametrize("shape", SHAPES)
def test_matlab_matches_basicsr_port(shape: tuple[int, int]) -> None:
    _, matlab, _ = load_basicsr()
    x = np.random.default_rng(2).random(shape)
    ref = matlab.imresize(x, scale=0.5, antialiasing=True)
    got = imresize(x, method="matlab", scale=0.5)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-6)  # BasicSR computes in float32


def test_matlab_half_kernel_is_the_published_one() -> None:
    """imresize(x, 0.5, 'bicubic') weights: [-0.0117 -0.0352 0.1133 0.4336 0.4336 ...]."""
    published = [-0.01171875, -0.03515625, 0.11328125, 0.43359375]
    published = published + published[::-1]
    x = np.zeros((40, 40))
    response = []
    for i in range(17, 25):  # output 10 reads inputs 2*10-3 .. 2*10+4
        x[:] = 0.0
        x[:, i] = 1.0
        response.append(imresize(x, method="matlab", scale=0.5)[10, 10])
    np.testing.assert_allclose(response, published, atol=1e-12)


@pytest.mark.parametrize("method", ["matlab", "pil", "opencv"])
def test_constants_and_ramps_survive(method: str) -> None:
    const = np.full((30, 44), 7.5)
    np.testing.assert_allclose(imresize(const, method=method, scale=0.5), 7.5, atol=1e-12)
    ramp = np.tile(np.arange(64, dtype=np.float64), (16, 1))
    out = imresize(ramp, method=method, scale=0.5)
    interior = out[:, 3:-3]
    np.testing.assert_allclose(np.diff(interior, axis=1), 2.0, atol=1e-9)


def test_matlab_uint8_rounds_each_pass_and_clips() -> None:
    x = np.zeros((20, 20))
    x[:, 10:] = 255.0
    out = imresize(x, method="matlab", shape=(10, 10), uint8=True)
    assert np.array_equal(out, np.round(out)) and out.min() >= 0 and out.max() <= 255
    assert imresize(x, method="matlab", shape=(10, 10)).min() < 0  # overshoot before clipping


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        imresize(np.zeros((4, 4)), method="matlab")
    with pytest.raises(ValueError, match="2-D"):
        imresize(np.zeros((2, 4, 4)), method="matlab", scale=0.5)
