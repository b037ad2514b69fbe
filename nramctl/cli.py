"""nramctl's command line: parses, calls library functions, renders, maps errors to exit codes."""
import functools
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import render
from .config import ConfigError, check_memory, task_config, to_dict, unroll_bytes
from .gates import GateError
from .runtime import keep_freed_memory
from .runs import REPRODUCE_RESULT, RunError, RunStore
from .shares import PoolError
from .tasks import TASKS, TaskError, task

class OneLineErrors(typer.core.TyperGroup):
    """Typer's command group, except that a value the command line itself refuses (an option that is not
    a number, an unknown option, a missing argument) gets the one red line nramctl's own errors get, with
    click's exit code 2, instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        # typer 0.28 vendors click (typer._click, its Abort and Exit in typer.exceptions); older ones use click
        exceptions = (getattr(typer.core, "_click", None) or __import__("click")).exceptions
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except getattr(exceptions, "NoArgsIsHelpError", ()) as e:    # a bare group: its help, as typer shows it
            from typer.rich_utils import rich_format_error
            rich_format_error(e)
            sys.exit(e.exit_code)
        except exceptions.ClickException as e:
            render.error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort:
            render.error("aborted")
            sys.exit(1)
        sys.exit(code or 0)


app = typer.Typer(cls=OneLineErrors, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Train, evaluate, generalize and inspect Neural Random-Access Machines.")
tasks_app = typer.Typer(help="List the tasks, or show generated examples.", invoke_without_command=True)
app.add_typer(tasks_app, name="tasks")
runs_app = typer.Typer(help="List, show and delete runs.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")

USAGE_ERRORS = (ConfigError, TaskError, GateError, RunError, PoolError)


class stopping_signals:
    """Ctrl-C and SIGTERM (what cluster schedulers send) while training: the handlers only note the
    signal, so the step in progress finishes and a resumable checkpoint is saved; the command then
    exits with 128 + the signal's number (130, 143). Called, the object says whether one came."""

    def __enter__(self):
        self.signal = None
        self.old = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, frame):
        self.signal = signum

    def __call__(self):
        return self.signal is not None

    def exit_code(self):
        return 128 + int(self.signal or signal.SIGINT)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class Abort(Exception):
    """A clean non-zero exit after a message was printed."""

    def __init__(self, code):
        self.code = code


# Options shared by several commands, declared once.
RunsDir = Annotated[Path, typer.Option("--runs-dir", envvar="NRAMCTL_RUNS_DIR", help="Where runs live.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
def complete_tasks(incomplete: str):
    return [t for t in TASKS if t.startswith(incomplete)]


def complete_runs(incomplete: str):
    """Run names for shell completion: the runs directory ($NRAMCTL_RUNS_DIR or ./runs), latest, and
    the shipped models."""
    from .runs import PRETRAINED
    store = RunStore(os.environ.get("NRAMCTL_RUNS_DIR", "runs"))
    names = [r.name for r in store.runs()] + ["latest"]
    if PRETRAINED.is_dir():
        names += [f"pretrained/{p.name}" for p in sorted(PRETRAINED.iterdir()) if p.is_dir()]
    return [n for n in names if n.startswith(incomplete)]


RunRef = Annotated[Optional[str], typer.Argument(help="run-N, run-N/seed-K, pretrained/TASK or latest.",
                                                 autocompletion=complete_runs)]
MemOpt = Annotated[Optional[int], typer.Option("--M", help="Memory size (default: the run's).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the fresh examples.")]
Extra = Annotated[str, typer.Option("--extra-steps", help="Run K steps beyond the task's rule (T + K), or T "
                                    "for twice its steps: does the answer survive?")]


def _int_list(flag, text):
    """'20,50,100' -> [20, 50, 100], or a one-line error."""
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: expected integers, got {text!r}") from None


def _extend(cfg, extra):
    """Apply --extra-steps to a run's config (its T rule)."""
    from .data import extended_rule
    if str(extra).upper() != "T" and not (str(extra).isdigit() and int(extra) <= 10**6):
        raise ConfigError(f"--extra-steps {extra!r}: a whole number from 0 to 1,000,000, or T")
    cfg.T = extended_rule(cfg.T, extra)
    return cfg


def exits(fn):
    """Library errors become a red one-line message and exit code 2; Abort its own code."""
    @functools.wraps(fn)
    def run(*a, **k):
        try:
            return fn(*a, **k)
        except USAGE_ERRORS as e:
            render.error(str(e))
            raise typer.Exit(2)
        except Abort as e:
            raise typer.Exit(e.code)
        except KeyboardInterrupt:           # commands without their own handler (train has one)
            render.error("interrupted")
            raise typer.Exit(130)
    return run


def command(*args, **kwargs):
    """Register a command (on `group`, default the app) wrapped by `exits`."""
    def wrap(fn):
        return (kwargs.pop("group", app)).command(*args, **kwargs)(exits(fn))
    return wrap


def _model(runs_dir, ref):
    """(run, config, one-seed model, display name) for a run reference."""
    from .experiment import load_model
    run, seed = RunStore(runs_dir).resolve(ref)
    cfg, model, seed = load_model(run, seed)
    return run, cfg, model, f"{run.name}/seed-{seed}" if cfg.train.seeds > 1 else run.name


def _fits(t, M):
    """The task t at memory size M, or a one-line error if not even its smallest difficulty fits."""
    if M < t.min_M(t.min_difficulty):
        raise TaskError(f"{t.name}: M={M} is too small (needs M >= {t.min_M(t.min_difficulty)})")
    return t


FUZZY_MAX_M = 400           # the fuzzy machine holds M x M floats per example
MAX_M = 10_000_000          # examples are generated as dense arrays of M cells
MAX_EXAMPLES = 1_000_000


def _memory(cfg, M, difficulty, fuzzy=True):
    """(M, difficulty) for a command on this run's task, checked: M in range for the machine used,
    the difficulty within what M holds, and its T within the rule's bounds."""
    M = cfg.M if M is None else M
    if fuzzy and M > FUZZY_MAX_M:
        raise ConfigError(f"--M {M}: the fuzzy machine needs M x M memory per example (at most M = "
                          f"{FUZZY_MAX_M}); use --discrete for large M")
    if M > MAX_M:
        raise ConfigError(f"--M {M}: at most {MAX_M:,}")
    t = _fits(task(cfg.task), M)
    d = difficulty if difficulty is not None else min(cfg.difficulty, t.max_difficulty(M))
    t.check(d, M)
    cfg.T_of(d)
    return M, d


def _count(value, flag, most=MAX_EXAMPLES):
    if not 1 <= value <= most:
        raise ConfigError(f"{flag} {value}: must be between 1 and {most:,}")
    return value


@command()
def train(
    task_name: Annotated[Optional[str], typer.Argument(metavar="TASK", help="One of: " + ", ".join(TASKS),
                                                       autocompletion=complete_tasks)] = None,
    M: Annotated[Optional[int], typer.Option(
        "--M", help="Memory size (alone, it caps the difficulty at the largest this M holds).")] = None,
    difficulty: Annotated[Optional[int], typer.Option(help="Largest difficulty trained on.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Step budget (with --resume: the new budget).")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Time budget: minutes of training over every "
                                                     "session (with --resume: the new budget).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="First seed.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Train this many seeds at once.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: the next run-N).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Your own tasks.yaml.")] = None,
    set_: Annotated[List[str], typer.Option("--set", help="Override a field: key=value.")] = [],
    resume_run: Annotated[Optional[str], typer.Option("--resume", help="Continue an earlier run.",
                                                      autocompletion=complete_runs)] = None,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard events "
                                              "(runs/run-N/tensorboard/seed-K).")] = False,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Train a model on a task with the paper's method; writes runs/run-N."""
    from .experiment import new_run, resume, seed_results, train as train_run
    store = RunStore(runs_dir)
    if minutes is not None:
        _positive("--minutes", minutes)
    if resume_run:
        if task_name:
            raise ConfigError("give either TASK or --resume RUN, not both")
        given = {"--M": M, "--difficulty": difficulty, "--seed": seed, "--seeds": seeds, "--name": name,
                 "--config": config, "--set": set_ or None}
        run = _to_resume(store, resume_run, given, "run",
                         "only --steps and --minutes extend its budget; start a new run instead")
        from .reproduce import unfinished
        if unfinished(run):
            raise RunError(f"{run.name} is a reproduce run; continue it with: nramctl reproduce --resume {run.name}")
        if tensorboard:
            from .tboard import require
            require()
        trainer = resume(run, steps, minutes)
        if tensorboard and not trainer.cfg.train.tensorboard:
            from . import tboard
            trainer.cfg.train.tensorboard = True
            run.write_config(trainer.cfg)
            tboard.export(run)
        for w in run.warnings:
            render.warning(w)
    else:
        if not task_name:
            raise ConfigError("missing TASK (or --resume RUN)")
        if M is not None and difficulty is None:
            # --M alone: train at the task's difficulty, or at the largest one this M holds
            t = _fits(task(task_name), M)
            difficulty = min(task_config(task_name, config, set_).difficulty, t.max_difficulty(M))
        flags = {"M": M, "difficulty": difficulty, "train.steps": steps, "train.max_minutes": minutes,
                 "train.seed": seed, "train.seeds": seeds, "train.tensorboard": "true" if tensorboard else None}
        overrides = list(set_) + [f"{k}={v}" for k, v in flags.items() if v is not None]
        cfg = task_config(task_name, config, overrides)
        if cfg.train.tensorboard:
            from .tboard import require
            require()
        run, trainer = new_run(store, cfg, name)

    t0 = time.perf_counter()
    with stopping_signals() as stop:
        with render.TrainProgress(run.name, trainer.cfg.train.steps, trainer.step, stderr=json,
                                  seeds=trainer.all_seeds()) as bar:
            result = train_run(run, trainer, on_log=bar.update, should_stop=stop)
    summary = {"run": run.name, "path": str(run.path), "task": trainer.cfg.task, "result": result,
               "steps": trainer.step, "seconds": time.perf_counter() - t0,
               "seeds": seed_results(trainer)}
    summary["error"] = min((r["best_error"] for r in summary["seeds"] if r["best_error"] is not None),
                           default=None)
    if json:
        render.emit_json(summary)
    else:
        render.train_summary(summary)
    if result == "interrupted":
        render.error(f"interrupted at step {trainer.step}; continue with: nramctl train --resume {run.name}")
        raise Abort(stop.exit_code())


@command("eval")
def eval_cmd(
    run_ref: RunRef = None,
    difficulty: Annotated[Optional[int], typer.Option(help="Difficulty (default: the training one).")] = None,
    n: Annotated[int, typer.Option("--n", help="Examples.")] = 1000,
    discrete: Annotated[bool, typer.Option(help="Run the discretized machine.")] = False,
    M: MemOpt = None,
    extra: Extra = "0",
    cells: Annotated[bool, typer.Option("--cells", help="Also the error of each output cell (the k-th "
                                        "scored cell in memory order): where a model goes wrong.")] = False,
    seed: Seed = 12345,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Error and example error of a trained model on fresh examples."""
    from .evaluate import evaluate
    _count(n, "--n")
    run, cfg, model, name = _model(runs_dir, run_ref)
    _extend(cfg, extra)
    M, d = _memory(cfg, M, difficulty, fuzzy=not discrete)
    import numpy as np
    res = evaluate(model, cfg, M, np.full(n, d), np.random.default_rng(seed), discrete, cells=cells)
    out = {"run": name, "task": cfg.task, "M": M, "difficulty": d, "n": n, "discrete": discrete,
           "T": cfg.T_of(d), "extra_steps": extra,
           "error": float(res["error"][0]), "example_error": float(res["example_error"][0])}
    if cells:
        out["cells"] = [{"cell": k, "scored": int(s), "wrong": int(w), "error": float(w / s)}
                        for k, (w, s) in enumerate(zip(res["cell_wrong"][0], res["cell_scored"][0]))]
    render.emit_json(out) if json else render.eval_result(out)


@command()
def generalize(
    run_ref: RunRef = None,
    M: Annotated[int, typer.Option("--M", help="Memory size to test at.")] = 50,
    n: Annotated[Optional[int], typer.Option("--n", help="Examples per difficulty "
                                             "(default 100; 5 with --discrete beyond M=1000).")] = None,
    difficulty: Annotated[Optional[int], typer.Option(help="Only this difficulty.")] = None,
    max_difficulty: Annotated[Optional[int], typer.Option(help="Stop at this difficulty.")] = None,
    discrete: Annotated[bool, typer.Option(help="Only the constant-time discrete executor "
                                                "(any M; sparse memory).")] = False,
    extra: Extra = "0",
    seed: Seed = 12345,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Error against difficulty at a larger memory, fuzzy and discretized side by side."""
    from .evaluate import difficulty_grid
    if n is not None:
        _count(n, "--n")
    run, cfg, model, name = _model(runs_dir, run_ref)
    _extend(cfg, extra)
    t = task(cfg.task)
    _memory(cfg, M, t.min_difficulty, fuzzy=not discrete)
    if difficulty is not None:
        _memory(cfg, M, difficulty, fuzzy=not discrete)
        ds = [difficulty]
    else:
        if max_difficulty is not None and max_difficulty < t.min_difficulty:
            raise ConfigError(f"--max-difficulty {max_difficulty}: below {t.name}'s minimum {t.min_difficulty}")
        top = min(t.max_difficulty(M), max_difficulty or M)
        ds = difficulty_grid(t.min_difficulty, top) if discrete else list(range(t.min_difficulty, top + 1))
        cfg.T_of(ds[-1])
    n = n or (5 if discrete and M > 1000 else 100)
    out = _generalize(run, cfg, model, name, M, n, ds, discrete, extra, seed)
    render.emit_json(out) if json else render.generalization(out)


def _generalize(run, cfg, model, name, M, n, ds, discrete=False, extra="0", seed=12345):
    """Generalization rows at M over the difficulties ds, saved into the run as
    generalize-M{M}[-discrete][-extraK].json (unless it is read-only)."""
    from .evaluate import executor_generalization, generalization
    import numpy as np
    rng = np.random.default_rng(seed)
    run_rows = executor_generalization if discrete else generalization
    out = {"run": name, "task": cfg.task, "M": M, "n": n, "discrete_only": discrete, "extra_steps": extra,
           "rows": run_rows(model, cfg, M, n, rng, ds)}
    if not run.readonly:
        more = "" if extra in ("0", 0) else f"-extra{str(extra).upper()}"
        fname = f"generalize-M{M}{'-discrete' if discrete else ''}{more}.json"
        run.write_json(fname, out)
        out["saved"] = str(run.path / fname)
    return out


@command("inspect")
def inspect_cmd(
    run_ref: RunRef = None,
    step: Annotated[Optional[int], typer.Option(help="Show this step in full.")] = None,
    example: Annotated[int, typer.Option(help="Which example of the stream.")] = 0,
    difficulty: Annotated[Optional[int], typer.Option(help="Difficulty of the example.")] = None,
    M: MemOpt = None,
    program: Annotated[bool, typer.Option(help="Show the learned circuit as a readable program.")] = False,
    seed: Seed = 0,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Per-step circuit traces of one example, or (--program) the learned program."""
    from .traces import example_batch, trace
    run, cfg, model, name = _model(runs_dir, run_ref)
    M, d = _memory(cfg, M, difficulty)
    if program:
        from .readable import describe
        b = example_batch(cfg, M, d, 20, seed)
        out = {"run": name, "task": cfg.task, "M": M, "difficulty": d,
               **describe(model, b.memory.tolist(), M, b.T.tolist())}
        render.emit_json(out) if json else render.program(out)
        return
    if not 0 <= example < MAX_EXAMPLES:
        raise ConfigError(f"--example must be between 0 and {MAX_EXAMPLES - 1:,}, got {example}")
    check_memory(unroll_bytes(1, cfg.T_of(d), M, model.gates, model.R, model.hidden),
                 f"a trace at M={M}, T={cfg.T_of(d)}")
    tr = {"run": name, **trace(model, cfg, M, d, example, seed)}
    if step is not None and not 1 <= step <= len(tr["steps"]):
        raise ConfigError(f"--step must be between 1 and {len(tr['steps'])}, got {step}")
    if json:
        if step is not None:
            tr["steps"] = [tr["steps"][step - 1]]
        render.emit_json(tr)
    elif step is not None:
        render.inspect_step(tr, step)
    else:
        render.inspect_overview(tr)


@command()
def reproduce(
    tasks: Annotated[Optional[List[str]], typer.Argument(metavar="[TASK]...",
                                                         help="Default: the five easy tasks.")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds trained side by side per task. [default: 8]")] = None,
    budget_minutes: Annotated[Optional[float], typer.Option(
        help="Training time per task. [default: 30] With --resume: the run's new budget.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Test examples per difficulty. [default: 20]")] = None,
    up_to: Annotated[Optional[int], typer.Option(help="Largest test difficulty. [default: 50]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Your own tasks.yaml.")] = None,
    set_: Annotated[List[str], typer.Option("--set", help="Override a field: key=value.")] = [],
    resume_run: Annotated[Optional[str], typer.Option(
        "--resume", help="Go on with an interrupted reproduce run (one task) where it stopped; with a "
                         "longer --budget-minutes, extend a finished run's measurement.",
        autocompletion=complete_runs)] = None,
    publish: Annotated[bool, typer.Option(help="Ship each solved model whose discretized form is exact up "
                                               "to --up-to as nramctl/pretrained/TASK.")] = False,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Run the paper's protocol per task and print our results beside the paper's Table 1."""
    from .experiment import resume
    from .reproduce import EASY, PLAN, RESULT, Interrupted, extend, plan_of, run_task, start_task
    store, results = RunStore(runs_dir), []
    if resume_run:
        given = {"TASK": tasks, "--seeds": seeds, "--n": n, "--up-to": up_to, "--config": config,
                 "--set": set_ or None}
        run = _to_resume(store, resume_run, given, "reproduce run", "only --budget-minutes sets its budget anew")
        if budget_minutes is not None:
            _positive("--budget-minutes", budget_minutes)
            if run.read_json(RESULT) is not None:    # finished: a longer budget reopens its measurement
                extend(run, budget_minutes * 60)
        plan = plan_of(run)
        trainer = resume(run)
        if budget_minutes is not None and plan["phase"] == "measure":
            plan["budget_seconds"] = budget_minutes * 60
            run.write_json(PLAN, plan)
        for w in run.warnings:
            render.warning(w)
        jobs = [lambda: (run, trainer, plan)]
    else:
        names = [task(t).name for t in (tasks or EASY)]
        # the budget is time; a train.steps given with --set bounds the steps as well
        steps = [] if any(x.strip().startswith("train.steps=") for x in set_) else ["train.steps=1000000"]
        cfgs = [task_config(t, config, [f"train.seeds={seeds or 8}", *steps, *set_]) for t in names]
        budget = _positive("--budget-minutes", 30.0 if budget_minutes is None else budget_minutes) * 60
        tests = (20 if n is None else n, 50 if up_to is None else up_to)
        # each task's run is made when its turn comes
        jobs = [functools.partial(start_task, store, cfg, budget, *tests) for cfg in cfgs]
    for job in jobs:
        run, trainer, plan = job()
        with stopping_signals() as stop:
            try:
                with render.TrainProgress(trainer.cfg.task, None, trainer.step, stderr=json,
                                          seeds=trainer.all_seeds()) as bar:
                    r = run_task(run, trainer, plan, on_log=bar.update, should_stop=stop)
            except Interrupted:
                render.error(f"{run.name} interrupted at step {trainer.step}; continue with: "
                             f"nramctl reproduce --resume {run.name}")
                raise Abort(stop.exit_code()) from None
        results.append(r)
        run.write_json(RESULT, r)
        if publish and r["result"] == "solved" and r["discrete_max_error"] == 0:
            from .experiment import publish as publish_model
            from .runs import PRETRAINED
            keep = ("seeds_tried", "seeds_solved", "share", "share_low", "share_high", "first_solved_seconds",
                    "budget_seconds", "generalization_perfect_up_to", "discrete_perfect_up_to")
            r["published"] = str(publish_model(run, r["seed_index"], PRETRAINED / r["task"],
                                               {k: r[k] for k in keep}).path)
        if not json:
            render.reproduce_row(r)
    render.emit_json(results) if json else render.reproduce_table(results)


def _to_resume(store, ref, given, kind, allowed):
    """The run --resume names; flags that would change it (`given` ones not None) are refused, and so
    is a run that cannot be written."""
    refused = [flag for flag, v in given.items() if v is not None]
    if refused:
        raise ConfigError(f"{', '.join(refused)} cannot change a {kind} being resumed ({allowed})")
    run, _ = store.resolve(ref)
    if run.readonly:
        raise RunError(f"{run.name} is read-only")
    return run


def _positive(flag, value):
    if not value > 0:
        raise ConfigError(f"{flag} {value}: give a positive number of minutes")
    return value


@command()
def plot(
    run_ref: RunRef = None,
    what: Annotated[str, typer.Option(help="learning, execution, generalization or gates.")] = "learning",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG file (default: the run's "
                                                   "plots/WHAT.png; needed for read-only runs).")] = None,
    example: Annotated[int, typer.Option(help="Which example of the stream (execution, gates).")] = 0,
    difficulty: Annotated[Optional[int], typer.Option(help="Difficulty of the example.")] = None,
    M: MemOpt = None,
    step: Annotated[Optional[int], typer.Option(help="gates: this step only (default: the example's mean).")] = None,
    seed: Seed = 0,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Draw a run as a PNG: learning curves, one execution, generalization, or the gates' attention;
    for a sweep (sweep-N), the share of seeds solved per setting."""
    from . import plots
    if what not in plots.KINDS:
        raise ConfigError(f"--what {what!r}: one of {', '.join(plots.KINDS)}")
    from . import sweep as sw
    store = RunStore(runs_dir)
    if sw.is_sweep(store, run_ref):                                         # a sweep: share per setting
        summary = sw.summary(store, sw.load(store, run_ref))
        path = output or store.root / run_ref / "plots" / "shares.png"
        plots.draw_sweep(summary, path)
        render.emit_json({"sweep": run_ref, "path": str(path)}) if json else render.console.print(f"wrote {path}")
        return
    run, _ = RunStore(runs_dir).resolve(run_ref)
    if output is None and run.readonly:
        raise ConfigError(f"{run.name} is read-only: give -o FILE.png")
    path = output or run.path / "plots" / f"{what}.png"
    if not path.parent.is_dir() and output is not None:
        raise ConfigError(f"-o {output}: folder {output.parent} does not exist")
    if what == "learning":
        records = run.metrics()
        if not records:
            raise ConfigError(f"{run.name} has no metrics to draw (a shipped model keeps none)")
        plots.draw_learning(plots.learning_data(records), run.name, path)
    else:
        _, cfg, model, name = _model(runs_dir, run_ref)
        if what == "generalization":
            plots.draw_generalization(_generalization_for_plot(run, cfg, model, name, M), name, path)
        else:
            if not 0 <= example < MAX_EXAMPLES:
                raise ConfigError(f"--example must be between 0 and {MAX_EXAMPLES - 1:,}, got {example}")
            Mx, d = _memory(cfg, M, difficulty)
            if what == "execution":
                data = plots.execution_data(model, cfg, Mx, d, example, seed)
                plots.draw_execution(data, f"{name}: {cfg.task}, example {example}", path)
            else:
                data = plots.gates_data(model, cfg, Mx, d, example, seed, step)
                plots.draw_gates(data, name, path)
    out = {"run": run.name, "what": what, "path": str(path)}
    render.emit_json(out) if json else render.console.print(f"wrote {path}")


def _generalization_for_plot(run, cfg, model, name, M):
    """The saved fuzzy `generalize` results at M (or the largest saved M); computed (and saved) if none."""
    saved = [int(m.group(1)) for f in run.path.glob("generalize-M*.json")
             if (m := re.fullmatch(r"generalize-M(\d+)\.json", f.name))]
    pick = M if M is not None else max(saved, default=50)
    out = run.read_json(f"generalize-M{pick}.json") if pick in saved else None
    if out is not None:
        return out
    t = task(cfg.task)
    _memory(cfg, pick, t.min_difficulty)
    return _generalize(run, cfg, model, name, pick, 100, list(range(t.min_difficulty, t.max_difficulty(pick) + 1)))


@command()
def sweep(
    target: Annotated[Optional[str], typer.Argument(metavar="TASK|show", help="The task to sweep, or `show` to "
                                                    "print a sweep's summary again.",
                                                    autocompletion=complete_tasks)] = None,
    shown: Annotated[Optional[str], typer.Argument(metavar="[SWEEP]", help="With show: sweep-N.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep name (default: the next sweep-N); its runs are "
                                                "NAME-SSS-R.")] = None,
    set_: Annotated[List[str], typer.Option("--set", help="KEY=V1,V2 (a grid axis) or KEY=loguniform(a,b), "
                                            "uniform(a,b), choice(x,y) (random search, with --samples).")] = [],
    samples: Annotated[Optional[int], typer.Option(help="Random search: this many settings.")] = None,
    sample_seed: Annotated[int, typer.Option(help="Seed of the random search's draws.")] = 0,
    seeds: Annotated[int, typer.Option(help="Seeds per setting.")] = 4,
    seeds_per_run: Annotated[int, typer.Option(help="Seeds batched in one run.")] = 1,
    workers: Annotated[Optional[int], typer.Option(help="Local worker processes (default: cores / threads).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads per run.")] = 1,
    budget_minutes: Annotated[Optional[float], typer.Option(help="Each run's training time.")] = None,
    halving: Annotated[Optional[int], typer.Option(
        help="Successive halving: after each rung the best 1/ETA of the settings go on with ETA times the "
             "budget (their runs resumed).", metavar="ETA")] = None,
    rungs: Annotated[Optional[int], typer.Option(
        help="With --halving: at most this many rungs (default: until one setting is left).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto, HOST:PORT or ray://...")] = None,
    ship: Annotated[bool, typer.Option(help="Ray: copy every finished run back to this machine, even where "
                                            "a node sees the runs directory.")] = False,
    resume_sweep: Annotated[Optional[str], typer.Option("--resume", help="Go on with sweep-N: keep finished "
                                                        "runs, resume interrupted ones, start the rest.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the planned runs and exit.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="Your own tasks.yaml.")] = None,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """Train a grid or a random search of settings, each with several seeds, locally or on Ray."""
    from . import sweep as sw
    store = RunStore(runs_dir)
    if target == "show":
        if not shown:
            raise ConfigError("sweep show needs a sweep: nramctl sweep show sweep-N")
        out = sw.summary(store, sw.load(store, shown))
        render.emit_json(out) if json else render.sweep_table(out)
        return
    if shown:
        raise ConfigError(f"unexpected argument {shown!r} (did you mean: nramctl sweep show {shown}?)")
    if threads < 1 or (workers is not None and workers < 1):
        raise ConfigError("--threads and --workers must be at least 1")
    cores = os.cpu_count() or 1
    workers = workers or sw.default_workers(threads)
    if address is None and workers * threads > cores:
        raise ConfigError(f"{workers} workers x {threads} threads = {workers * threads} > {cores} cores: runs "
                          "that share cores slow each other down many times over")
    if resume_sweep:
        if target or name:
            raise ConfigError("give either TASK (and --name) or --resume SWEEP, not both")
        if halving is not None or rungs is not None:
            raise ConfigError("--halving and --rungs are planned with the sweep; they cannot change on --resume")
        manifest = sw.load(store, resume_sweep)
    elif not target:
        raise ConfigError("missing TASK (or --resume SWEEP, or show SWEEP)")
    else:
        _count(seeds, "--seeds", 100_000)
        _count(seeds_per_run, "--seeds-per-run", 4096)
        if samples is not None:
            _count(samples, "--samples", 100_000)
        if budget_minutes is not None:
            _positive("--budget-minutes", budget_minutes)
        if halving is not None and halving < 2:
            raise ConfigError(f"--halving {halving}: give ETA >= 2 (the best 1/ETA of the settings go on)")
        if rungs is not None:
            if halving is None:
                raise ConfigError("--rungs needs --halving ETA")
            _count(rungs, "--rungs", 100)
        if halving and ship:
            raise ConfigError("--halving resumes runs between rungs, so it needs the runs directory on every "
                              "node: drop --ship")
        task_name = task(target).name
        make = lambda sweep_name: sw.plan(sweep_name, task_name, set_, samples, sample_seed, seeds, seeds_per_run,
                                          budget_minutes, config=config, halving=halving, rungs=rungs)
        manifest = make(name or "sweep-N") if dry_run else sw.create(store, make, name)
    if dry_run:
        render.emit_json(manifest) if json else render.sweep_plan(manifest)
        return
    on_done = None if json else lambda name, rc: render.console.print(
        f"  {name}: {'done' if rc == 0 else f'exit {rc}'}")
    where = 'Ray at ' + address if address else f'{workers} worker(s) x {threads} thread(s)'
    while True:                                    # one pass per rung of successive halving (else one)
        todo, busy = sw.commands(store, manifest, threads)    # busy: trained by a live process, left to it
        if not json:
            h = manifest.get("halving")
            rung = f", rung {h['rung']}" if h else ""
            render.console.print(f"{manifest['sweep']}{rung}: {len(todo)} run(s) to train ({where})"
                                 + (f"; {len(busy)} being trained by another process" if busy else ""))
        if address:
            codes = sw.run_ray(store, manifest, todo, threads, address, on_done, ship)
        else:
            codes = sw.run_local(store, todo, workers, on_done)
        failed = {n: c for n, c in codes.items() if c[0] != 0}
        if failed or busy or not sw.promote(store, manifest):
            break
    out = sw.summary(store, manifest)
    out["failed_runs"] = {n: c[1] for n, c in failed.items()}
    out["busy_runs"] = {n: st.get("pid") for n, st in busy}
    render.emit_json(out) if json else render.sweep_table(out)
    if busy and not failed:
        name, st = busy[0]
        render.error(f"{len(busy)} run(s) left to the process training them (e.g. {name}: process "
                     f"{st.get('pid')} on {st.get('host')}); once it ends: nramctl sweep --resume {manifest['sweep']}")
        raise Abort(1)
    if failed:
        render.error(f"{len(failed)} run(s) did not finish (e.g. {next(iter(failed))}: "
                     f"{' '.join(next(iter(failed.values()))[1]) or 'interrupted'}); "
                     f"continue with: nramctl sweep --resume {manifest['sweep']}")
        raise Abort(1)


@command()
def export(
    run_ref: RunRef = None,
    python: Annotated[Optional[Path], typer.Option("--python", help="Write a standalone Python program here.")] = None,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Write the run's TensorBoard events from "
                                              "its metrics (runs/run-N/tensorboard).")] = False,
    runs_dir: RunsDir = Path("runs"),
):
    """Write a model's algorithm as standalone Python (no torch), or a run's TensorBoard events."""
    if (python is None) == (not tensorboard):
        raise ConfigError("give one of --python FILE or --tensorboard")
    if tensorboard:
        from . import tboard
        run, _ = RunStore(runs_dir).resolve(run_ref)
        if run.readonly:
            raise RunError(f"{run.name} is read-only (and keeps no metrics)")
        if not run.metrics():
            raise RunError(f"{run.name} has no metrics to export")
        path = tboard.export(run)
        render.console.print(f"wrote {path}: view with tensorboard --logdir {run.path.parent}")
        return
    from .readable import export_python
    from .runs import atomic_write
    run, cfg, model, name = _model(runs_dir, run_ref)
    try:
        code = export_python(model, cfg.task, name)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    if not python.parent.is_dir():
        raise ConfigError(f"--python {python}: folder {python.parent} does not exist")
    atomic_write(python, code)
    render.console.print(f"wrote {python}: call run(memory, T) on a list of {cfg.M}-or-more ints")


@runs_app.callback()
@exits
def runs(
    ctx: typer.Context,
    task_name: Annotated[Optional[str], typer.Option("--task", help="Only runs of this task.")] = None,
    state: Annotated[Optional[str], typer.Option(help="Only runs in this state (running, interrupted, "
                                                      "solved, budget).")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV for spreadsheets.")] = False,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """A table of runs."""
    if ctx.invoked_subcommand:
        return
    if task_name is not None:
        task_name = task(task_name).name
    rows = [r for r in RunStore(runs_dir).table()
            if (task_name is None or r["task"] == task_name) and (state is None or r["state"] == state)]
    if json:
        render.emit_json(rows)
    elif csv:
        render.emit_csv(rows)
    else:
        render.runs_table(rows)


@command("show", group=runs_app)
def runs_show(
    run_ref: RunRef = None,
    top: Annotated[int, typer.Option("--top", help="With more seeds than this (a long search), list "
                                     "only this many, lowest best error first; 0 lists every seed.")] = 20,
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """A run's config, environment, per-seed results and files; with several seeds, how many were
    tried and solved."""
    if top < 0:
        raise ConfigError(f"--top {top}: must be 0 (every seed) or more")
    run, _ = RunStore(runs_dir).resolve(run_ref)
    st = run.status()
    out = {"run": run.name, "path": str(run.path), "state": st.get("state", "unknown"),
           "step": st.get("step"), "config": to_dict(run.config()),
           "environment": run.read_json("environment.json"), "seeds": st.get("seeds", []),
           "training": run.read_json("training.json"), "files": run.files()}
    render.emit_json(out) if json else render.run_show(out, top)


@command("share", group=runs_app)
def runs_share(
    run_refs: Annotated[List[str], typer.Argument(metavar="RUN...", help="Runs of one setting on different seeds.",
                                                  autocompletion=complete_runs)],
    runs_dir: RunsDir = Path("runs"),
    json: Json = False,
):
    """One share of seeds solved (95% interval) over runs of one setting on other seeds: 0-15, 16-31, ..."""
    from .shares import pool
    store, runs = RunStore(runs_dir), []
    for ref in run_refs:
        run, seed = store.resolve(ref)
        if seed is not None:
            raise RunError(f"{ref}: a share counts a whole run's seeds; give the run ({run.name})")
        st = run.status()
        if not st.get("seeds"):
            raise RunError(f"{run.name}: no per-seed records in its status.json (state {st.get('state', 'unknown')})")
        result = run.read_json(REPRODUCE_RESULT)
        runs.append({"name": run.name, "config": to_dict(run.config()), "seeds": st["seeds"],
                     "state": st.get("state", "unknown"),
                     "cpu_minutes": result.get("cpu_minutes") if isinstance(result, dict) else None})
    out = pool(runs)
    render.emit_json(out) if json else render.pooled_share(out)


@command("rm", group=runs_app)
def runs_rm(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="run-N or a run's name.",
                                           autocompletion=complete_runs)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    runs_dir: RunsDir = Path("runs"),
):
    """Delete a run (refused while it trains)."""
    store = RunStore(runs_dir)
    run, seed = store.resolve(run_ref)
    if run.readonly or seed is not None:
        raise RunError(f"{run_ref}: only a whole run in {store.root} can be deleted")
    run.refuse_if_training()
    if not yes and not typer.confirm(f"delete {run.path} ({len(run.files())} files)?", default=False):
        raise Abort(1)
    store.remove(run)
    render.console.print(f"deleted {run.path}")


@command()
def bench(
    batch: Annotated[int, typer.Option(help="Examples per seed.")] = 32,
    M: Annotated[str, typer.Option("--M", help="Memory size (comma-separated list with --discrete).")] = "20",
    T: Annotated[int, typer.Option("--T", help="Timesteps.")] = 20,
    R: Annotated[int, typer.Option("--R", help="Registers.")] = 4,
    hidden: Annotated[int, typer.Option(help="Controller hidden size.")] = 64,
    controller: Annotated[str, typer.Option(help="mlp or lstm.")] = "lstm",
    seeds: Annotated[str, typer.Option(help="Models trained side by side (comma-separated list: one row each).")] = "1",
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 10,
    threads: Annotated[Optional[str], typer.Option(help="Torch threads (default: torch's; comma-separated list: "
                                                        "one row each).")] = None,
    repeat: Annotated[int, typer.Option(help="Time each row this many times and keep the best.")] = 1,
    discrete: Annotated[bool, typer.Option(help="Time the constant-time discrete executor at each --M "
                                                "instead (e.g. --M 1000,10000,100000,1000000).")] = False,
    baseline: Annotated[Optional[Path], typer.Option(help="Also run this naive script (shared/bench/nram_naive.py) "
                                                          "with the same flags and print the ratio.")] = None,
    startup: Annotated[bool, typer.Option("--startup", help="Instead: start-up time of the commands that compute "
                                          "nothing (--help, runs, tasks), beside Python importing typer and "
                                          "rich and a minimal Typer app; median of --steps fresh processes.")] = False,
    eval_memory: Annotated[bool, typer.Option("--eval-memory", help="Instead: peak memory of a fuzzy evaluation "
                                              "of pretrained/copy at each --M (--batch examples, the largest "
                                              "difficulty M holds), one fresh process per M.")] = False,
    json: Json = False,
):
    """Time full training steps (forward, backward, Adam) with all 14 gates on random data."""
    if startup:
        from .bench import bench_startup
        rows = bench_startup(max(steps, 3))
        render.emit_json(rows) if json else render.bench_startup_table(rows)
        return
    if controller not in ("mlp", "lstm"):
        raise ConfigError(f"--controller: {controller!r} must be mlp or lstm")
    Ms, seed_counts = _int_list("--M", M), _int_list("--seeds", seeds)
    thread_counts = _int_list("--threads", threads) if threads else [None]
    most_seeds = max(seed_counts)
    if (min(Ms) < 3 or min(batch, T, R, hidden, min(seed_counts), steps, repeat) < 1
            or (threads and min(thread_counts) < 1)):
        raise ConfigError("--M must be >= 3 and every other size >= 1")
    if max(Ms) > (MAX_M if discrete else FUZZY_MAX_M):
        raise ConfigError(f"--M {max(Ms)}: at most {MAX_M if discrete else FUZZY_MAX_M:,}"
                          + ("" if discrete else " for training steps (the fuzzy machine is M x M)"))
    if max(batch, T, R, hidden, most_seeds, steps) > 10**6:
        raise ConfigError("every size must be at most 1,000,000")
    if not discrete:
        from .gates import PAPER_GATES, circuit
        for m in Ms:
            check_memory(unroll_bytes(most_seeds * batch, T, m, circuit(PAPER_GATES), R, hidden),
                         f"a training step at M={m}, T={T}, {most_seeds} seed(s) x batch {batch}")
    if eval_memory:
        if max(Ms) > FUZZY_MAX_M or min(Ms) < 3:
            raise ConfigError(f"--M: between 3 and {FUZZY_MAX_M} for --eval-memory")
        from .bench import bench_eval_memory
        rows = [bench_eval_memory(m, batch) for m in Ms]
        render.emit_json(rows) if json else render.bench_eval_memory_table(rows)
        return
    if discrete:
        from .bench import bench_discrete
        rows = [bench_discrete(m, steps=max(steps, 1000)) for m in Ms]
        flat = max(r["seconds_per_step"] for r in rows) / min(r["seconds_per_step"] for r in rows)
        out = {"rows": rows, "slowest_over_fastest": flat}
        render.emit_json(out) if json else render.bench_discrete_table(out)
        return
    from .bench import bench_grid
    out = bench_grid(Ms, thread_counts, seed_counts, repeat, baseline, batch=batch, T=T, R=R, hidden=hidden,
                     controller=controller, steps=steps)
    if json:
        rows = out["rows"]
        render.emit_json(rows[0] if len(rows) == 1 else out)
    else:
        render.bench_table(out)


@command()
def basin(
    task_name: Annotated[str, typer.Argument(metavar="TASK", help="A task with a hand-wired circuit: access, "
                                             "increment, copy, permutation, listsearch or (with --circuit "
                                             "fixed or lt) merge.",
                                             autocompletion=complete_tasks)],
    mode: Annotated[str, typer.Option(help="scale: the solved model's head x AMOUNT (softer choices); mix: "
                                           "(1 - AMOUNT) solved + AMOUNT fresh initialization.")] = "scale",
    amounts: Annotated[str, typer.Option(help="Comma-separated amounts, one row each.")] = "0.3,0.2,0.15,0.1",
    steps: Annotated[int, typer.Option(help="Training steps from each perturbed start.")] = 600,
    seeds: Annotated[int, typer.Option(help="Seeds per amount (each its own fresh initialization and data).")] = 8,
    circuit: Annotated[Optional[str], typer.Option(help="Another circuit of the task, phase-free (one circuit "
                                                   "every step): uniform (permutation: the 14 gates three times, "
                                                   "M >= 14; listsearch: READ, INC, EQ, ADD, WRITE five times), "
                                                   "fixed (permutation: READ, INC, ADD, MIN, WRITE three "
                                                   "times, exact with extra steps; merge: its 20 gates once), "
                                                   "lt (merge: the same without SUB, B's pointer moved by its "
                                                   "own LT), "
                                                   "sequence (listsearch: its 11 gates once), walk (listsearch: "
                                                   "the same walk never stopping, its comparison wired, a "
                                                   "stepping stone, not a solution), walk-only (the walk "
                                                   "and nothing else), halt (listsearch: a walk that "
                                                   "halts on its zero flag the step after a match; ten "
                                                   "gates once, R 2), halt-walk (its walk, never halting, "
                                                   "the flag set) or halt-walk-only (its walk alone).")] = None,
    n: Annotated[int, typer.Option("--n", help="Test examples per training difficulty.")] = 50,
    config: Annotated[Optional[Path], typer.Option(help="Your own tasks.yaml.")] = None,
    set_: Annotated[List[str], typer.Option("--set", help="Override a field: key=value (training settings, "
                                            "model.controller, model.hidden).")] = [],
    json: Json = False,
):
    """Start seeds from a task's hand-wired circuit learned by an MLP (or, with --set
    model.controller=lstm, an LSTM), perturbed, train them, and count those that come back to 0 error:
    the width of a real solution's basin under these settings."""
    from .basin import basin_config, check_plan, measure
    try:
        values = [float(a) for a in amounts.split(",")]
    except ValueError:
        raise ConfigError(f"--amounts: expected numbers, got {amounts!r}") from None
    check_plan(mode, values)               # before the progress bar, so an error is its only line
    if not (1 <= seeds <= 4096 and 0 <= steps <= 10**7 and 1 <= n <= 10**5):
        raise ConfigError("--seeds 1 to 4,096, --steps 0 to 10,000,000, --n 1 to 100,000")
    cfg = basin_config(task_name, config, set_, seeds, circuit)
    with render.BasinProgress(len(values) * steps, stderr=json) as bar:
        out = measure(cfg, mode, values, steps, n, progress=bar.advance, variant=circuit)
    render.emit_json(out) if json else render.basin_table(out)


@tasks_app.callback()
@exits
def tasks(ctx: typer.Context, config: Annotated[Optional[Path], typer.Option(help="Your own tasks.yaml.")] = None,
          json: Json = False):
    """List the tasks with their default settings."""
    if ctx.invoked_subcommand:
        return
    rows = []
    for name in TASKS:
        cfg = task_config(name, config)
        rows.append({"task": name, "M": cfg.M, "difficulty": cfg.difficulty, "T": cfg.T,
                     "R": cfg.model.R, "controller": cfg.model.controller,
                     "gates": len(cfg.model.gates) * cfg.model.repeat,
                     "min_difficulty": task(name).min_difficulty, "stones": list(cfg.train.stones.names)})
    render.emit_json(rows) if json else render.tasks_table(rows)


@command("sample", group=tasks_app)
def tasks_sample(
    task_name: Annotated[str, typer.Argument(metavar="TASK")],
    difficulty: Annotated[int, typer.Option(help="Difficulty n.")] = 3,
    M: Annotated[int, typer.Option("--M", help="Memory size.")] = 12,
    n: Annotated[int, typer.Option("--n", help="How many examples.")] = 3,
    seed: Seed = 0,
    json: Json = False,
):
    """Show generated examples of a task."""
    t = task(task_name)
    import numpy as np
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        mem, target, mask = t.sample(difficulty, M, rng)
        examples.append({"memory": mem.tolist(), "target": target.tolist(), "mask": mask.astype(int).tolist()})
    out = {"task": t.name, "M": M, "difficulty": difficulty, "examples": examples}
    render.emit_json(out) if json else render.samples(out)


def _help_without_unused_renderers():
    """Import Typer's help formatter with stand-ins for rich's Markdown and Traceback renderers.

    `typer.rich_utils` imports both at its top (markdown-it and pygments with them: most of the time
    `nramctl --help` took), though nramctl's help draws neither: its markup mode is rich, not markdown,
    and its errors are one line, never a pretty traceback. Each stand-in is a class that loads the real
    one on first use (a call, an attribute, an isinstance check), so nothing changes if one is used."""
    import importlib
    import types
    if "typer.rich_utils" in sys.modules:
        return
    names = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}
    stand_ins = {}
    for module, cls in names.items():
        if module in sys.modules:
            continue

        class Lazy(type):
            def _real(cls, module=module, name=cls):
                return getattr(importlib.import_module(module), name)

            def __call__(cls, *args, **kwargs):
                return cls._real()(*args, **kwargs)

            def __getattr__(cls, attr):
                return getattr(cls._real(), attr)

            def __instancecheck__(cls, obj):
                return isinstance(obj, cls._real())

        stub = types.ModuleType(module)
        setattr(stub, cls, Lazy(cls, (), {}))
        stand_ins[module] = stub
    sys.modules.update(stand_ins)
    try:
        import typer.rich_utils  # noqa: F401
    except ImportError:
        pass
    finally:
        for module, stub in stand_ins.items():
            if sys.modules.get(module) is stub:
                del sys.modules[module]


def main():
    keep_freed_memory()
    if len(sys.argv) == 1 or "--help" in sys.argv[1:]:
        _help_without_unused_renderers()
    app()
