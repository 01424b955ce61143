"""Typed run configuration, validated at load.

A run YAML maps 1:1 onto these dataclasses; an unknown or mistyped key is an error that names
the key (`solver.k: expected int, got 'three'`). `--set a.b=value` overrides use the same path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bgl.raw.colour import RAW_SPACES
from bgl.raw.noise import NOISE_MODELS
from bgl.raw.tone import GENERATOR_RESIDUALS
from bgl.solvers import SOLVER_NAMES, check_settings

#: Synthetic scenes' lighting (data.lighting): evenly lit as rendered, or with shading and shadows
#: (`bgl.data.synthetic.shade_scenes`).
SCENE_LIGHTINGS = ("flat", "shaded")


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


@dataclass
class TaskConfig:
    name: str = "enhance"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the task constructor


@dataclass
class ModelConfig:
    generator_width: int = 32  # SID uses 32; tests use 8
    # F = U-Net (none, SID) or classical development + U-Net (develop: bgl.models.generator)
    generator_residual: str = "none"
    # start F from a training checkpoint's generator (`upper`), e.g. a transfer study's stage 1
    generator_checkpoint: str | None = None
    # keep that F fixed: no upper steps, no hypergradients; only θ trains (Table 3's transfer)
    freeze_generator: bool = False


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    seed: int = 0  # the dataset's own seed (synthetic scenes); fixed across trial seeds
    train_size: int = 64  # L_G batches come from here (real datasets: 0 = the whole split)
    val_size: int = 16  # L_F batches (the upper level's validation set)
    test_size: int = 16  # held out: scored and reported (test_* metrics), never chooses
    # decisions (search objective, ASHA, best checkpoint, `best`) read this split, which neither
    # level trains on; real datasets take it out of their validation split (bgl.data.splits)
    select_size: int = 16
    crop: int = 64  # RGB side in pixels; the packed RAW is crop/2
    batch_size: int = 4
    val_batch_size: int = 4
    eval_batch_size: int = 8
    ratio_range: tuple[float, float] | None = None  # exposure ratios; None: dataset default
    camera_seed: int | None = 0  # synthetic: one camera for all splits; null: one per image
    # F's input: camera (the camera's own RAW) | canonical (white-balanced, in sRGB primaries,
    # from each image's own camera metadata: bgl.raw.colour; develop then uses the file's)
    raw_space: str = "camera"
    noise: str = "gaussian"  # unprocessed data: gaussian (Brooks) | physics (bgl.raw.noise)
    lighting: str = "flat"  # synthetic scenes: flat (evenly lit) | shaded (shading and shadows)
    cache: str | None = None  # real datasets: packed cache base folder (None: <root>/.bgl-cache)
    skip_bad: bool = False  # real datasets: skip (and list) bad files instead of failing
    eval_crop: int | None = None  # test-split crop; None: data.crop, 0: full frames
    max_boxes: int = 256  # DARK FACE: boxes per image (padded with -1)


@dataclass
class SolverConfig:
    """`bgl.solvers.registry` says which solver reads which key (`bgl solvers` lists them)."""

    name: str = "ibgl"  # naive | tbgl | ibgl | aid
    k: int = 1  # lower steps per upper step (IBGL and AID; naive and TBGL take one)
    delta: float = 0.01  # TBGL finite-difference radius: ε = delta / ‖P v‖
    unroll: str = "optimizer"  # TBGL: the unrolled step: optimizer (the one taken) | sgd (paper)
    eps: float = 1e-12  # IBGL denominator guard
    relative_damping: float = 0.0  # IBGL: ρ‖∇θL_F‖² in the denominator (0: the paper's Eq. 9)
    method: str = "cg"  # AID: cg | neumann
    iterations: int = 10  # AID: curvature products per upper step
    damping: float = 0.0  # AID: Tikhonov λ in (H + λI) u = ∇θL_F
    damping_scale: str = "absolute"  # AID: absolute | rayleigh (λ = damping · fᵀHf/fᵀf)
    coupling_max: float = 0.0  # AID: trust region, implicit term <= coupling_max·‖∇ωL_F‖ (0: off)
    curvature: str = "hessian"  # AID: hessian | gauss_newton
    neumann_step: float = 1.0  # AID with method neumann: the series' step α


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | sgd
    upper_lr: float = 3e-3
    upper_lr_min: float = 5e-6
    lower_lr: float = 3e-3
    lower_lr_min: float = 3e-5
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    # the warm start's own constant lr for both levels (the paper: 1e-4); the bilevel schedule
    # then starts at the phase boundary. null: one schedule spans both phases
    warm_lr: float | None = None


@dataclass
class TrainConfig:
    warm_steps: int = 100  # joint warm start (Algorithm 1/2, first phase)
    steps: int = 500  # upper-level steps of the bilevel phase
    eval_every: int = 50
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "results"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for Parquet columns and tables."""
        return flatten(self.to_dict())


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that a type alone cannot express."""
    if cfg.solver.name not in SOLVER_NAMES:
        raise ConfigError(f"solver.name: must be one of {', '.join(SOLVER_NAMES)}")
    broken = check_settings(cfg.solver.name, dataclasses.asdict(cfg.solver))
    if broken is not None:
        raise ConfigError(f"solver.{broken[0]}: must be {broken[1]}")
    choice(cfg.data.noise, NOISE_MODELS, "data.noise")
    choice(cfg.data.raw_space, RAW_SPACES, "data.raw_space")
    choice(cfg.data.lighting, SCENE_LIGHTINGS, "data.lighting")
    checks = [
        ("optim.optimizer", cfg.optim.optimizer in ("adam", "sgd"), "adam or sgd"),
        ("optim.schedule", cfg.optim.schedule in ("cosine", "constant"), "cosine or constant"),
        ("optim.upper_lr", cfg.optim.upper_lr > 0, "positive"),
        ("optim.lower_lr", cfg.optim.lower_lr > 0, "positive"),
        ("optim.warm_lr", cfg.optim.warm_lr is None or cfg.optim.warm_lr > 0, "positive or null"),
        ("train.warm_steps", cfg.train.warm_steps >= 0, "non-negative"),
        ("train.steps", cfg.train.steps >= 0, "non-negative"),
        ("train.eval_every", cfg.train.eval_every >= 1, "at least 1"),
        ("train.log_every", cfg.train.log_every >= 1, "at least 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, "at least 1"),
        ("data.batch_size", cfg.data.batch_size >= 1, "at least 1"),
        (
            "data.crop",
            cfg.data.crop % 32 == 0 and cfg.data.crop > 0,
            "a positive multiple of 32 (the packed RAW must pass 4 U-Net poolings)",
        ),
        ("model.generator_width", cfg.model.generator_width >= 1, "at least 1"),
        (
            "model.generator_residual",
            cfg.model.generator_residual in GENERATOR_RESIDUALS,
            f"one of {', '.join(GENERATOR_RESIDUALS)} (develop: classical development + U-Net)",
        ),
        (
            "model.freeze_generator",
            not cfg.model.freeze_generator or bool(cfg.model.generator_checkpoint),
            "false unless model.generator_checkpoint names the trained generator to freeze",
        ),
        (
            "data.root",
            cfg.data.name.startswith("synthetic") or cfg.data.name == "control" or cfg.data.root,
            f"set to the dataset folder for dataset {cfg.data.name!r}",
        ),
    ]
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"{key}: must be {want}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith("options"):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig; unknown keys and wrong types name their path."""
    return build_dataclass(RunConfig, data, "")


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML file's top-level mapping with `key.path=value` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    apply_overrides(data, overrides or [])
    return data


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML, apply `key.path=value` overrides, validate."""
    return from_dict(read_yaml(path, overrides))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """`solver.k=5` sets data['solver']['k'] = 5 (value parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        except ConfigError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from exc


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """data['a']['b'] = value for path 'a.b', creating sections on the way."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{part} is not a section")
    node[parts[-1]] = value


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """`cls` (a dataclass) from a mapping, every value checked against its type hint; the one
    typed-config parser (run configs, and the blocks of a study YAML). Errors name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    reject_unknown(data, {f.name for f in dataclasses.fields(cls)}, prefix)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value or {}, path + ".")
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def reject_unknown(data: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    """An unknown key is an error naming it and what the mapping accepts."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} ({where} accepts: {', '.join(sorted(allowed))})"
        )


def choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return value


def choices(value: Any, allowed: tuple[str, ...], key: str) -> list[str]:
    """A non-empty list of allowed names (a single name is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: a non-empty list is required")
    for v in value:
        choice(v, allowed, key)
    return list(value)


def number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def integer(value: Any, key: str, minimum: int | None = None) -> int:
    n = number(value, key)
    if not float(n).is_integer():
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if minimum is not None and n < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}")
    return int(n)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {hint}")
