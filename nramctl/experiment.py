"""Training runs on disk: start, checkpoint, resume, and load a trained model from any run.

This joins the trainer (which knows nothing of files) to the run store (which knows nothing of
training). The CLI calls these functions; tests can too.
"""
import math

from . import records
from .config import ConfigError, check_training_memory, from_dict, to_dict, validate
from .program import grow
from .runs import RunError
from .train import Trainer, build_model


def new_run(store, cfg, name=None, files=None):
    """A new run directory with its config, a step-0 checkpoint (so it is resumable at once) and
    `files` ({name: JSON data}). It is assembled under a hidden name and renamed into place complete:
    a failure or a kill leaves no half-made run."""
    if name is not None:
        store.check_new_name(name)
    run = store.stage()
    try:
        run.write_config(cfg)
        trainer = Trainer(cfg)
        if cfg.train.init:
            start_from(trainer, store, cfg.train.init)
        save_progress(run, trainer, "running")
        for file, data in (files or {}).items():
            run.write_json(file, data)
        records.start_session(run)
        store.commit(run, name)
    except BaseException:
        store.remove(run)
        raise
    return run, trainer


def start_from(trainer, store, ref):
    """Every seed of a new trainer starts from one trained model's weights (`train.init`), and so
    does every seed a restart brings in; each seed keeps its own data stream, so they part from the
    first step. The model must have the same architecture (registers, controller, width); its gates may
    differ (`model.gates`, `model.repeat`): a model grown by gates keeps every choice the trained one
    makes (`program.grow`), so that training can take the new gates in."""
    try:
        run, seed = store.resolve(ref)
        cfg, model, _ = load_model(run, seed)
    except RunError as e:
        raise ConfigError(f"train.init: {e}") from None
    have, want = cfg.model, trainer.cfg.model
    differ = [f for f in vars(want) if getattr(have, f) != getattr(want, f)]
    if set(differ) - {"gates", "repeat"}:
        shown = ", model.".join(f"{f}={getattr(have, f)!r}" for f in differ)
        raise ConfigError(f"train.init: {ref} was trained with model.{shown}; this run's model differs there "
                          "(only model.gates and model.repeat may)")
    trainer.start_at(grow(model, trainer.model) if differ else dict(model.named_parameters()))


def resume(run, steps=None, minutes=None):
    """The trainer of an earlier run, exactly as its last checkpoint left it; `steps` and `minutes` extend
    (or set) its step and time budgets. A run whose training process is still alive is refused."""
    run.refuse_if_training()
    ck = run.load("last")
    try:
        trainer = Trainer.from_state(from_dict(ck["config"]), ck["trainer"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError):
        raise RunError(f"{run.name}: last.pt does not match its config") from None
    check_training_memory(trainer.cfg)
    if steps is not None:
        if steps <= trainer.step:
            raise ConfigError(f"--steps {steps}: {run.name} is already at step {trainer.step}; "
                              "give a larger budget")
        trainer.cfg.train.steps = steps
    if minutes is not None:
        if minutes * 60 <= trainer.elapsed:
            raise ConfigError(f"--minutes {minutes:g}: {run.name} has already trained "
                              f"{trainer.elapsed / 60:.2f} minutes; give a larger budget")
        trainer.cfg.train.max_minutes = minutes
    if steps is not None or minutes is not None:
        validate(trainer.cfg)
        run.write_config(trainer.cfg)
    run.remove_stale_temporaries()
    run.truncate_metrics(trainer.step)
    if trainer.cfg.train.tensorboard:
        from . import tboard
        tboard.export(run)                     # the events again as far as the checkpoint: no step twice
    records.start_session(run)
    return trainer


def seed_results(trainer):
    """Every seed (active and retired), sorted by seed number; `index` addresses it as run-N/seed-K."""
    return [{**r, "index": i, "best_error": None if math.isinf(r["best_error"]) else r["best_error"]}
            for i, r in enumerate(trainer.all_seeds())]


def save_progress(run, trainer, state):
    cfg = to_dict(trainer.cfg)
    seeds = trainer.all_seeds()
    run.save("last", {"config": cfg, "trainer": trainer.state_dict()})
    run.save("best", {"config": cfg, "model": trainer.all_best_params(), "seeds": [r["seed"] for r in seeds],
                      "best_error": [r["best_error"] for r in seeds], "best_step": [r["best_step"] for r in seeds]})
    run.write_status(state=state, task=trainer.cfg.task, M=trainer.cfg.M, step=trainer.step,
                     seeds=seed_results(trainer))


def train(run, trainer, on_log=None, should_stop=lambda: False):
    """Train to the end (or until should_stop), writing metrics (and TensorBoard events) and
    checkpoints as it goes."""
    board = None
    if trainer.cfg.train.tensorboard:
        from . import tboard
        board = tboard.Writer(run)

    def log(recs):
        run.append_metrics(recs)
        if board:
            board.log(recs)
        if on_log:
            on_log(recs)

    def checkpoint(t):
        save_progress(run, t, "running")
        if board:
            board.flush()

    try:
        result = trainer.run(on_log=log, on_checkpoint=checkpoint, should_stop=should_stop)
        save_progress(run, trainer, result)
    finally:
        if board:
            board.close()
        records.end_session(run)
    return result


def load_model(run, seed=None, which="best"):
    """(config, model with one seed, seed index) from a run's checkpoint. Without `seed`, the seed
    with the lowest error on fresh examples."""
    ck = run.load(which)
    cfg = from_dict(ck["config"])
    params = ck["model"] if which == "best" else ck["trainer"]["model"]
    errors = ck.get("best_error") or [0.0]
    S = len(errors)
    if seed is None:
        seed = min(range(S), key=lambda s: errors[s])
    if not 0 <= seed < S:
        raise RunError(f"{run.name} has seeds 0..{S - 1}, not seed-{seed}")
    seeds = ck.get("seeds") or [cfg.train.seed + s for s in range(S)]
    model = build_model(cfg, [seeds[seed]])
    try:
        model.load_state_dict({k: v[seed:seed + 1] for k, v in params.items()})
    except (RuntimeError, KeyError, TypeError):
        raise RunError(f"{run.name}: {which}.pt does not match its config") from None
    model.eval()
    return cfg, model, seed


def publish(run, seed, dest, how=None):
    """Write one seed of a run as a self-contained model directory (config.yaml, checkpoints/best.pt and
    training.json, which says how it was trained), the form of the models shipped under
    nramctl/pretrained/. `how` adds to training.json (e.g. the reproduce figures)."""
    from pathlib import Path

    from . import native
    from .config import task_config
    from .runs import Run
    cfg, model, seed = load_model(run, seed)
    ck = run.load("best")
    status, env = run.status(), run.read_json("environment.json") or {}
    trained_steps = status.get("step") or ck["best_step"][seed]
    record = next((r for r in status.get("seeds", []) if r.get("seed") == ck["seeds"][seed]), {})
    slots = cfg.train.seeds                  # seeds side by side (with restarts, more were tried in them)
    cfg.train.seeds, cfg.train.seed = 1, ck["seeds"][seed]
    # the shipped config trains long enough to reach the shipped model's step
    cfg.train.steps = max(task_config(cfg.task).train.steps, int(ck["best_step"][seed] or 0))
    out = Run(Path(dest), Path(dest).name)
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_config(cfg)
    out.save("best", {"config": to_dict(cfg), "model": {k: v.clone() for k, v in model.state_dict().items()},
                      "seeds": [cfg.train.seed], "best_error": [ck["best_error"][seed]],
                      "best_step": [ck["best_step"][seed]], "source": run.name})
    info = {"task": cfg.task, "seed": cfg.train.seed, "source_run": run.name,
            "seeds_trained_together": slots, "solved_step": record.get("solved_step"),
            "kept_step": ck["best_step"][seed], "steps_trained": trained_steps,
            "polish_steps": cfg.train.polish_steps, "extra_steps": cfg.train.extra_steps,
            "polish_extra_steps": cfg.train.polish_extra_steps, "exact_extra_steps": record.get("exact_extra_steps"),
            "circuit": env.get("circuit") or native.backend(),
            "threads": env.get("threads"), "command": env.get("command"), "nramctl": env.get("nramctl"),
            "git_commit": env.get("git_commit"), **(how or {})}
    out.write_json("training.json", info)
    return out
