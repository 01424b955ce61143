"""What a run reports when it ends, in one place: the keys that mark the last reports, and the
run summary flattened into one row (`bgl train`'s summary.parquet and a study's trial rows).

A summary's nested mappings become `<key>_<name>` columns: `final_psnr`, `best_value`,
`versions_torch`.
"""

from __future__ import annotations

from typing import Any

#: marks a worker's last report of a run (the run summary)
FINAL_KEY = "bgl_final"
#: marks the Tune trial's last report: its row is written from it
TRIAL_END_KEY = "bgl_trial_end"
#: marks a finished trial's result reported again on a resume (nothing was trained)
REPLAYED_KEY = "bgl_replayed"
#: the final report, written beside a trial's final checkpoint: a trial whose newest checkpoint
#: holds it trained to its end, whatever became of the report on its way to the driver
END_REPORT_NAME = "end_report.json"
#: a run's spending (summary key `budget`, row columns `budget_<key>`; see `bgl.train.budget`)
BUDGET_KEYS = (
    "warm_steps",
    "lower_steps",
    "upper_steps",
    "f_forwards",
    "g_forwards",
    "f_backwards",
    "g_backwards",
)
BUDGET_COLUMNS = tuple(f"budget_{key}" for key in BUDGET_KEYS)


def flatten_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """`Trainer.summary()` as flat columns (mappings become `<key>_<name>`)."""
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            row.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            row[key] = value
    return row
