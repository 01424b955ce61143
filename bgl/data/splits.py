"""Dataset registry: a data config -> the train / val / test splits of the bilevel problem.

train feeds L_G (lower level), val feeds L_F (upper level), test is held out for evaluation.

Real datasets (sid, darkface, acdc) read ``data.root`` in their published layout. Their split
membership is fixed by the dataset (SID's list files; a fixed-seed partition for DARK FACE and
ACDC, see their modules); ``data.{train,val,test}_size`` then take a seeded subset of that many
items (0 or less: the whole split). ``data.crop`` is the RGB side of training/validation crops,
``data.eval_crop`` that of the test split (None: data.crop; 0: full frames).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path

from torch.utils.data import Dataset

from bgl.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: seed offset of a procedural dataset's selection split (far from 3·seed + i of the others)
SELECT_SEED = 1_000_003
REAL_DATASETS = ("sid", "darkface", "acdc")
#: Procedural datasets made in memory (no files): name -> "module:Class". Each class takes
#: (n, size=crop, seed=..., camera_seed=..., [ratio_range=...], [max_boxes=...], [noise_model=...],
#: [raw_space=...]; without noise_model only data.noise "gaussian" is allowed, without raw_space
#: only data.raw_space "camera") and yields the batch keys of its
#: task (enhance: raw/rgb; detect: + boxes/num_boxes; segment: + labels).
SYNTHETIC_DATASETS: dict[str, str] = {
    "synthetic": "bgl.data.synthetic:SyntheticLowLight",
    "synthetic_faces": "bgl.data.synthetic_faces:SyntheticFaces",
    "synthetic_street": "bgl.data.synthetic_street:SyntheticStreet",
    # the positive control's vectors: settings from the control task (`task_data`)
    "control": "bgl.data.control:ControlVectors",
}
DATASETS = (*SYNTHETIC_DATASETS, *REAL_DATASETS)


def build_splits(cfg: DataConfig, task_data: dict | None = None) -> dict[str, Dataset]:
    """The splits of `cfg`'s dataset; `task_data`: what the task hands its dataset
    (`Task.data_options`: only the control task has any, and only its data takes them)."""
    task_data = task_data or {}
    if (cfg.name == "control") != bool(task_data):
        raise ConfigError(
            "data.name: the control task and the control dataset go together "
            "(task.name: control with data.name: control)"
        )
    if cfg.name in SYNTHETIC_DATASETS:
        return _synthetic_splits(cfg, task_data)
    if cfg.name in REAL_DATASETS:
        return _real_splits(cfg)
    raise ConfigError(f"data.name: unknown dataset {cfg.name!r}; available: {', '.join(DATASETS)}")


def check_layout(cfg: DataConfig) -> None:
    """Cheaply check that `cfg` names a dataset whose files are where its layout says, without
    decoding anything; ConfigError names the key and the first missing file or folder.
    Procedural datasets have nothing to check."""
    if cfg.name in SYNTHETIC_DATASETS:
        return
    if cfg.name not in REAL_DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset {cfg.name!r}; available: {', '.join(DATASETS)}"
        )
    if not cfg.root:
        raise ConfigError(f"data.root: dataset {cfg.name!r} needs the folder that holds its files")
    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} does not exist (or is not a folder)")
    from bgl.data.errors import BadItemLog, DataError

    try:
        if cfg.name == "sid":
            from bgl.data.sid import read_sid_list

            for split in SPLITS:  # every listed file exists (first missing one named)
                read_sid_list(root, split, BadItemLog(skip_bad=cfg.skip_bad))
        else:
            acdc = [root / t / "night" / s for t in ("rgb_anon", "gt") for s in ("train", "val")]
            folders = [root / "image", root / "label"] if cfg.name == "darkface" else acdc
            for folder in folders:
                if not folder.is_dir():
                    raise DataError(folder, f"{cfg.name} folder not found")
    except DataError as exc:
        raise ConfigError(f"data.root: {exc}") from None


def _synthetic_splits(cfg: DataConfig, task_data: dict) -> dict[str, Dataset]:
    """Four independently seeded procedural splits sharing one synthetic camera."""
    module, _, attr = SYNTHETIC_DATASETS[cfg.name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    accepted = inspect.signature(cls.__init__).parameters
    extra: dict = {"camera_seed": cfg.camera_seed, **task_data}
    if cfg.ratio_range is not None:
        extra["ratio_range"] = cfg.ratio_range
    if "max_boxes" in accepted:
        extra["max_boxes"] = cfg.max_boxes
    if "noise_model" in accepted:
        extra["noise_model"] = cfg.noise
    elif cfg.noise != "gaussian":
        raise ConfigError(f"data.noise: dataset {cfg.name!r} supports only 'gaussian'")
    if "lighting" in accepted:
        extra["lighting"] = cfg.lighting
    elif cfg.lighting != "flat":
        raise ConfigError(f"data.lighting: dataset {cfg.name!r} supports only 'flat'")
    if "raw_space" in accepted:
        extra["raw_space"] = cfg.raw_space
    elif cfg.raw_space != "camera":
        raise ConfigError(f"data.raw_space: dataset {cfg.name!r} supports only 'camera'")
    _check_select(cfg)
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
    splits = {
        split: cls(sizes[split], size=cfg.crop, seed=3 * cfg.seed + i, **extra)
        for i, split in enumerate(SPLITS)
    }
    splits["select"] = cls(cfg.select_size, size=cfg.crop, seed=SELECT_SEED + cfg.seed, **extra)
    return splits


def _check_select(cfg: DataConfig) -> None:
    if cfg.select_size < 1:
        raise ConfigError(
            "data.select_size: at least 1 (decisions read the selection split, never test)"
        )


def hold_out_selection(val: Dataset, n: int, what: str) -> tuple[Dataset, Dataset]:
    """(val without its last `n` items, those `n` items): a selection split that shares no item
    with the validation split L_F trains on."""
    from torch.utils.data import Subset

    total = len(val)  # type: ignore[arg-type]
    if total <= n:
        raise ConfigError(
            f"data.select_size: {what}'s validation split has {total} items, so {n} cannot be "
            "held out for selection and leave any for L_F; lower data.select_size"
        )
    return Subset(val, range(total - n)), Subset(val, range(total - n, total))


def _real_splits(cfg: DataConfig) -> dict[str, Dataset]:
    """SID / DARK FACE / ACDC splits."""
    if not cfg.root:
        raise ConfigError(f"data.root: dataset {cfg.name!r} needs the folder that holds its files")
    if not Path(cfg.root).is_dir():
        raise ConfigError(f"data.root: {cfg.root} is not a folder")
    cache, skip_bad, eval_crop = cfg.cache, cfg.skip_bad, cfg.eval_crop
    from bgl.data.real import SubsetTooLarge

    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}

    common = {"cache": cache, "skip_bad": skip_bad, "seed": cfg.seed}
    if cfg.name == "sid":
        from bgl.data.sid import SIDSony as cls

        common["raw_space"] = cfg.raw_space  # canonical: from each file's own metadata
    elif cfg.name == "darkface":
        from bgl.data.darkface import DarkFace as cls

        common["max_boxes"] = cfg.max_boxes
    else:
        from bgl.data.acdc import ACDCNight as cls
    if cfg.name == "sid" and cfg.ratio_range is not None:
        log.warning("data.ratio_range is ignored for sid: ratios come from the exposure times")
    if cfg.name == "sid" and cfg.noise != "gaussian":
        log.warning("data.noise is ignored for sid: its RAW files carry the camera's own noise")
    if cfg.name != "sid":
        common.update(ratio_range=cfg.ratio_range, camera_seed=cfg.camera_seed, synth_seed=cfg.seed)
        common["noise_model"] = cfg.noise
    _check_select(cfg)
    if sizes["val"] > 0:  # the selection items come out of the validation split
        sizes["val"] += cfg.select_size
    splits: dict[str, Dataset] = {}
    for split in SPLITS:
        crop = cfg.crop if split != "test" or eval_crop is None else int(eval_crop)
        try:
            splits[split] = cls(cfg.root, split, crop, size=sizes[split], **common)
        except SubsetTooLarge as exc:
            raise ConfigError(f"data.{split}_size: {exc}") from None
        if cfg.name != "sid":  # DARK FACE / ACDC: unprocessed with each item's own camera
            splits[split].use_raw_space(cfg.raw_space)  # type: ignore[attr-defined]
        bad = splits[split].bad  # type: ignore[attr-defined]
        if bad.items:
            log.warning(bad.summary())
    splits["val"], splits["select"] = hold_out_selection(splits["val"], cfg.select_size, cfg.name)
    return splits
