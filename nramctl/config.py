"""One typed configuration tree, loaded from `tasks.yaml`, overridden, validated once, saved with a run.

`tasks.yaml` has a `defaults` section (a partial TaskConfig shared by every task) and a `tasks` section
with each task's own fields; a task's config is defaults, then the task's entry, then `--set` overrides.
"""
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import List, Optional, get_args, get_origin, get_type_hints

import yaml

from .gates import GateError, circuit
from .tasks import TaskError, task, timestep_rule


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message names the key and the value."""


@dataclass
class ModelConfig:
    R: int = 4                                   # registers
    controller: str = "mlp"                      # mlp | lstm
    hidden: int = 64                             # H, every hidden layer
    gates: List[str] = field(default_factory=lambda: [
        "READ", "ZERO", "ONE", "TWO", "INC", "ADD", "SUB", "DEC",
        "LT", "LE", "EQ", "MIN", "MAX", "WRITE"])
    repeat: int = 1                              # repetitions of the whole gate sequence


@dataclass
class CurriculumConfig:
    enabled: bool = True
    threshold: float = 0.01                      # advance when the window's error is below this
    window: int = 10                             # batches averaged for that decision
    min_batches: int = 50                        # batches between two advances
    p_any: float = 0.10                          # share drawn uniformly from all difficulties
    p_upto: float = 0.25                         # share drawn uniformly from [min, D + e]


@dataclass
class NoiseConfig:
    enabled: bool = True
    eta: float = 0.3                             # sigma_t^2 = eta / (1 + t)^gamma
    gamma: float = 0.55


@dataclass
class EntropyConfig:
    enabled: bool = True
    coef: float = 0.05                           # coef * decay^step
    decay: float = 0.999


@dataclass
class TrainConfig:
    steps: int = 5000                            # step budget
    batch: int = 64                              # examples per step and seed
    lr: float = 0.003
    seed: int = 0
    seeds: int = 1                               # models trained side by side: seed, seed+1, ...
    until: str = "first"                         # with several seeds: stop when the first or all solve
    target_error: float = 0.0                    # stop once fresh examples score at or below this
    solve_discrete: bool = True                  # ... in the discretized machine too
    polish_steps: int = 0                        # steps trained on after the target (sharper, longer-lived)
    eval_every: int = 100                        # steps between checks on fresh examples
    eval_examples: int = 500
    log_every: int = 10
    checkpoint_every: int = 200
    clip_activation: Optional[float] = 10.0      # C1, None = off
    clip_norm: Optional[float] = 1.0             # C2, None = off
    renormalize: bool = True
    log_eps: float = 1e-6
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)


@dataclass
class TaskConfig:
    task: str = "copy"
    M: int = 12
    T: str = "2*n+1"                             # timestep rule, an expression in the difficulty n
    difficulty: int = 5                          # the largest difficulty trained on
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def T_of(self, n):
        return timestep_rule(self.T)(n)


def _coerce(key, value, kind):
    """Check one value against a field type, converting ints to floats where a float is wanted."""
    if get_origin(kind) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of names, got {value!r}")
        return list(value)
    optional = type(None) in get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(a for a in get_args(kind) if a is not type(None))
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, (str, int))}[kind]
    if not ok:
        raise ConfigError(f"{key}: expected {kind.__name__}{' or null' if optional else ''}, got {value!r}")
    return kind(value)


def build(cls, data, prefix="", base=None):
    """A dataclass from a nested dict, starting from `base` (or the defaults); unknown keys fail."""
    obj = dataclasses.replace(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}'; valid keys: {', '.join(sorted(names))}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            value = build(kind, value, f"{prefix}{key}.", getattr(obj, key))
        else:
            value = _coerce(f"{prefix}{key}", value, kind)
        setattr(obj, key, value)
    return obj


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def validate(cfg):
    """Every cross-field rule, checked once; raises ConfigError naming the key and value."""
    def need(cond, key, value, why):
        if not cond:
            raise ConfigError(f"{key}: {value!r} {why}")
    try:
        t = task(cfg.task)
        circuit(cfg.model.gates, cfg.model.repeat)
        cfg.T_of(cfg.difficulty)
        t.check(cfg.difficulty, cfg.M)
    except (TaskError, GateError) as e:
        raise ConfigError(str(e)) from None
    m, tr = cfg.model, cfg.train
    need(cfg.M >= 3, "M", cfg.M, "must be at least 3")
    need(m.R >= 1, "model.R", m.R, "must be at least 1")
    need(m.controller in ("mlp", "lstm"), "model.controller", m.controller, "must be mlp or lstm")
    need(m.hidden >= 1, "model.hidden", m.hidden, "must be at least 1")
    for key in ("steps", "batch", "seeds", "eval_every", "eval_examples", "log_every", "checkpoint_every"):
        need(getattr(tr, key) >= 1, f"train.{key}", getattr(tr, key), "must be at least 1")
    need(tr.lr > 0, "train.lr", tr.lr, "must be positive")
    need(tr.polish_steps >= 0, "train.polish_steps", tr.polish_steps, "must be >= 0")
    need(tr.until in ("first", "all"), "train.until", tr.until, "must be first or all")
    need(0 <= tr.target_error <= 1, "train.target_error", tr.target_error, "must be in [0, 1]")
    c = tr.curriculum
    need(c.p_any >= 0 and c.p_upto >= 0 and c.p_any + c.p_upto <= 1, "train.curriculum.p_any",
         c.p_any, "and p_upto must be shares that sum to at most 1")
    need(c.window >= 1, "train.curriculum.window", c.window, "must be at least 1")
    task_name = t.name
    cfg.task = task_name
    return cfg


def load_yaml(path):
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    return data


DEFAULT_FILE = Path(__file__).resolve().parent / "tasks.yaml"


def task_config(name, path=None, overrides=()):
    """The resolved config of one task: defaults, the task's entry, then `key=value` overrides."""
    path = Path(path) if path else DEFAULT_FILE
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'tasks' section")
    try:
        key = task(name).name
    except TaskError as e:
        raise ConfigError(str(e)) from None
    if key not in data["tasks"]:
        raise ConfigError(f"{path}: no entry for task {key!r}")
    cfg = build(TaskConfig, data.get("defaults"))
    cfg = build(TaskConfig, data["tasks"][key] or {}, base=cfg)
    cfg.task = key
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg)


def apply_overrides(cfg, overrides):
    """`--set a.b=value` items; the value is read as YAML (numbers, true/false, null, [lists])."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot read value {raw!r}") from None
        nested = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        cfg = build(TaskConfig, nested, base=cfg)
    return cfg


def from_dict(data):
    """A config saved with a run (already resolved) back into its dataclasses."""
    return validate(build(TaskConfig, data))


def all_task_configs(path=None):
    from .tasks import TASKS
    return {name: task_config(name, path) for name in TASKS}
