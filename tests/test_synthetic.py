"""The embedded synthetic low-light dataset: shapes, determinism, disjoint splits, validation."""

from __future__ import annotations

import pytest
import torch

from bgl.config import ConfigError, from_dict
from bgl.data.splits import build_splits
from bgl.data.synthetic import CHUNK, SyntheticLowLight, render_scenes, shade_scenes
from bgl.raw.bayer import packed_to_rgb
from bgl.raw.unprocess import DEFAULT_RATIO_RANGE


def test_render_scenes_shape_range_and_determinism() -> None:
    a = render_scenes(8, 64, torch.Generator().manual_seed(0))
    b = render_scenes(8, 64, torch.Generator().manual_seed(0))
    c = render_scenes(8, 64, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 64, 64) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_render_scenes_have_content() -> None:
    scenes = render_scenes(16, 64, torch.Generator().manual_seed(2))
    # Not flat: spatial contrast in every image, and edges (neighbouring-pixel differences).
    assert (scenes.flatten(1).std(dim=1) > 0.05).all()
    edges = (scenes[..., 1:] - scenes[..., :-1]).abs()
    assert ((edges > 0.2).flatten(1).float().mean(dim=1) > 0.002).all()
    # Colourful, not grey: channels differ.
    assert (scenes[:, 0] - scenes[:, 1]).abs().mean() > 0.05
    # Images differ from each other.
    distances = torch.cdist(scenes.flatten(1), scenes.flatten(1))
    assert distances[~torch.eye(16, dtype=torch.bool)].min() > 1.0


def luma_below(images: torch.Tensor, level: float) -> float:
    """Fraction of pixels whose channel mean is below ``level``."""
    return float((images.mean(dim=1) < level).float().mean())


def test_shaded_scenes_have_shadows_like_photographs() -> None:
    flat = render_scenes(128, 64, torch.Generator().manual_seed(0))
    shaded = shade_scenes(flat.clone(), torch.Generator().manual_seed(5))
    again = shade_scenes(flat.clone(), torch.Generator().manual_seed(5))
    assert torch.equal(shaded, again) and shaded.shape == flat.shape
    assert shaded.min() >= 0 and shaded.max() <= 1
    # Evenly lit scenes have almost no dark regions; shaded ones have them in the proportion of
    # real photographs (4-26% of pixels below luma 0.2 in scikit-image's photographs).
    assert luma_below(flat, 0.2) < 0.03
    assert 0.08 < luma_below(shaded, 0.2) < 0.3
    # Lighting is a smooth multiplicative field: where it darkens a scene it keeps the scene's
    # hue (channel ratios), so shadows are dark versions of the same surfaces.
    lit = ((shaded < 0.999) & (flat > 0.02)).all(dim=1, keepdim=True)  # unclipped pixels
    factor = shaded / flat.clamp_min(1e-6)
    spread = (factor.amax(dim=1, keepdim=True) - factor.amin(dim=1, keepdim=True))[lit]
    assert float(spread.max()) < 1e-4


def test_dataset_lighting_option() -> None:
    flat = SyntheticLowLight(4, size=32, seed=3, lighting="flat").tensors()["rgb"]
    shaded = SyntheticLowLight(4, size=32, seed=3, lighting="shaded").tensors()["rgb"]
    assert shaded.shape == flat.shape and not torch.allclose(shaded, flat)
    assert shaded.mean() < flat.mean()
    with pytest.raises(ValueError, match="lighting must be one of flat, shaded"):
        SyntheticLowLight(4, size=32, lighting="dim")
    cfg = from_dict(
        {
            "data": {
                "lighting": "shaded",
                "train_size": 4,
                "val_size": 4,
                "select_size": 4,
                "test_size": 4,
                "crop": 32,
            }
        }
    )
    assert torch.equal(
        build_splits(cfg.data)["train"].tensors()["rgb"],
        SyntheticLowLight(4, size=32, seed=0, lighting="shaded").tensors()["rgb"],
    )
    faces = from_dict({"data": {"name": "synthetic_faces", "lighting": "shaded"}})
    with pytest.raises(ConfigError, match="data.lighting: dataset 'synthetic_faces' supports"):
        build_splits(faces.data)


def test_dataset_items_and_tensors() -> None:
    data = SyntheticLowLight(5, size=32, seed=0)
    assert len(data) == 5
    item = data[3]
    assert set(item) == {"raw", "rgb", "ratio"}
    assert item["raw"].shape == (4, 16, 16) and item["rgb"].shape == (3, 32, 32)
    assert item["ratio"].shape == () and item["raw"].dtype == torch.float32
    batch = data.tensors()
    assert batch["raw"].shape == (5, 4, 16, 16)
    assert batch["rgb"].shape == (5, 3, 32, 32)
    assert batch["ratio"].shape == (5,)
    for key in item:
        assert torch.equal(batch[key][3], item[key])
        assert torch.equal(data[-1][key], batch[key][4])
    for tensor in batch.values():
        assert torch.isfinite(tensor).all()
    assert batch["raw"].min() >= 0 and batch["raw"].max() <= 1
    assert batch["rgb"].min() >= 0 and batch["rgb"].max() <= 1
    low, high = DEFAULT_RATIO_RANGE
    assert ((batch["ratio"] >= low) & (batch["ratio"] <= high)).all()
    with pytest.raises(IndexError):
        data[5]


def test_dataset_works_with_dataloader() -> None:
    data = SyntheticLowLight(6, size=32, seed=4)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    first = next(iter(loader))
    assert first["raw"].shape == (4, 4, 16, 16) and first["ratio"].shape == (4,)


def test_dataset_deterministic_and_independent_of_length() -> None:
    a = SyntheticLowLight(CHUNK + 3, size=32, seed=7).tensors()
    b = SyntheticLowLight(CHUNK + 3, size=32, seed=7).tensors()
    short = SyntheticLowLight(4, size=32, seed=7).tensors()
    for key in a:
        assert torch.equal(a[key], b[key])
        assert torch.equal(a[key][:4], short[key])
    # The second chunk is new data, not a repeat of the first.
    assert not torch.allclose(a["rgb"][CHUNK], a["rgb"][0])


def test_seeds_give_disjoint_splits() -> None:
    train = SyntheticLowLight(40, size=32, seed=0).tensors()["rgb"].flatten(1)
    val = SyntheticLowLight(40, size=32, seed=1).tensors()["rgb"].flatten(1)
    nearest = torch.cdist(val, train).min(dim=1).values
    assert nearest.min() > 1.0


def test_raw_input_relates_to_reference() -> None:
    data = SyntheticLowLight(8, size=32, seed=5).tensors()
    naive = packed_to_rgb(data["raw"]).clamp(0, 1) ** (1 / 2.2)
    # The naive amplified input is a noisy, colour-shifted version of the reference: correlated
    # per image, but far from equal.
    for i in range(8):
        x = naive[i].flatten() - naive[i].mean()
        y = data["rgb"][i].flatten() - data["rgb"][i].mean()
        assert (x @ y) / (x.norm() * y.norm()) > 0.3
    mse = ((naive - data["rgb"]) ** 2).mean()
    assert 1e-3 < mse < 0.2


def test_custom_ranges_are_used() -> None:
    data = SyntheticLowLight(4, size=32, seed=0, ratio_range=(2.0, 2.0), shot_range=(1e-6, 1e-6))
    assert torch.allclose(data.tensors()["ratio"], torch.full((4,), 2.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n must"),
        ({"n": 2.5}, "n must"),
        ({"size": 48}, "size"),
        ({"size": 16}, "size"),
        ({"size": 33}, "size"),
        ({"seed": -1}, "seed"),
        ({"ratio_range": (0.1, 2.0)}, "ratio_range"),
        ({"shot_range": (-1.0, 1.0)}, "shot_range"),
        ({"pattern": "XYZW"}, "pattern"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    arguments = {"n": 2, "size": 32} | kwargs
    with pytest.raises(ValueError, match=name):
        SyntheticLowLight(**arguments)


def test_fixed_camera_is_shared_across_batches_and_random_camera_is_not() -> None:
    from bgl.raw.unprocess import unprocess

    rgb = render_scenes(3, 32, torch.Generator().manual_seed(0))
    _, fixed_a = unprocess(rgb, torch.Generator().manual_seed(1), camera_seed=7)
    _, fixed_b = unprocess(rgb, torch.Generator().manual_seed(2), camera_seed=7)
    _, free = unprocess(rgb, torch.Generator().manual_seed(1))
    for key in ("cam2rgb", "rgb_gain", "red_gain", "blue_gain"):
        assert torch.equal(fixed_a[key], fixed_b[key])  # same camera whatever the batch stream
        assert torch.equal(fixed_a[key][0], fixed_a[key][2])  # and for every image
        assert not torch.equal(free[key][0], free[key][2])  # per-image draws otherwise
    a = SyntheticLowLight(4, size=32, seed=1, camera_seed=5)
    b = SyntheticLowLight(4, size=32, seed=1, camera_seed=6)
    assert not torch.equal(a.tensors()["raw"], b.tensors()["raw"])
