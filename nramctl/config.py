"""One typed configuration tree, loaded from `tasks.yaml`, overridden, validated once, saved with a run.

The dataclasses below hold the one set of defaults. `tasks.yaml` has a `tasks` section with each task's
own fields, and may have a `defaults` section (a partial TaskConfig applied to every task of that file);
a task's config is the dataclass defaults, then the file's defaults, then the task's entry, then `--set`
overrides. Every value is checked against its range in `validate`; `task_config` also checks the
memory a training would need, before anything is allocated.
"""
import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import List, Optional, get_args, get_origin, get_type_hints

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
    # The stop logit's initial bias (null: as every other bias, U(-1/sqrt(H), 1/sqrt(H)), so f_t is
    # about 0.5 and the halting mass of step t about 2^-(t+1)). A negative value (-5: f about 0.007)
    # puts the mass on each example's last step from the start, so the loss scores the memory the
    # task's rule ends with rather than the first few steps' (measured: docs/RESULTS.md, "Seed shares").
    stop_bias: Optional[float] = None
    # The initial bias of each register's choice of its own old value in the register update (null:
    # as every other bias, so a register is a near-uniform mix of all R + Q sources after one step).
    # A positive value (4: about 3/4 of the weight with 14 gates) makes registers hold their values by
    # default, as an LSTM's forget-gate bias does, so a counter or pointer survives across steps.
    keep_bias: Optional[float] = None
    # The head's initial weights and biases are drawn as every layer's, U(-1/sqrt(H), 1/sqrt(H)), then
    # those of the source choices' logits (all but the stop logit) multiplied by this: how sharp the
    # machine's first choices of sources are (1: near-uniform mixtures of all sources; 10 or more:
    # each seed starts from a sharp random program). The draws are unchanged, so seed s at 1 is the
    # model it always was.
    head_scale: float = 1.0


@dataclass
class CurriculumConfig:
    enabled: bool = True
    threshold: float = 0.01                      # advance when the window's error is below this
    window: int = 10                             # batches averaged for that decision
    min_batches: int = 50                        # batches between two advances
    p_any: float = 0.10                          # share drawn uniformly from all difficulties
    p_upto: float = 0.25                         # share drawn uniformly from [min, D + e]
    start: Optional[int] = None                  # the first level (null: the task's smallest difficulty)


@dataclass
class NoiseConfig:
    # Off by default: measured on Copy (8 seeds, 1000 steps), noise at eta 0.3 or 0.01 left fewer seeds
    # at 0 error than plain training (docs/RESULTS.md). The same holds for the entropy bonus. With our
    # loss (a seed's batch mean, clipped to norm 1) eta 0.3 is a noise norm of about 146 at step 0
    # against a gradient norm of at most 1; eta 1e-4 matches the two, and did not help either.
    enabled: bool = False
    eta: float = 0.3                             # sigma_t^2 = eta / (1 + t)^gamma
    gamma: float = 0.55


@dataclass
class EntropyConfig:
    enabled: bool = False
    coef: float = 0.05                           # coef * decay^(step - start); negative: a penalty
    decay: float = 0.999                         # that sharpens the distributions (the paper's footnote 7)
    start: int = 0                               # steps before the term applies (a late penalty)


@dataclass
class PopulationConfig:
    mode: str = "off"                            # off | restart | exploit (see population.py)
    patience: int = 0                            # steps without a better best error before a seed is stuck
    # A deadline (0 = none): a seed whose best error is still above deadline_error after this many
    # steps of its own (from its start or restart) is stuck too. Unlike patience it spares a seed
    # that left the plateau and then improves slowly, and judges one that drifts along it.
    deadline: int = 0
    deadline_error: float = 0.5
    # A schedule of deadlines, [[steps, error], ...]: each pair is one more deadline as above, so that
    # a seed must be below 0.45 by 1,500 steps, say, and below 0.1 by 20,000 (successive halving's
    # rungs, with the bar at a fixed error instead of a share of the seeds).
    deadlines: List[List[float]] = field(default_factory=list)
    top: float = 0.25                            # exploit: share of the seeds that can be copied
    perturb: List[float] = field(default_factory=lambda: [0.8, 1.25])   # exploit: lr factors


@dataclass
class StonesConfig:
    # Stepping stones (nramctl/stones.py): short tasks of the task's own layout that each seed trains on
    # in turn before the task itself, carrying its weights from one to the next with fresh Adam moments
    # at each. A seed moves on once it is exact on its stone at a check (fuzzy, fresh examples), after
    # `polish` more steps there; one still not exact after `steps` steps on a stone moves on all the
    # same (advance) or makes way for a fresh seed that starts again from the first stone (restart).
    names: List[str] = field(default_factory=list)
    steps: int = 3000
    polish: int = 0
    stuck: str = "advance"                       # advance | restart


@dataclass
class TrainConfig:
    steps: int = 5000                            # step budget
    max_minutes: Optional[float] = None          # time budget (wall minutes of training, every session)
    batch: int = 64                              # examples per step and seed
    lr: float = 0.003
    seed: int = 0
    seeds: int = 1                               # models trained side by side: seed, seed+1, ...
    until: str = "first"                         # with several seeds: stop when the first or all reach the target
    target_error: float = 0.0                    # stop once fresh examples score at or below this
    solve_discrete: bool = True                  # ... in the discretized machine too
    polish_steps: int = 0                        # steps trained on after the target: sharper distributions
    polish_extra_steps: int = 0                  # polish steps train with extra steps in stages (2, 4, 8,
                                                 # ... up to this many), a stage ending when the seed is
                                                 # exact with it; only such models are kept (no cost in share)
    eval_every: int = 100                        # steps between checks on fresh examples
    eval_examples: int = 500
    log_every: int = 10
    checkpoint_every: int = 200
    tensorboard: bool = False                    # also write TensorBoard events (runs/run-N/tensorboard)
    clip_activation: Optional[float] = 10.0      # C1, None = off
    clip_norm: Optional[float] = 1.0             # C2, None = off
    renormalize: bool = True
    log_eps: float = 1e-6
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    stones: StonesConfig = field(default_factory=StonesConfig)
    extra_steps: int = 0                         # each training example gets T + U{0..extra_steps} steps
    lr_decay: float = 1.0                        # learning rate x lr_decay^step (1 = constant)
    dropout: float = 0.0                         # recurrent dropout: the LSTM's hidden state between
                                                 # timesteps, one mask per example and run (training only)
    init: Optional[str] = None                   # start every seed from a trained model's weights:
                                                 # RUN, RUN/seed-K or pretrained/TASK (fine-tuning)
    # Gumbel noise on the circuit's choices (training only): every source logit of every example and
    # timestep gets scale * G, G ~ Gumbel(0, 1), before its softmax, so each example runs its own draw
    # of the program (the Gumbel-softmax relaxation of sampling the choices). 0 = off; the scale is
    # multiplied by logit_noise_decay each step.
    logit_noise: float = 0.0
    logit_noise_decay: float = 1.0


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


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(key, value, kind):
    """Check one value against a field type, converting ints to floats where a float is wanted."""
    if get_origin(kind) is list:
        item = get_args(kind)[0]
        if get_origin(item) is list:                  # a list of number lists: [[steps, error], ...]
            if not isinstance(value, list) or not all(isinstance(row, list) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
                    for row in value):
                raise ConfigError(f"{key}: expected a list of number lists, got {_short(value)}")
            return [list(row) for row in value]          # as written: steps stay whole numbers
        if item is float:
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for v in value):
                raise ConfigError(f"{key}: expected a list of positive numbers, got {_short(value)}")
            return [float(v) for v in value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of names, got {_short(value)}")
        return list(value)
    optional = type(None) in get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(a for a in get_args(kind) if a is not type(None))
    if kind is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        value = float(value)          # 1e-4: YAML 1.1 needs a dot ("1.0e-4"), YAML 1.2 and people do not
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, (str, int)) and not isinstance(value, bool)}[kind]
    if not ok:
        raise ConfigError(f"{key}: expected {kind.__name__}{' or null' if optional else ''}, got {_short(value)}")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {_short(value)}")
    if kind is str and len(str(value)) > 200:
        raise ConfigError(f"{key}: at most 200 characters, got {len(str(value))}")
    return kind(value)


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build(cls, data, prefix="", base=None):
    """A dataclass from a nested dict, starting from `base` (or the defaults); unknown keys fail."""
    obj = dataclasses.replace(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_short(data)}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{str(key)[:60]}'; "
                              f"valid keys: {', '.join(sorted(names))}")
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
    except TaskError as e:
        raise ConfigError(str(e)) from None
    for key, lo, hi in RANGES:
        value = _get(cfg, key)
        if value is None:
            continue                                  # an optional technique switched off
        need(lo <= value <= hi, key, value, f"must be between {_num(lo)} and {_num(hi)}")
    for key in ("train.lr", "train.log_eps", "train.entropy.decay", "train.lr_decay", "train.clip_norm",
                "train.clip_activation"):
        need(_get(cfg, key) is None or _get(cfg, key) > 0, key, _get(cfg, key),
             "must be positive" + (" or null (off)" if key.startswith("train.clip") else ""))
    m, tr, c = cfg.model, cfg.train, cfg.train.curriculum
    need(m.controller in ("mlp", "lstm"), "model.controller", m.controller, "must be mlp or lstm")
    need(tr.dropout == 0 or m.controller == "lstm", "train.dropout", tr.dropout,
         "needs model.controller=lstm (it drops the LSTM's recurrent state)")
    need(len(m.gates) >= 1, "model.gates", m.gates, "must name at least one gate")
    need(tr.until in ("first", "all"), "train.until", tr.until, "must be first or all")
    need(tr.population.mode in ("off", "restart", "exploit"), "train.population.mode", tr.population.mode,
         "must be off, restart or exploit")
    pop = tr.population
    for pair in pop.deadlines:
        need(len(pair) == 2 and pair[0] == int(pair[0]) and 1 <= pair[0] <= 10**9 and 0 <= pair[1] <= 1,
             "train.population.deadlines", pop.deadlines,
             "must be [steps, error] pairs, steps a whole number from 1 and error between 0 and 1")
    need(pop.mode == "off" or pop.patience > 0 or pop.deadline > 0 or pop.deadlines,
         "train.population.patience", pop.patience,
         f"must be positive with population mode {pop.mode} (or set train.population.deadline or deadlines)")
    need(tr.stones.stuck in ("advance", "restart"), "train.stones.stuck", tr.stones.stuck,
         "must be advance or restart")
    try:
        from .stones import stone             # (numpy: not imported where no config is validated)
        stones = [stone(t.name, name) for name in tr.stones.names]
    except TaskError as e:
        raise ConfigError(f"train.stones.names: {e}") from None
    tr.stones.names = [s.name for s in stones]
    need(c.p_any + c.p_upto <= 1, "train.curriculum.p_any", c.p_any, "and p_upto must sum to at most 1")
    try:
        circuit(m.gates, m.repeat)
        t.check(cfg.difficulty, cfg.M)
        for n in range(t.min_difficulty, cfg.difficulty + 1):
            cfg.T_of(n)
            for st in stones:
                timestep_rule(st.T)(n)
    except (TaskError, GateError) as e:
        raise ConfigError(str(e)) from None
    cfg.task = t.name
    return cfg


# Every numeric field's range (inclusive). Optional fields (None = off) are checked when set.
RANGES = [
    ("M", 3, 100_000), ("difficulty", 1, 1_000_000),
    ("model.R", 1, 64), ("model.hidden", 1, 4096), ("model.repeat", 1, 16),
    ("train.steps", 1, 10**9), ("train.max_minutes", 0.001, 10**7), ("train.batch", 1, 100_000), ("train.lr", 0, 10.0),
    ("train.seed", 0, 2**31 - 1), ("train.seeds", 1, 4096), ("train.target_error", 0, 1),
    ("train.polish_steps", 0, 10**9), ("train.eval_every", 1, 10**9), ("train.eval_examples", 1, 10**6),
    ("train.log_every", 1, 10**9), ("train.checkpoint_every", 1, 10**9),
    ("train.clip_activation", 0, 1e6), ("train.clip_norm", 0, 1e6), ("train.log_eps", 0, 0.5),
    ("train.curriculum.threshold", 0, 1), ("train.curriculum.window", 1, 100_000),
    ("train.curriculum.min_batches", 0, 10**9), ("train.curriculum.p_any", 0, 1),
    ("train.curriculum.p_upto", 0, 1), ("train.curriculum.start", 1, 1_000_000), ("model.stop_bias", -100.0, 100.0),
    ("model.keep_bias", -100.0, 100.0), ("model.head_scale", 0.0, 1000.0),
    ("train.noise.eta", 0, 100.0), ("train.noise.gamma", 0, 10.0),
    ("train.entropy.coef", -100.0, 100.0), ("train.entropy.decay", 0, 1), ("train.entropy.start", 0, 10**9),
    ("train.lr_decay", 0, 1), ("train.dropout", 0, 0.9), ("train.logit_noise", 0, 100.0),
    ("train.logit_noise_decay", 0, 1),
    ("train.population.patience", 0, 10**9), ("train.population.deadline", 0, 10**9),
    ("train.population.deadline_error", 0, 1), ("train.population.top", 0.01, 1), ("train.extra_steps", 0, 10**6),
    ("train.polish_extra_steps", 0, 10**6), ("train.stones.steps", 1, 10**9), ("train.stones.polish", 0, 10**9),
]


def _num(x):
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_training_memory(cfg):
    """Refuse a (validated) config whose training steps would not fit in memory. Checked where a
    training is set up (task_config, resume), not where a saved config is read: a run trained on a
    larger machine can still be evaluated here."""
    T = max(cfg.T_of(n) for n in range(task(cfg.task).min_difficulty, cfg.difficulty + 1))
    m, tr = cfg.model, cfg.train
    need = unroll_bytes(tr.seeds * tr.batch, T, cfg.M, circuit(m.gates, m.repeat), m.R, m.hidden)
    check_memory(need, f"training {cfg.task} at M={cfg.M}, T={T}, {tr.seeds} seed(s) x batch {tr.batch}")
    return cfg


def unroll_bytes(N, T, M, gates, R, hidden):
    """Memory a training step of N examples over T timesteps holds, estimated before anything is
    allocated: every timestep keeps each example's memory as every READ/WRITE saw it and after the
    step (M x M float32 each) for the backward pass, plus the smaller per-step tensors and the process
    itself (about 300 MB)."""
    G = sum(1 for g in gates if g.memory)
    K = R + len(gates)
    per_step = (G + 2) * M ** 2 + (3 * K + 2 * len(gates)) * M + 4 * hidden
    return 4 * N * T * per_step + 300 * 2 ** 20


def memory_limit():
    """Bytes a command may plan to use: NRAMCTL_MAX_MEMORY (bytes, or with a K/M/G suffix) if set, else
    90% of the physical memory, or of the address-space limit (ulimit -v) if that is lower."""
    raw = os.environ.get("NRAMCTL_MAX_MEMORY")
    if raw:
        units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
        try:
            return int(float(raw[:-1]) * units[raw[-1].upper()]) if raw[-1].upper() in units else int(raw)
        except ValueError:
            raise ConfigError(f"NRAMCTL_MAX_MEMORY={raw!r}: expected bytes, e.g. 8G") from None
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft)
    except (ImportError, ValueError, OSError):
        pass
    return int(0.9 * limit)


def gb(n):
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MB"


def check_memory(need_bytes, what):
    """Refuse, in one line, a computation that would need more memory than this machine allows."""
    limit = memory_limit()
    if need_bytes > limit:
        raise ConfigError(f"{what} would need about {gb(need_bytes)} of memory; the limit here is "
                          f"{gb(limit)} (fewer seeds, a smaller batch, M or T; or NRAMCTL_MAX_MEMORY)")


def parse_yaml(text):
    """yaml.safe_load through LibYAML's C parser where PyYAML has it (ten times faster; `nramctl tasks`
    reads tasks.yaml once per task), else the pure-Python one, with YAML 1.2's booleans (below).
    PyYAML is imported here, not at start: `nramctl --help` never reads YAML."""
    import yaml
    return yaml.load(text, Loader=_loader())


@functools.lru_cache(maxsize=None)
def _loader():
    """The safe loader with YAML 1.2's booleans, true and false only: YAML 1.1 also reads off, on, yes
    and no as booleans, which turned `--set train.population.mode=off` into False."""
    import yaml
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    bool_tag = "tag:yaml.org,2002:bool"

    class Loader(base):
        pass
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in rules if tag != bool_tag]
                                      for first, rules in base.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def load_yaml(path):
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            data = parse_yaml(fh)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
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
    cfg = build(TaskConfig, data.get("defaults"), "defaults.")
    cfg = build(TaskConfig, data["tasks"][key] or {}, f"tasks.{key}.", base=cfg)
    cfg.task = key
    cfg = apply_overrides(cfg, overrides)
    return check_training_memory(validate(cfg))


def apply_overrides(cfg, overrides):
    """`--set a.b=value` items; the value is read as YAML (numbers, true/false, null, [lists])."""
    import yaml
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"--set {key}: cannot read value {_short(raw)}") from None
        nested = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        cfg = build(TaskConfig, nested, base=cfg)
    return cfg


def from_dict(data):
    """A config saved with a run (already resolved) back into its dataclasses."""
    return validate(build(TaskConfig, data))

