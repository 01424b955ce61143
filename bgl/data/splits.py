"""Dataset registry: a data config -> the train / val / test splits of the bilevel problem.

train feeds L_G (lower level), val feeds L_F (upper level), test is held out for evaluation.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from bgl.config import ConfigError, DataConfig

SPLITS = ("train", "val", "test")
DATASETS = ("synthetic",)


def build_splits(cfg: DataConfig) -> dict[str, Dataset]:
    if cfg.name == "synthetic":
        from bgl.data.synthetic import SyntheticLowLight

        extra: dict = {"camera_seed": cfg.camera_seed}
        if cfg.ratio_range is not None:
            extra["ratio_range"] = cfg.ratio_range
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        return {
            split: SyntheticLowLight(sizes[split], size=cfg.crop, seed=3 * cfg.seed + i, **extra)
            for i, split in enumerate(SPLITS)
        }
    raise ConfigError(f"data.name: unknown dataset {cfg.name!r}; available: {', '.join(DATASETS)}")
