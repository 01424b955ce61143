"""Study YAML: a base run config, a search space, resources and logging, validated before Ray.

```yaml
name: quickstart
output_dir: results
base: {...}                      # a run config (bgl.config.RunConfig), or `base_file: run.yaml`
search:
  num_samples: 6
  metric: psnr                   # or objectives: [{metric: psnr, mode: max}, ...]
  mode: max
  sampler: tpe                   # tpe | random | grid (grid: Tune grid over categorical params)
  seed: 0
  solvers: [naive, tbgl, ibgl]
  tasks: [enhance]
  params:
    solver.k: {type: int, low: 1, high: 5}           # sampled only when solver is ibgl
    solver.delta: {type: float, low: 1.0e-3, high: 0.1, log: true}   # only for tbgl
    optim.upper_lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    seed: {type: categorical, choices: [0, 1, 2]}
    data.batch_size: {value: 4}                      # a constant
  scheduler: {name: asha, grace_period: 2, reduction_factor: 2}   # optional
resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0, max_concurrent_trials: 1}
checkpoints: {keep: 1, score: true}   # per trial: the last and the best (by the first objective)
logging: {tensorboard: true, mlflow: null, wandb: null}
```
Every error names its key (`search.params.optim.upper_lr: low must be < high`).
`type: transfer` replaces `search` with a `transfer` block (a fixed two-stage design, the paper's
Table 3; see `bgl.study.transfer`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bgl.config import (
    ConfigError,
    RunConfig,
    build_dataclass,
    choice,
    choices,
    from_dict,
    integer,
    number,
    read_yaml,
    reject_unknown,
    set_path,
)
from bgl.solvers import KEYS, SOLVER_NAMES, get_solver, solvers_using

if TYPE_CHECKING:
    from bgl.study.design import TransferSpec


def solver_only(path: str) -> list[str] | None:
    """The solvers a `solver.*` parameter applies to (Optuna's define-by-run space samples it
    only for them), or None where every solver reads it (or it is no solver key)."""
    prefix, _, key = path.partition(".")
    if prefix != "solver" or key not in KEYS:
        return None
    users = solvers_using(key)
    return None if len(users) == len(SOLVER_NAMES) else users


PARAM_TYPES = ("int", "float", "categorical")


@dataclass
class ParamSpec:
    path: str
    type: str  # int | float | categorical | constant
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    value: Any = None
    solvers: list[str] | None = None  # sample only for these solvers

    def applies_to(self, solver: str) -> bool:
        return self.solvers is None or solver in self.solvers


@dataclass
class Objective:
    metric: str
    mode: str  # max | min


@dataclass
class SchedulerSpec:
    name: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None


@dataclass
class Resources:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int = 1
    trial_cpus: float = 0.01  # the trial driver only waits on its workers
    max_failures: int = 1  # restarts from the last checkpoint (worker group, or trial)
    # ray_train: a TorchTrainer per trial (any number of workers); in_trial: one worker trained in
    # the Tune trial process itself, without Ray Train's ~30 s start-up (workers_per_trial = 1)
    launcher: str = "ray_train"
    # a trial waiting this long for its resources is reported, with what it waits for
    pending_warn_s: float = 120.0


@dataclass
class Checkpoints:
    """Which checkpoints each trial keeps (Tune's and Ray Train's CheckpointConfig).

    The default keeps two per trial at most: the last (always kept: a restart resumes from it)
    and the best by the study's first objective; every other one is deleted as the trial goes.
    """

    keep: int | None = 1  # best (or, with score false, most recent) checkpoints kept; null: all
    score: bool = True  # rank by the study's first objective (false: by recency)


@dataclass
class Logging:
    tensorboard: bool = True
    mlflow: dict[str, Any] | None = None  # MLflowLoggerCallback kwargs (checked: _check_mlflow)
    wandb: dict[str, Any] | None = None  # WandbLoggerCallback + wandb.init kwargs (_check_wandb)


# Ray's MLflowLoggerCallback keywords (ray 2.60); bgl fills experiment_name with the study's name
MLFLOW_KEYS = {
    "tracking_uri",
    "registry_uri",
    "experiment_name",
    "tags",
    "tracking_token",
    "save_artifact",
    "log_params_on_trial_end",
}
# Ray's WandbLoggerCallback keywords (ray 2.60) and the wandb.init keywords it passes on (0.31)
WANDB_KEYS = {
    "project",
    "group",
    "api_key_file",
    "excludes",
    "log_config",
    "upload_checkpoints",
    "upload_timeout",
    "video_kwargs",
    "image_kwargs",
    "entity",
    "dir",
    "notes",
    "tags",
    "config_exclude_keys",
    "config_include_keys",
    "job_type",
    "mode",
    "save_code",
    "settings",
    "anonymous",
}
WANDB_MODES = ("online", "offline", "disabled")
# set per trial by the callback: one value for every trial would merge all trials into one run
_WANDB_PER_TRIAL = ("id", "name", "resume", "reinit", "config", "allow_val_change")


@dataclass
class StudyConfig:
    name: str
    base: dict[str, Any]
    output_dir: str = "results"
    num_samples: int = 1
    objectives: list[Objective] = field(default_factory=list)
    sampler: str = "tpe"
    sampler_seed: int | None = 0
    solvers: list[str] = field(default_factory=lambda: ["ibgl"])
    tasks: list[str] = field(default_factory=lambda: ["enhance"])
    params: list[ParamSpec] = field(default_factory=list)
    scheduler: SchedulerSpec | None = None
    initial: list[dict[str, Any]] = field(default_factory=list)  # first points, then the sampler
    resources: Resources = field(default_factory=Resources)
    checkpoints: Checkpoints = field(default_factory=Checkpoints)
    logging: Logging = field(default_factory=Logging)
    source: str | None = None
    transfer: TransferSpec | None = None  # `type: transfer`: the two-stage design, no search

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir).resolve() / self.name

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def trial_config(self, params: dict[str, Any], trial_name: str | None = None) -> RunConfig:
        """The run config of one trial: the base with the sampled values set."""
        data = copy.deepcopy(self.base)
        for path, value in params.items():
            set_path(data, path, value)
        solver = data.setdefault("solver", {})
        if not get_solver(solver.get("name", "ibgl")).takes_k:
            solver["k"] = 1  # k is for solvers taking k lower steps; the others take one
        data["name"] = trial_name or self.name
        data["output_dir"] = self.output_dir
        return from_dict(data)

    @property
    def generators_dir(self) -> Path:
        """A transfer study's stage-1 generative blocks (`<study>/generators/<model>.pt`)."""
        from bgl.study.design import GENERATORS

        return self.study_dir / GENERATORS

    def transfer_trial(
        self, identity: dict[str, Any], trial_name: str
    ) -> tuple[RunConfig, list[str], str | None]:
        """A transfer trial's run config, objective metric and (stage 1) export path."""
        from bgl.study.design import trial_setup

        assert self.transfer is not None
        return trial_setup(
            self.base,
            self.transfer,
            identity,
            generators=self.generators_dir,
            output_dir=self.output_dir,
            trial_name=trial_name,
        )


_TOP = {
    "name",
    "type",
    "output_dir",
    "base",
    "base_file",
    "search",
    "transfer",
    "resources",
    "checkpoints",
    "logging",
}
STUDY_TYPES = ("search", "transfer")
_SEARCH = {
    "num_samples",
    "metric",
    "mode",
    "objectives",
    "sampler",
    "seed",
    "solvers",
    "tasks",
    "params",
    "scheduler",
    "initial",
}


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study YAML; `overrides` (`key.path=value`) apply to the study file."""
    path = Path(path)
    data = read_yaml(path, overrides)
    if "base_file" in data:
        base_path = (path.parent / str(data.pop("base_file"))).resolve()
        if not base_path.is_file():
            raise ConfigError(f"base_file: not found: {base_path}")
        base = yaml.safe_load(base_path.read_text()) or {}
        base.update(data.get("base") or {})
        data["base"] = base
    study = parse_study(data)
    study.source = str(path)
    return study


def parse_study(data: dict[str, Any]) -> StudyConfig:
    reject_unknown(data, _TOP, "")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError("name: a non-empty study name without '/' is required")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base: expected a mapping (a run config)")
    try:
        from_dict(base)
    except ConfigError as exc:
        raise ConfigError(f"base.{exc}") from exc
    study = StudyConfig(name=name, base=base, output_dir=str(data.get("output_dir", "results")))
    kind = choice(data.get("type", "search"), STUDY_TYPES, "type")
    if kind == "transfer":
        _parse_transfer(study, data)
    else:
        if "transfer" in data:
            raise ConfigError("transfer: only a study of type: transfer takes a transfer block")
        _parse_search(study, data.get("search") or {})
    study.resources = build_dataclass(Resources, data.get("resources") or {}, "resources.")
    r = study.resources
    choice(r.launcher, ("ray_train", "in_trial"), "resources.launcher")
    if r.launcher == "in_trial" and r.workers_per_trial != 1:
        raise ConfigError("resources.launcher: in_trial runs exactly one worker per trial")
    if r.workers_per_trial < 1 or r.cpus_per_worker <= 0 or r.max_concurrent_trials < 1:
        raise ConfigError(
            "resources: workers_per_trial, cpus_per_worker and "
            "max_concurrent_trials must be positive"
        )
    study.checkpoints = build_dataclass(Checkpoints, data.get("checkpoints") or {}, "checkpoints.")
    if study.checkpoints.keep is not None and study.checkpoints.keep < 1:
        raise ConfigError("checkpoints.keep: at least 1 (or null to keep every checkpoint)")
    if r.pending_warn_s <= 0:
        raise ConfigError("resources.pending_warn_s: must be positive (seconds)")
    study.logging = build_dataclass(Logging, data.get("logging") or {}, "logging.")
    if study.logging.mlflow is not None:
        study.logging.mlflow = _check_mlflow(study.logging.mlflow, name)
    if study.logging.wandb is not None:
        study.logging.wandb = _check_wandb(study.logging.wandb, name)
    _check_paths_exist(study)
    return study


def _parse_search(study: StudyConfig, search: Any) -> None:
    """The search block of an ordinary (`type: search`) study."""
    base = study.base
    if not isinstance(search, dict):
        raise ConfigError("search: expected a mapping")
    reject_unknown(search, _SEARCH, "search.")
    study.num_samples = integer(search.get("num_samples", 1), "search.num_samples", minimum=1)
    study.objectives = _objectives(search)
    study.sampler = choice(
        search.get("sampler", "tpe"), ("tpe", "random", "grid"), "search.sampler"
    )
    seed = search.get("seed", 0)
    study.sampler_seed = None if seed is None else integer(seed, "search.seed", minimum=0)
    study.solvers = choices(
        search.get("solvers", [base.get("solver", {}).get("name", "ibgl")]),
        SOLVER_NAMES,
        "search.solvers",
    )
    from bgl.tasks import TASKS

    study.tasks = choices(
        search.get("tasks", [base.get("task", {}).get("name", "enhance")]),
        tuple(TASKS),
        "search.tasks",
    )
    params = search.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError("search.params: expected a mapping of config paths to ranges")
    study.params = [_param(path, spec) for path, spec in params.items()]
    initial = search.get("initial") or []
    if not isinstance(initial, list) or not all(isinstance(i, dict) for i in initial):
        raise ConfigError("search.initial: expected a list of {config.path: value} mappings")
    study.initial = initial
    if "scheduler" in search and search["scheduler"] is not None:
        study.scheduler = _scheduler(search["scheduler"])
        if study.multi_objective:
            raise ConfigError("search.scheduler: ASHA needs a single objective")
    if study.sampler == "grid":
        for p in study.params:
            if p.type not in ("categorical", "constant"):
                raise ConfigError(
                    f"search.params.{p.path}: sampler grid takes only choices or constants"
                )


def _parse_transfer(study: StudyConfig, data: dict[str, Any]) -> None:
    """A transfer study: the design replaces the search (see `bgl.study.transfer`)."""
    from bgl.study.design import parse_transfer

    if "search" in data:
        raise ConfigError(
            "search: a transfer study has no search; its trials are transfer.source_tasks x "
            "transfer.source_solvers, then each trained model x transfer.target_tasks"
        )
    if "transfer" not in data:
        raise ConfigError("transfer: required for a study of type: transfer")
    spec = parse_transfer(data["transfer"], study.base)
    study.transfer = spec
    study.solvers = list(spec.source_solvers)
    study.tasks = list(dict.fromkeys([*spec.source_tasks, *spec.target_tasks]))
    study.objectives = [Objective("psnr", "max")]  # per trial: its task's primary metric


def _check_mlflow(block: dict[str, Any], study_name: str) -> dict[str, Any]:
    """`logging.mlflow`: checked here, not when Tune calls the callback's setup after Ray has
    started; a copy with `experiment_name` defaulting to the study's name."""
    key = "logging.mlflow"
    reject_unknown(block, MLFLOW_KEYS, key + ".")
    uri = block.get("tracking_uri")
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(
            f"{key}.tracking_uri: required (without it MLflow writes wherever the process runs); "
            "write e.g. `tracking_uri: file:results/mlruns` (a local file store), "
            "`sqlite:///results/mlflow.db` or `http://host:5000` (a tracking server)"
        )
    _check_types(
        block,
        key,
        ("experiment_name", "registry_uri", "tracking_token"),
        "tags",
        "tag names to values",
    )
    out = dict(block)
    out["experiment_name"] = block.get("experiment_name") or study_name
    return out


def _check_wandb(block: dict[str, Any], study_name: str) -> dict[str, Any]:
    """`logging.wandb`: checked before Ray starts; a copy with `project` and `group` defaulting
    to the study's name (Ray's default group is Tune's folder name, `tune`)."""
    key = "logging.wandb"
    for name in _WANDB_PER_TRIAL:
        if name in block:
            raise ConfigError(
                f"{key}.{name}: set per trial by bgl (run id: the trial id, name: "
                "<study>-<trial id>, config: the trial's parameters); remove it"
            )
    if "api_key" in block:
        raise ConfigError(
            f"{key}.api_key: keep the key out of the study file; set WANDB_API_KEY, run "
            "`wandb login`, or give `api_key_file: ~/.wandb_key`"
        )
    reject_unknown(block, WANDB_KEYS, key + ".")
    mode = block.get("mode", "online")
    if mode not in WANDB_MODES:
        raise ConfigError(
            f"{key}.mode: must be one of {', '.join(WANDB_MODES)} (offline: no account, "
            f"`wandb sync` later), got {mode!r}"
        )
    _check_types(
        block,
        key,
        ("project", "group", "entity", "dir", "api_key_file"),
        "settings",
        "wandb.Settings fields",
    )
    out = dict(block)
    out["project"] = block.get("project") or study_name
    out["group"] = block.get("group") or study_name
    return out


def _check_types(
    block: dict[str, Any], key: str, strings: tuple[str, ...], mapping: str, of_what: str
) -> None:
    """A tracker block's string-valued keys are strings and its `mapping` key is a mapping (of
    `of_what`), where given."""
    for name in strings:
        if block.get(name) is not None and not isinstance(block[name], str):
            raise ConfigError(f"{key}.{name}: expected a string, got {block[name]!r}")
    if block.get(mapping) is not None and not isinstance(block[mapping], dict):
        raise ConfigError(f"{key}.{mapping}: expected a mapping of {of_what}")


def _check_paths_exist(study: StudyConfig) -> None:
    """Every searched path must be a real run-config key, and every value it can take valid
    (checked with each choice, or both ends of a range)."""
    for p in study.params:
        if p.type == "constant":
            samples = [p.value]
        elif p.type == "categorical":
            samples = list(p.choices or [])
        else:
            samples = [p.low, p.high]
        if p.type == "int":
            samples = [int(x) for x in samples]
        solver = (solver_only(p.path) or p.solvers or study.solvers)[0]
        for sample in samples:
            try:
                study.trial_config({"solver.name": solver, p.path: sample})
            except ConfigError as exc:
                raise ConfigError(f"search.params.{p.path}: {exc}") from exc


def _param(path: str, spec: Any) -> ParamSpec:
    key = f"search.params.{path}"
    if spec == "default":
        spec = _default_range(path, key)
    if not isinstance(spec, dict):
        return ParamSpec(path, "constant", value=spec, solvers=solver_only(path))
    reject_unknown(
        spec, {"type", "low", "high", "log", "step", "choices", "value", "solvers"}, key + "."
    )
    solvers = spec.get("solvers")
    if solvers is not None:
        solvers = choices(solvers, SOLVER_NAMES, key + ".solvers")
    only = solver_only(path)
    if only is not None:
        if solvers is not None and not set(solvers) <= set(only):
            raise ConfigError(f"{key}.solvers: {path} applies to {', '.join(only)} only")
        solvers = solvers or only
    if "value" in spec:
        return ParamSpec(path, "constant", value=spec["value"], solvers=solvers)
    kind = spec.get("type") or ("categorical" if "choices" in spec else "float")
    choice(kind, PARAM_TYPES, key + ".type")
    if kind == "categorical":
        options = spec.get("choices")
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{key}.choices: a non-empty list is required")
        return ParamSpec(path, kind, choices=options, solvers=solvers)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: {kind} ranges need low and high")
    low, high = number(spec["low"], key + ".low"), number(spec["high"], key + ".high")
    if not low < high:
        raise ConfigError(f"{key}: empty range (low must be < high, got {low} and {high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{key}: a log range needs low > 0")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{key}: int ranges need integer bounds")
    step = spec.get("step")
    return ParamSpec(
        path,
        kind,
        low=low,
        high=high,
        log=log,
        step=None if step is None else number(step, key + ".step"),
        solvers=solvers,
    )


def _default_range(path: str, key: str) -> dict[str, Any]:
    """`solver.<name>: default`: the search range the solver registry declares for the key."""
    prefix, _, name = path.partition(".")
    spec = KEYS[name].search if prefix == "solver" and name in KEYS else None
    if spec is None:
        raise ConfigError(f"{key}: 'default' names the registry's range of a searchable solver key")
    return dict(spec)


def _objectives(search: dict[str, Any]) -> list[Objective]:
    if "objectives" in search:
        if "metric" in search or "mode" in search:
            raise ConfigError("search.objectives: give either objectives or metric/mode")
        items = search["objectives"]
        if not isinstance(items, list) or not items:
            raise ConfigError("search.objectives: a non-empty list of {metric, mode}")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"metric", "mode"}:
                raise ConfigError(f"search.objectives[{i}]: expected {{metric, mode}}")
            out.append(
                Objective(
                    str(item["metric"]),
                    choice(item["mode"], ("max", "min"), f"search.objectives[{i}]"),
                )
            )
        return out
    metric = search.get("metric", "psnr")
    return [
        Objective(str(metric), choice(search.get("mode", "max"), ("max", "min"), "search.mode"))
    ]


def _scheduler(spec: Any) -> SchedulerSpec:
    if not isinstance(spec, dict):
        raise ConfigError("search.scheduler: expected a mapping like {name: asha}")
    s = build_dataclass(SchedulerSpec, spec, "search.scheduler.")
    choice(s.name, ("asha",), "search.scheduler.name")
    return s
