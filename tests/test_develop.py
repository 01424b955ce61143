"""`bgl develop`: tiled inference of a trained generative block on a camera file (DNGs written
here), checkpoints loaded with weights_only, orientation, 8- and 16-bit PNG output."""

from __future__ import annotations

import argparse
import struct
import zlib

import numpy as np
import pytest
import rawpy
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bgl.cli.develop import add_develop_command
from bgl.config import from_dict
from bgl.develop import (
    auto_ratio,
    blend_ramp,
    compare_with_libraw,
    develop_file,
    develop_tiled,
    load_models,
    orient,
    tile_starts,
)
from bgl.models.enhance import IlluminationNet
from bgl.models.generator import GenerativeBlock
from bgl.raw.colour import canonical_packed
from bgl.raw.dng import mosaic_from_linear, write_dng
from bgl.raw.read import normalize_packed, read_raw
from bgl.train.loop import Trainer
from tests.conftest import tiny_config_dict

RGGB_SITES = [(0, 0), (0, 1), (1, 1), (1, 0)]


def develop(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="bgl")
    add_develop_command(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["develop", *argv])
    return args.func(args)


def decode_png16(path) -> np.ndarray:
    """A minimal, independent PNG decoder for 16-bit RGB (filters None/Sub/Up only)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 16 and colour == 2
    stride = width * 6
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, stride + 1)
    rows = np.zeros((height, stride), np.uint8)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 1:
            for x in range(6, stride):
                line[x] = (line[x] + line[x - 6]) % 256
        elif kind == 2 and y > 0:
            line = (line + rows[y - 1]) % 256
        rows[y] = line
    return rows.view(">u2").reshape(height, width, 3).astype(np.uint16)


@pytest.fixture
def photo(tmp_path):
    g = torch.Generator().manual_seed(0)
    linear = torch.rand(4, 24, 32, generator=g) * 0.02  # a dark frame
    path = write_dng(tmp_path / "DSC0001.ARW", mosaic_from_linear(linear), "RGGB")
    return path


def _packed(path, ratio):
    with rawpy.imread(str(path)) as raw:
        mosaic = raw.raw_image_visible.copy()
    packed = np.stack([mosaic[r::2, c::2] for r, c in RGGB_SITES])
    return torch.from_numpy(normalize_packed(packed, [512] * 4, 16383, ratio))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real training checkpoint, written by Trainer.save (built once for the module)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = from_dict(
        tiny_config_dict(tmp, model={"generator_width": 4}, task={"options": {"width": 4}})
    )
    return Trainer(cfg).save(tmp / "checkpoint.pt")


class Pointwise(nn.Module):
    """A stand-in for F with no spatial context: tiling must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.pixel_shuffle(self.conv(z), 2))


def test_tiles_cover_the_frame():
    for size, tile, overlap in [(100, 32, 8), (32, 32, 8), (10, 32, 8), (65, 16, 4)]:
        starts = tile_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and starts[-1] + min(tile, size) == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    w = blend_ramp(16, 4, rise=True, fall=True)
    assert torch.allclose(w[:4] + w.flip(0)[:4].flip(0), torch.ones(4))  # ramps sum to one
    assert (w[4:12] == 1).all()


def test_tiled_equals_full_frame_for_pointwise_model():
    torch.manual_seed(0)
    model = Pointwise()
    packed = torch.rand(4, 50, 70)
    full = model(packed[None])[0]
    tiled = develop_tiled(model, packed, tile=16, overlap=4)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)


def test_tiled_unet_output_shape_and_range():
    torch.manual_seed(0)
    out = develop_tiled(GenerativeBlock(2).eval(), torch.rand(4, 40, 56), tile=16, overlap=4)
    assert out.shape == (3, 80, 112) and 0 <= out.min() and out.max() <= 1


def test_develop_trainer_checkpoint_8_bit(photo, checkpoint, tmp_path):
    out = tmp_path / "out.png"
    assert (
        develop(str(photo), "--checkpoint", str(checkpoint), "--ratio", "50", "-o", str(out),
                "--tile", "512") == 0  # one tile: a full-frame forward
    )  # fmt: skip
    image = np.asarray(Image.open(out))
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    state = torch.load(checkpoint, weights_only=True)
    model = GenerativeBlock(4)
    model.load_state_dict(state["upper"])
    with torch.no_grad():
        want = model.eval()(_packed(photo, 50)[None])[0].clamp(0, 1)
    want = np.rint(want.permute(1, 2, 0).numpy() * 255).astype(np.int16)
    assert np.abs(image.astype(np.int16) - want).max() <= 1


def test_develop_with_enhancement_16_bit(photo, checkpoint, tmp_path):
    out = tmp_path / "out16.png"
    args = [str(photo), "--checkpoint", str(checkpoint), "--ratio", "50", "-o", str(out)]
    assert develop(*args, "--enhance", "--bits", "16", "--tile", "512") == 0
    image = decode_png16(out)
    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), image >> 8)  # Pillow agrees
    state = torch.load(checkpoint, weights_only=True)
    upper, lower = GenerativeBlock(4).eval(), IlluminationNet(4).eval()
    upper.load_state_dict(state["upper"])
    lower.load_state_dict(state["lower"])
    with torch.no_grad():
        x = upper(_packed(photo, 50)[None]).clamp(0, 1)
        want = (x / lower(x)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    want = np.rint(want * 65535).astype(np.int64)  # one tile: the same computation
    assert np.abs(image.astype(np.int64) - want).max() <= 1
    assert not np.array_equal(image, np.zeros_like(image))


def test_bare_state_dict_and_width_checks(photo, tmp_path, capsys):
    path = tmp_path / "gb.pt"
    torch.save(GenerativeBlock(4).state_dict(), path)
    out = str(tmp_path / "o.png")
    assert develop(str(photo), "--checkpoint", str(path), "--width", "4", "-o", out) == 0
    assert develop(str(photo), "--checkpoint", str(path), "--width", "8", "-o", out) == 2
    assert "width 4" in capsys.readouterr().out
    assert develop(str(photo), "--checkpoint", str(path), "--enhance", "-o", out) == 2
    assert "enhancement network" in capsys.readouterr().out
    prefixed = {f"module.{k}": v for k, v in GenerativeBlock(2).state_dict().items()}
    torch.save(prefixed, path)
    assert load_models(path).width == 2


class NotWeights:
    pass


def test_checkpoints_are_loaded_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"upper": NotWeights()}, path)
    with pytest.raises(ValueError, match=r"not a bgl checkpoint \(corrupt or another format\)"):
        load_models(path)  # refused by weights_only=True, without torch's advice to lift it
    with pytest.raises(FileNotFoundError):
        load_models(tmp_path / "missing.pt")


def test_orientation_is_applied_like_libraw(tmp_path, checkpoint):
    mosaic = mosaic_from_linear(torch.rand(4, 16, 24, generator=torch.Generator().manual_seed(1)))
    for flip_tag, flip in ((3, 3), (6, 6), (8, 5)):
        path = write_dng(tmp_path / f"o{flip_tag}.dng", mosaic, orientation=flip_tag)
        with rawpy.imread(str(path)) as raw:
            assert raw.sizes.flip == flip
            upright = raw.postprocess(output_bps=16)
            sensor = raw.postprocess(output_bps=16, user_flip=0)
        np.testing.assert_array_equal(orient(sensor, flip), upright)
    plain = write_dng(tmp_path / "plain.dng", mosaic)
    rotated = write_dng(tmp_path / "rot.dng", mosaic, orientation=6)
    outs = []
    for src in (plain, rotated):
        dst = tmp_path / f"{src.stem}.png"
        assert (
            develop(str(src), "--checkpoint", str(checkpoint), "--ratio", "4", "-o", str(dst)) == 0
        )
        outs.append(np.asarray(Image.open(dst)))
    assert outs[1].shape == (48, 32, 3)
    np.testing.assert_array_equal(outs[1], np.rot90(outs[0], -1))


def test_bad_photo_names_the_file(tmp_path, checkpoint, capsys):
    fake = tmp_path / "IMG_1.CR2"
    fake.write_bytes(b"JFIF" * 100)
    assert develop(str(fake), "--checkpoint", str(checkpoint)) == 2
    assert "IMG_1.CR2" in capsys.readouterr().out
    assert develop(str(tmp_path / "none.NEF"), "--checkpoint", str(checkpoint)) == 2
    assert "none.NEF" in capsys.readouterr().out


def test_auto_ratio():
    assert auto_ratio(np.full((4, 2, 2), 0.001, np.float32)) == pytest.approx(100.0)
    assert auto_ratio(np.zeros((4, 2, 2), np.float32)) == 300.0
    assert auto_ratio(np.full((4, 2, 2), 0.5, np.float32)) == 1.0


@pytest.fixture(scope="module")
def canonical_checkpoint(tmp_path_factory):
    """A checkpoint whose config says F was trained on canonical RAW from many cameras."""
    tmp = tmp_path_factory.mktemp("canonical")
    cfg = from_dict(
        tiny_config_dict(
            tmp,
            model={"generator_width": 4},
            task={"options": {"width": 4}},
            data={"raw_space": "canonical", "camera_seed": None},
        )
    )
    return Trainer(cfg).save(tmp / "checkpoint.pt")


def test_canonical_checkpoint_feeds_f_the_canonical_raw_and_compares(
    photo, canonical_checkpoint, tmp_path, capsys
):
    out, side = tmp_path / "c.png", tmp_path / "side.png"
    argv = [str(photo), "--checkpoint", str(canonical_checkpoint), "--ratio", "50", "-o", str(out)]
    assert develop(*argv, "--compare", str(side), "--tile", "512") == 0
    printed = capsys.readouterr().out
    assert "canonical" in printed and "grey SSIM" in printed
    image = np.asarray(Image.open(out))
    assert image.shape == (48, 64, 3)
    frame = read_raw(photo)
    assert frame.wb == pytest.approx((2.0, 1.0, 1 / 0.6, 1.0), rel=1e-4)  # write_dng's neutral
    model = GenerativeBlock(4).eval()
    model.load_state_dict(torch.load(canonical_checkpoint, weights_only=True)["upper"])
    z = canonical_packed(_packed(photo, 50), frame.wb, frame.cam2rgb)
    with torch.no_grad():
        want = model(z[None])[0].clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(image.astype(np.int16) - np.rint(want * 255).astype(np.int16)).max() <= 1
    # the side-by-side picture: bgl left, LibRaw right, twice as wide
    pair = np.asarray(Image.open(side))
    assert pair.shape == (48, 128, 3)
    np.testing.assert_array_equal(pair[:, :64], image)
    with rawpy.imread(str(photo)) as raw:
        libraw = raw.postprocess(
            use_camera_wb=True, no_auto_bright=True, output_bps=16, user_flip=0, bright=50.0
        )
    np.testing.assert_array_equal(pair[:, 64:], np.rint(libraw / 65535 * 255).astype(np.uint8))
    # the numbers, from Python
    result = develop_file(photo, canonical_checkpoint, out, ratio=50, compare=side, tile=512)
    assert result.raw_space == "canonical" and result.compare == str(side)
    comparison = compare_with_libraw(photo, want, 50, frame.wb)
    assert result.mean_ratio == pytest.approx(comparison.mean_ratio, rel=1e-5)
    assert result.ssim_grey == pytest.approx(comparison.ssim_grey, abs=1e-5)
    means = want.reshape(-1, 3).mean(0) / (libraw.reshape(-1, 3).mean(0) / 65535)
    assert comparison.mean_ratio == pytest.approx(tuple(means), rel=1e-3)
    assert -1 <= comparison.ssim_grey <= 1
    # auto exposure from the camera RAW, as for a camera block (see auto_ratio)
    auto = develop_file(photo, canonical_checkpoint, out, ratio="auto")
    assert auto.ratio == pytest.approx(auto_ratio(frame.normalized(1.0)))


def test_raw_space_and_compare_errors(photo, checkpoint, canonical_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "o.png")
    base = [str(photo), "--checkpoint", str(canonical_checkpoint), "-o", out]
    assert develop(*base, "--raw-space", "camera") == 2
    assert "trained with data.raw_space 'canonical'" in capsys.readouterr().out
    assert develop(*base, "--compare", out) == 2
    assert "same file as the output" in capsys.readouterr().out
    # a bare state dict has no config: --raw-space says what it was trained on
    bare = tmp_path / "gb.pt"
    torch.save(GenerativeBlock(4).state_dict(), bare)
    assert load_models(bare).raw_space == "camera"
    assert load_models(bare, raw_space="canonical").raw_space == "canonical"
    assert load_models(checkpoint).raw_space == "camera"
    # --compare without a path writes OUTPUT-vs-libraw.png
    assert develop(str(photo), "--checkpoint", str(checkpoint), "-o", out, "--compare") == 0
    assert np.asarray(Image.open(tmp_path / "o-vs-libraw.png")).shape == (48, 128, 3)


def test_auto_tiles_follow_the_training_crop_and_gain_models_re_expose(photo, tmp_path):
    """`--tile auto` cuts the frame into tiles of the block's training crop (here 32 px: 16
    packed, overlap 4); a block trained with input_gain g sees the frame at g / r (r the geometric
    mean of its training ratios) and, without G, its output is re-exposed by r / g."""
    from bgl.develop import auto_tiling, develop_tiled, input_scale
    from bgl.raw.tone import reexpose

    cfg = tiny_config_dict(tmp_path, task={"options": {"width": 4, "input_gain": 30}},
                           model={"generator_width": 4})  # fmt: skip
    trainer = Trainer(from_dict(cfg))
    path = trainer.save(tmp_path / "gain.pt")
    scale = input_scale(trainer.cfg.to_dict())
    assert scale == pytest.approx(30 / (100 * 300) ** 0.5)
    assert auto_tiling(32) == (16, 4) and auto_tiling(None) == (512, 64)
    out = tmp_path / "g.png"
    result = develop_file(photo, path, out, ratio=50, bits=16)
    upper = trainer.upper.eval()
    z = torch.from_numpy(read_raw(photo).normalized(50)) * scale
    want = develop_tiled(upper, z, tile=16, overlap=4, reexposure=1 / scale)
    one_tile = reexpose(upper(z[None]).clamp(0, 1), 1 / scale)[0]
    got = decode_png16(out).astype(np.float64) / 65535
    np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), atol=1 / 65535)
    assert np.abs(got - one_tile.detach().permute(1, 2, 0).numpy()).max() > 1e-3  # tiles differ
    assert result.output_shape == (48, 64)


def test_enhancement_network_is_rebuilt_with_its_trained_form(tmp_path):
    """G's form options travel in the checkpoint's config: a G trained with the headroom
    residual is developed with it (the same weights under SCI's form give another image)."""
    cfg = tiny_config_dict(
        tmp_path,
        task={"options": {"width": 4, "headroom_residual": True, "smooth_sigma": 0.1}},
        model={"generator_width": 4},
    )
    trainer = Trainer(from_dict(cfg))
    path = trainer.save(tmp_path / "headroom.pt")
    lower = load_models(path, enhance=True).lower
    assert lower is not None and lower.headroom_residual
    x = torch.rand(1, 3, 16, 16)
    sci_form = IlluminationNet(4).eval()
    sci_form.load_state_dict(lower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(lower(x), trainer.lower.eval()(x))
        assert (lower(x) - sci_form(x)).abs().max() > 1e-2
