"""`<study>/plan.json`: how many trials the study must end with, and its Tune experiments in order.

A study may span several Tune experiments in one folder: the first (`tune`), each `--extend`
(`tune-ext1`, ...) and any top-up a resume needed (`tune-resume1`, ...). The plan is what a
resume finishes: the last experiment is restored, then trials are run until the study has
`target` finished trials (None for a grid, whose size is Tune's own).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bgl.config import ConfigError
from bgl.results.parquet import write_text
from bgl.results.tables import finished_trials
from bgl.study.schema import StudyConfig

PLAN = "plan.json"


@dataclass
class Plan:
    target: int | None
    experiments: list[str] = field(default_factory=list)


def write_plan(study_dir: Path, plan: Plan) -> None:
    """Atomically: a killed driver leaves the old plan or the new one."""
    write_text(study_dir / PLAN, json.dumps(asdict(plan)) + "\n")


def read_plan(study: StudyConfig) -> Plan:
    """The study's plan; a study written before plans existed gets one from its folders."""
    path = study.study_dir / PLAN
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return Plan(data["target"], list(data["experiments"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a bgl study plan ({exc})") from None
    folders = sorted(
        (p.name for p in study.study_dir.glob("tune-ext*") if p.is_dir()),
        key=lambda n: int(n.removeprefix("tune-ext") or 0),
    )
    target = None if study.sampler == "grid" else study.num_samples
    if folders and target is not None:  # extended before plans: its size is what it holds
        target = max(target, len(finished_trials(study.study_dir)))
    return Plan(target, ["tune", *folders])
