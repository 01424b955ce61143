"""Develop a user's own camera RAW file with a trained generative block (``bgl develop``).

Why tiles: a 24-megapixel frame packs to 4 x 2000 x 3000; SID's U-Net at width 32 would need
several GB of activations at once. The packed frame is cut into overlapping tiles (default 512
packed pixels, 64 of overlap), each tile runs through F (and optionally the enhancement network
G) on its own, and the outputs are blended with weights that ramp linearly across each overlap,
so seams vanish and memory stays bounded by one tile whatever the frame size.

Checkpoints: the training checkpoint written by ``Trainer.save`` ("upper", "lower", "config")
or a bare GenerativeBlock state dict, always read with ``torch.load(weights_only=True)``. The
width is inferred from the weights; ``--width`` (or the checkpoint's config) must agree with it.

Input space: a block trained with ``data.raw_space: canonical`` (its checkpoint's config says so)
gets the file's canonical RAW (:mod:`bgl.raw.colour`): the packed frame is normalised, amplified
and clipped in camera space as training data are, then white-balanced with the file's as-shot
gains and mapped to sRGB primaries with its colour matrix.

Layouts: F is trained on RGGB mosaics, so a GRBG, GBRG or BGGR frame is cropped to start on a
red site (:func:`bgl.raw.bayer.unify_to_rggb`), developed, and padded back by one replicated
row and/or column; the output keeps the frame's size and lines up with the scene pixel for pixel.

Output: the camera's orientation flag is applied (portrait shots come out upright), then an 8- or
16-bit PNG is written. ``compare`` also writes bgl's rendering beside LibRaw's own development of
the file at the same exposure (:func:`compare_with_libraw`), so colour, tone and detail can be
judged against a reference on any camera.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bgl.models.enhance import IlluminationNet
from bgl.models.generator import MULTIPLE, GenerativeBlock
from bgl.models.weights import NotACheckpointError, read_torch_file
from bgl.raw.bayer import unify_to_rggb
from bgl.raw.colour import RAW_SPACES
from bgl.raw.tone import reexpose
from bgl.raw.unprocess import DEFAULT_RATIO_RANGE

__all__ = [
    "AUTO_RATIO_TARGET",
    "Comparison",
    "DevelopResult",
    "LoadedModels",
    "auto_ratio",
    "blend_ramp",
    "compare_with_libraw",
    "develop_file",
    "libraw_development",
    "develop_tiled",
    "load_models",
    "orient",
    "tile_starts",
]

log = logging.getLogger(__name__)

#: ``--ratio auto`` scales the frame so its mean linear RAW value becomes this (a heuristic:
#: a well-exposed linear RAW averages roughly a tenth of white), within SID's 1..300.
AUTO_RATIO_TARGET = 0.1
MAX_RATIO = 300.0


@dataclass
class LoadedModels:
    upper: GenerativeBlock
    lower: IlluminationNet | None
    width: int
    source: str  # "trainer checkpoint" or "state dict"
    raw_space: str = "camera"  # F's input space: the checkpoint's data.raw_space
    train_crop: int | None = None  # the checkpoint's data.crop (RGB pixels)
    input_scale: float | None = None  # gain models: F saw the short exposure at this fraction


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop DDP/compile prefixes ('module.', '_orig_mod.') so any saved F loads."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _load_state(model: nn.Module, state: dict[str, Any], path: Path, what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the {what} weights do not fit: {exc}") from None


def load_models(
    path: str | Path,
    *,
    width: int | None = None,
    enhance: bool = False,
    raw_space: str | None = None,
) -> LoadedModels:
    """F (and G with ``enhance``) from a trainer checkpoint or a bare GenerativeBlock state dict.

    ``raw_space``: F's input space; None takes the checkpoint's ``data.raw_space`` ("camera" for
    a bare state dict or an older checkpoint); a value that contradicts the checkpoint is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_torch_file(path, "bgl checkpoint")
    if not isinstance(state, dict):
        raise NotACheckpointError(f"{path}: not a bgl checkpoint (corrupt or another format)")
    config: dict[str, Any] = {}
    lower_state = None
    if "upper" in state:
        upper_state, source = state["upper"], "trainer checkpoint"
        config = state.get("config") or {}
        lower_state = state.get("lower")
    elif state and all(isinstance(v, torch.Tensor) for v in state.values()):
        upper_state, source = state, "state dict"
    else:
        raise ValueError(
            f"{path}: neither a training checkpoint (with 'upper') nor a GenerativeBlock state dict"
        )
    upper_state = _strip_prefix(upper_state)
    first = upper_state.get("down.0.0.weight")
    if not isinstance(first, torch.Tensor) or first.ndim != 4:
        raise ValueError(f"{path}: no GenerativeBlock weights (missing 'down.0.0.weight')")
    inferred = int(first.shape[0])
    config_width = (config.get("model") or {}).get("generator_width")
    for name, value in (
        ("--width", width),
        ("the checkpoint's model.generator_width", config_width),
    ):
        if value is not None and int(value) != inferred:
            raise ValueError(f"{path}: {name} is {value} but the weights have width {inferred}")
    trained_space = (config.get("data") or {}).get("raw_space")
    for name, value in (
        ("the checkpoint's data.raw_space", trained_space),
        ("--raw-space", raw_space),
    ):
        if value is not None and value not in RAW_SPACES:
            raise ValueError(
                f"{path}: {name} is {value!r}; expected one of {', '.join(RAW_SPACES)}"
            )
    if raw_space is not None and trained_space is not None and raw_space != trained_space:
        raise ValueError(
            f"{path}: --raw-space is {raw_space!r} but the block was trained with data.raw_space "
            f"{trained_space!r}"
        )
    space = raw_space or trained_space or "camera"
    residual = (config.get("model") or {}).get("generator_residual") or "none"
    upper = GenerativeBlock(width=inferred, in_channels=int(first.shape[1]), residual=residual)
    _load_state(upper, upper_state, path, "generative block")
    lower = None
    if enhance:
        if lower_state is None:
            raise ValueError(
                f"{path}: --enhance needs a training checkpoint with the enhancement network "
                "('lower'); this file holds the generative block only"
            )
        task = config.get("task") or {}
        if task.get("name", "enhance") != "enhance":
            raise ValueError(
                f"{path}: --enhance needs an enhancement-task checkpoint; this one is for task "
                f"{task.get('name')!r}"
            )
        lower_state = _strip_prefix(lower_state)
        accepted = set(inspect.signature(IlluminationNet.__init__).parameters) - {"self"}
        options = {k: v for k, v in (task.get("options") or {}).items() if k in accepted}
        if "in_conv.0.weight" in lower_state:
            options["width"] = int(lower_state["in_conv.0.weight"].shape[0])
        lower = IlluminationNet(**options)
        _load_state(lower, lower_state, path, "enhancement network")
    crop = (config.get("data") or {}).get("crop")
    return LoadedModels(
        upper.eval(),
        lower.eval() if lower else None,
        inferred,
        source,
        space,
        int(crop) if crop else None,
        input_scale(config),
    )


def input_scale(config: dict[str, Any]) -> float | None:
    """For an enhancement block trained with `input_gain` g: g / r, r the geometric mean of its
    training exposure ratios. F saw the short exposure at gain g, i.e. about this fraction of a
    well-exposed frame, and its output is the reference re-exposed by the same fraction."""
    task = config.get("task") or {}
    gain = (task.get("options") or {}).get("input_gain") if task.get("name") == "enhance" else None
    if gain is None:
        return None
    low, high = (config.get("data") or {}).get("ratio_range") or DEFAULT_RATIO_RANGE
    return float(gain) / math.sqrt(float(low) * float(high))


def auto_tiling(train_crop: int | None) -> tuple[int, int]:
    """(tile, overlap) in packed pixels for ``--tile auto``: the block's training crop, a quarter
    of it shared between neighbours. F's four poolings see the whole crop during training, so on
    much larger inputs its deepest features, and with them colour and exposure, change; tiles of
    the training size keep the block in the regime it learned. Without a known crop: 512 / 64."""
    if not train_crop:
        return 512, 64
    tile = max(MULTIPLE, train_crop // 2)
    return tile, max(2, tile // 4)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, size) with at least ``overlap`` shared between neighbours."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def blend_ramp(length: int, ramp: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D blending weights: linear ramps of ``ramp`` samples at the ends that meet a neighbour."""
    w = torch.ones(length, dtype=torch.float32)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        edge = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if rise:
            w[:ramp] = edge
        if fall:
            w[length - ramp :] = edge.flip(0)
    return w


@torch.no_grad()
def develop_tiled(
    upper: nn.Module,
    packed: torch.Tensor,
    *,
    lower: nn.Module | None = None,
    tile: int = 512,
    overlap: int = 64,
    device: torch.device | str = "cpu",
    reexposure: float | None = None,
) -> torch.Tensor:
    """(4, h, w) packed RAW -> (3, 2h, 2w) RGB in [0, 1] on the CPU, one tile at a time.

    ``tile``/``overlap`` are in packed pixels; the tile is rounded up to a multiple of 16 (F's
    pooling) and the overlap to an even number.
    """
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"packed RAW must be (4, h, w); got {tuple(packed.shape)}")
    if tile < MULTIPLE or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= {MULTIPLE} and 0 <= overlap < tile; got {tile}, {overlap}")
    tile = -(-tile // MULTIPLE) * MULTIPLE
    overlap += overlap % 2
    device = torch.device(device)
    _, h, w = packed.shape
    out = torch.zeros((3, 2 * h, 2 * w), dtype=torch.float32)
    weight = torch.zeros((1, 2 * h, 2 * w), dtype=torch.float32)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for y in ys:
        th = min(tile, h - y)
        wy = blend_ramp(2 * th, 2 * overlap, rise=y > 0, fall=y + th < h)
        for x in xs:
            tw = min(tile, w - x)
            wx = blend_ramp(2 * tw, 2 * overlap, rise=x > 0, fall=x + tw < w)
            z = packed[None, :, y : y + th, x : x + tw].to(device, torch.float32)
            rgb = upper(z).clamp(0.0, 1.0)
            if lower is not None:
                rgb = (rgb / lower(rgb)).clamp(0.0, 1.0)
            elif reexposure is not None:  # a gain model's F alone: back to full exposure
                rgb = reexpose(rgb, reexposure)
            blend = (wy[:, None] * wx[None, :])[None]
            ys2, xs2 = slice(2 * y, 2 * (y + th)), slice(2 * x, 2 * (x + tw))
            out[:, ys2, xs2] += rgb[0].float().cpu() * blend
            weight[:, ys2, xs2] += blend
    return out / weight


def auto_ratio(linear: np.ndarray, target: float = AUTO_RATIO_TARGET) -> float:
    """The amplification that brings the mean of a (ratio 1) linear RAW to ``target``.

    Taken on the *camera* RAW, before white balance, for canonical blocks too: the ratio
    multiplies camera RAW before the clip in training (and in SID), and the target describes
    camera RAW. Measured on the synthetic training data (256 scenes of 64 px, default ratios and
    noise, a camera per image): inputs average 0.15 in camera space but 0.21 once white-balanced
    and canonical, so choosing the ratio after white balance with the same target would give a
    canonical block inputs about half as bright as it was trained on (and a different exposure
    than a camera block gets for the same file).
    """
    mean = float(np.mean(linear))
    return float(np.clip(target / max(mean, 1e-6), 1.0, MAX_RATIO))


def orient(image: np.ndarray, flip: int) -> np.ndarray:
    """Apply LibRaw's orientation code to an (H, W, C) image (0 none, 3 180°, 5 CCW, 6 CW)."""
    if flip == 3:
        return image[::-1, ::-1]
    if flip == 5:
        return np.rot90(image, 1)
    if flip == 6:
        return np.rot90(image, -1)
    return image


#: Luma weights (Rec. 709) of the grey image the comparison's SSIM is taken on.
GREY_WEIGHTS = (0.2126, 0.7152, 0.0722)


def libraw_development(photo: str | Path, ratio: float, wb: Any = None) -> np.ndarray:
    """LibRaw's own development of ``photo`` at bgl's exposure: (H, W, 3) float32 in [0, 1].

    ``postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16, user_flip=0,
    bright=..., output_color=sRGB, adjust_maximum_thr=0)``, in sensor orientation. ``bright``
    scales the linear, white-balanced signal before LibRaw's BT.709 gamma curve (its white point
    becomes 1/bright with no_auto_bright), so it plays the role of bgl's ratio. LibRaw scales its
    multipliers so the smallest is 1 where bgl's have G = 1; ``bright`` is ``ratio`` times the
    smallest of bgl's gains ``wb`` (packed order), which makes the two exposures equal.
    ``adjust_maximum_thr=0`` keeps the file's white level, as bgl does.
    """
    import rawpy

    from bgl.raw.read import libraw_postprocess

    bright = float(ratio) * min(1.0, *(float(g) for g in wb)) if wb is not None else float(ratio)
    rgb = libraw_postprocess(
        photo,
        use_camera_wb=True,
        no_auto_bright=True,
        output_bps=16,
        user_flip=0,
        bright=bright,
        output_color=rawpy.ColorSpace.sRGB,
        adjust_maximum_thr=0.0,
    )
    return rgb.astype(np.float32) / np.float32(65535.0)


@dataclass
class Comparison:
    """bgl's rendering against LibRaw's development of the same file at the same exposure."""

    libraw: np.ndarray  # (H, W, 3) float32 in [0, 1], sensor orientation, cropped to bgl's
    mean_ratio: tuple[float, float, float]  # per channel R, G, B: mean(bgl) / mean(LibRaw)
    ssim_grey: float  # SSIM of the Rec. 709 luma images (bgl vs LibRaw)


def compare_with_libraw(
    photo: str | Path, rgb: np.ndarray, ratio: float, wb: Any = None
) -> Comparison:
    """Compare bgl's (H, W, 3) rendering in [0, 1] (sensor orientation, as develop_tiled makes
    it) with LibRaw's development at ``ratio`` (see :func:`libraw_development`).

    Mean ratios say whether colour and overall tone agree (1.0 each: same colour cast and
    brightness); the grey SSIM whether structure agrees (detail, noise, demosaicing artefacts).
    """
    from bgl.metrics.image import ssim

    reference = libraw_development(photo, ratio, wb)
    h, w = rgb.shape[:2]
    if reference.shape[0] < h or reference.shape[1] < w:
        raise ValueError(
            f"{photo}: LibRaw's development is {reference.shape[:2]}, smaller than bgl's {(h, w)}"
        )
    reference = np.ascontiguousarray(reference[:h, :w])
    ours = np.asarray(rgb, dtype=np.float32)
    means = ours.reshape(-1, 3).mean(axis=0)
    ref_means = reference.reshape(-1, 3).mean(axis=0)
    ratios = tuple(float(m / max(r, 1e-12)) for m, r in zip(means, ref_means))
    weights = np.asarray(GREY_WEIGHTS, dtype=np.float32)
    grey = torch.from_numpy(ours @ weights)[None, None]
    grey_ref = torch.from_numpy(reference @ weights)[None, None]
    score = float(ssim(grey, grey_ref)[0])
    return Comparison(reference, ratios, score)  # type: ignore[arg-type]


@dataclass
class DevelopResult:
    output: str
    ratio: float
    pattern: str
    raw_shape: tuple[int, int]
    output_shape: tuple[int, int]
    bits: int
    width: int
    enhanced: bool
    seconds: float
    raw_space: str = "camera"
    compare: str | None = None  # the side-by-side PNG (bgl | LibRaw), when asked for
    mean_ratio: tuple[float, float, float] | None = None  # see Comparison
    ssim_grey: float | None = None


def develop_file(
    photo: str | Path,
    checkpoint: str | Path,
    output: str | Path,
    *,
    ratio: float | str = "auto",
    width: int | None = None,
    enhance: bool = False,
    bits: int = 8,
    tile: int | str = "auto",
    overlap: int | None = None,
    device: str = "auto",
    raw_space: str | None = None,
    compare: str | Path | None = None,
) -> DevelopResult:
    """Read ``photo``, run F (and G) tiled, orient, and write an 8/16-bit PNG to ``output``.

    ``raw_space``: see :func:`load_models`. ``compare``: also write bgl's rendering and LibRaw's
    side by side (bgl left) to this PNG and report :func:`compare_with_libraw`'s numbers.
    """
    from bgl.data.png import write_png
    from bgl.raw.read import read_raw
    from bgl.train.device import resolve_device

    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16; got {bits}")
    start = time.perf_counter()
    models = load_models(checkpoint, width=width, enhance=enhance, raw_space=raw_space)
    canonical = models.raw_space == "canonical"
    dev = resolve_device(device)
    frame = read_raw(photo)
    if ratio == "auto":
        ratio = auto_ratio(frame.normalized(1.0))  # camera RAW, whatever F's input space
        log.info("exposure ratio (auto): %.1f", ratio)
    ratio = float(ratio)
    if not ratio > 0:
        raise ValueError(f"ratio must be positive; got {ratio}")
    packed = torch.from_numpy(frame.canonical(ratio) if canonical else frame.normalized(ratio))
    # F was trained on RGGB mosaics: develop the RGGB-aligned crop and pad it back into place
    packed, (r0, c0) = unify_to_rggb(packed, frame.pattern)
    scale = models.input_scale
    if scale is not None:  # F develops the short exposure; G (or re-exposure) brightens it
        packed = packed * scale
    if tile == "auto":
        tile, auto_overlap = auto_tiling(models.train_crop)
        overlap = auto_overlap if overlap is None else overlap
    overlap = 64 if overlap is None else overlap
    upper = models.upper.to(dev)
    lower = models.lower.to(dev) if models.lower is not None else None
    rgb = develop_tiled(
        upper,
        packed,
        lower=lower,
        tile=int(tile),
        overlap=overlap,
        device=dev,
        reexposure=None if scale is None else 1.0 / scale,
    )
    rgb = torch.nn.functional.pad(rgb[None], (c0, c0, r0, r0), mode="replicate")[0]
    image = rgb.permute(1, 2, 0).numpy()
    scale = 255.0 if bits == 8 else 65535.0
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.rint(image * scale).astype(dtype)
    pixels = orient(pixels, frame.flip)
    write_png(output, pixels)
    comparison = None
    if compare is not None:
        comparison = compare_with_libraw(photo, image, ratio, frame.wb)
        theirs = orient(np.rint(comparison.libraw * scale).astype(dtype), frame.flip)
        write_png(compare, np.concatenate([pixels, theirs], axis=1))
        log.info(
            "vs LibRaw: mean ratio R %.3f G %.3f B %.3f, grey SSIM %.3f",
            *comparison.mean_ratio,
            comparison.ssim_grey,
        )
    return DevelopResult(
        str(output),
        ratio,
        frame.pattern,
        (frame.packed.shape[1] * 2, frame.packed.shape[2] * 2),
        (pixels.shape[0], pixels.shape[1]),
        bits,
        models.width,
        lower is not None,
        time.perf_counter() - start,
        models.raw_space,
        str(compare) if compare is not None else None,
        comparison.mean_ratio if comparison else None,
        comparison.ssim_grey if comparison else None,
    )
