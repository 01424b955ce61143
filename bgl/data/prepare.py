"""Which items a dataset's packed cache holds, and how each is decoded (`bgl data prepare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bgl.data.splits import REAL_DATASETS


def prepare_plan(dataset: str, root: Path, skip_bad: bool) -> tuple[list, Any, Any]:
    """(items, decoder, bad-item log) of one dataset."""
    from bgl.data.errors import BadItemLog

    bad = BadItemLog(skip_bad, dataset)
    if dataset == "sid":
        from bgl.data.sid import decode_sid, sid_prepare_items

        return sid_prepare_items(root, bad), decode_sid(root), bad
    if dataset == "darkface":
        from bgl.data.darkface import darkface_prepare_items, decode_darkface

        return darkface_prepare_items(root, bad), decode_darkface(root), bad
    if dataset == "acdc":
        from bgl.data.acdc import acdc_prepare_items, decode_acdc

        return acdc_prepare_items(root, bad), decode_acdc(root), bad
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(REAL_DATASETS)}")
