"""Optuna's parameter importances of a study, computed from its journal (read only).

PED-ANOVA first (no extra dependency), fANOVA as the fallback (needs scikit-learn); one set per
objective of a multi-objective study.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgl.analysis.compare import plural
from bgl.analysis.query import ResultsError, columns_of, is_number, load_trials, study_path
from bgl.results.tables import OPTUNA_JOURNAL as JOURNAL
from bgl.results.tables import TUNE_TRIAL_ATTR


class _ReadOnlyLock:
    """The journal's write lock, refused: reading takes no lock, and nothing here writes."""

    def acquire(self) -> bool:
        raise ResultsError("bgl results importance reads the Optuna journal and never writes it")

    def release(self) -> None:
        pass


def param_importances(results_dir: str | Path, study: str) -> dict[str, Any]:
    """Optuna's parameter importances from the study's journal (`<study>/optuna.journal`).

    PED-ANOVA first (`PedAnovaImportanceEvaluator`); if it fails, fANOVA (seed 0). A
    multi-objective study gets one set per objective (`target=t.values[i]`; PED-ANOVA ranks low
    targets as good, so a maximised objective is negated for it). The journal is read without
    the driver's lock and never written. Returns study, journal, study_name, evaluator,
    fallback (why PED-ANOVA was not used, else None), complete, other_states {state: count},
    objectives [{index, name, direction, importances {param: share}}] (shares sum to 1).
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    folder = Path(results_dir).expanduser().resolve() / study
    if not study or "/" in study or not folder.is_dir():
        study_path(results_dir, study)  # raises, naming the path and the studies there
    journal = folder / JOURNAL
    if not journal.is_file():
        raise ResultsError(
            f"study {study!r} has no Optuna journal ({journal}): a grid or transfer study runs "
            "without a sampler, so it has no importances to compute"
        )
    try:
        storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=_ReadOnlyLock()))
        names = [s.study_name for s in storage.get_all_studies()]
        name = study if study in names else names[0] if len(names) == 1 else None
        if name is None:
            known = ", ".join(names) or "none"
            raise ResultsError(f"{journal}: no Optuna study named {study!r} (studies: {known})")
        ot_study = optuna.load_study(study_name=name, storage=storage)
        trials = ot_study.get_trials(deepcopy=False)
    except ResultsError:
        raise
    except (ValueError, KeyError, OSError) as exc:
        raise ResultsError(f"cannot read the Optuna journal {journal}: {exc}") from exc
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    others = Counter(t.state.name.lower() for t in trials if t.state != TrialState.COMPLETE)
    if len(complete) < 2:
        raise ResultsError(
            f"study {study!r} has {plural(len(complete), 'complete trial')} in its journal "
            f"({len(trials)} in all): importances need at least 2"
        )
    if not any(t.params for t in complete):
        raise ResultsError(f"study {study!r}: its complete trials have no parameters")

    directions = [d.name.lower() for d in ot_study.directions]
    names = _objective_names(ot_study, complete, results_dir, study)
    out: dict[str, Any] = {
        "study": study,
        "journal": str(journal),
        "study_name": name,
        "evaluator": "PedAnovaImportanceEvaluator",
        "fallback": None,
        "complete": len(complete),
        "other_states": dict(sorted(others.items())),
        "objectives": [],
    }
    try:
        sets = _importances(ot_study, directions, fanova=False)
    except Exception as exc:  # noqa: BLE001 - any failure of PED-ANOVA: try fANOVA
        out["fallback"] = f"PED-ANOVA failed: {type(exc).__name__}: {exc}"
        try:
            sets = _importances(ot_study, directions, fanova=True)
        except Exception as exc2:  # noqa: BLE001 - e.g. scikit-learn is not installed
            raise ResultsError(
                f"{out['fallback']}; the fANOVA fallback failed too: {type(exc2).__name__}: {exc2}"
            ) from exc2
        out["evaluator"] = "FanovaImportanceEvaluator"
    out["objectives"] = [
        {"index": i, "name": names[i], "direction": directions[i], "importances": sets[i]}
        for i in range(len(directions))
    ]
    return out


def _importances(ot_study: Any, directions: Sequence[str], fanova: bool) -> list[dict[str, float]]:
    import optuna
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    out = []
    with warnings.catch_warnings():  # PED-ANOVA warns that it ranks low targets as good
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        for i, direction in enumerate(directions):
            evaluator = (
                FanovaImportanceEvaluator(seed=0) if fanova else PedAnovaImportanceEvaluator()
            )
            target = None
            if len(directions) > 1:
                sign = -1.0 if direction == "maximize" and not fanova else 1.0
                target = _objective(i, sign)
            found = get_param_importances(ot_study, evaluator=evaluator, target=target)
            out.append({k: float(v) for k, v in found.items()})
    return out


def _objective(i: int, sign: float) -> Any:
    return lambda t: sign * t.values[i]


def _objective_names(
    ot_study: Any, complete: Sequence[Any], results_dir: str | Path, study: str
) -> list[str]:
    """The study's metric names (Optuna's, else the trial columns whose values are the
    objective values of the same trials), else `objective i`."""
    n = len(ot_study.directions)
    named = ot_study.metric_names
    if named and len(named) == n:
        return list(named)
    try:
        rows = {r.get("trial_id"): r for r in load_trials(results_dir, study)}
    except ResultsError:
        rows = {}
    pairs = [
        (rows[t.user_attrs[TUNE_TRIAL_ATTR]], t.values)
        for t in complete
        if t.user_attrs.get(TUNE_TRIAL_ATTR) in rows
    ]
    names = []
    for i in range(n):
        found = None
        if pairs:
            for column in columns_of([r for r, _ in pairs]):
                if all(
                    is_number(r.get(column)) and math.isclose(float(r[column]), v[i], rel_tol=1e-9)
                    for r, v in pairs
                ) and not column.startswith(("best_", "final_", "last_")):
                    found = column
                    break
        names.append(found or (f"objective {i}" if n > 1 else "objective"))
    return names


# -- helpers --------------------------------------------------------------------------------
