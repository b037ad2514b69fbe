"""The paper's protocol for one task (SPEC section 5), resumable at every step.

Train K seeds at the paper's train difficulty with the curriculum (one batched process), each until it
reaches 0 error on fresh examples or the time budget ends; report the share of seeds that solved with
its 95% Wilson interval; polish the first seed that solved and evaluate it at every difficulty up to 50
at the memory size difficulty 50 needs (T scaled by the task's rule), fuzzy and discretized; and set
the figures beside the paper's Table 1 row.

The protocol's own state lives beside the run's checkpoint, in reproduce-plan.json: the budget and the
tests it began with, its phase (measuring the share, then polishing) and, once measured, the seeds'
records. The budget is the trainer's training time, which checkpoints carry over sessions, so a run
stopped anywhere goes on (`reproduce --resume`) to the result an unstopped one gives.
"""
import time

import numpy as np

from . import native, records
from .evaluate import generalization
from .experiment import load_model, new_run, save_progress
from .runs import REPRODUCE_PLAN as PLAN, REPRODUCE_RESULT as RESULT
from .shares import counts_as_tried, wilson
from .tasks import task

PAPER = {  # Table 1: train error, generalization, discretization
    "access": ("0", "perfect", "perfect"), "increment": ("0", "perfect", "perfect"),
    "copy": ("0", "perfect", "perfect"), "reverse": ("0", "perfect", "perfect"),
    "swap": ("0", "perfect", "perfect"), "permutation": ("0", "almost perfect", "perfect"),
    "listk": ("0", "strong", "hurts"), "listsearch": ("0", "weak", "hurts"),
    "merge": ("1%", "weak", "hurts"), "walkbst": ("0.3%", "strong", "hurts"),
}
EASY = ["access", "increment", "copy", "reverse", "swap"]


class Interrupted(Exception):
    """The protocol stopped at a signal; the run holds a checkpoint `reproduce --resume` goes on from."""


def start_task(store, cfg, budget_s, per_difficulty=20, up_to=50, seed=12345):
    """A new run for the protocol, with its plan (budget, tests) saved beside it: (run, trainer, plan)."""
    cfg.train.until = "all"
    plan = _measuring(budget_s, per_difficulty, up_to, seed)
    run, trainer = new_run(store, cfg, files={PLAN: plan})
    return run, trainer, plan


def _measuring(budget_s, per_difficulty, up_to, seed):
    """A plan at its start: the budget and the tests, the share to be measured."""
    return {"budget_seconds": budget_s, "per_difficulty": per_difficulty, "up_to": up_to, "seed": seed,
            "phase": "measure"}


def unfinished(run):
    """Whether `reproduce` started this run and has not written its result."""
    return run.read_json(PLAN) is not None and run.read_json(RESULT) is None


def plan_of(run):
    """The protocol's plan of a run that `reproduce` started (RunError for any other run)."""
    from .runs import RunError
    plan = run.read_json(PLAN)
    if not isinstance(plan, dict) or plan.get("phase") not in ("measure", "polish"):
        raise RunError(f"{run.name} was not started by reproduce (no readable {PLAN})")
    if run.read_json(RESULT) is not None:
        raise RunError(f"{run.name}: its protocol has finished ({RESULT}); start a new one, or extend its "
                       "measurement with a longer --budget-minutes")
    return plan


def extend(run, budget_seconds):
    """Reopen a finished measurement for a longer budget (`reproduce --resume RUN --budget-minutes N`
    on a run whose protocol has ended): its seeds train on from where the budget stopped them, as if
    the run had been started with the longer budget. The earlier result is kept beside it, as
    reproduce-<budget>s.json. Refused where the first solved seed was polished after measuring (the
    checkpoint then holds the polished seed, no longer the measurement's end)."""
    from .runs import RunError
    run.refuse_if_training()
    plan, result = run.read_json(PLAN), run.read_json(RESULT)
    if not isinstance(plan, dict) or not isinstance(result, dict):
        raise RunError(f"{run.name} has no finished reproduce measurement to extend")
    if plan.get("polish"):
        raise RunError(f"{run.name}: its first solved seed was polished after the measurement, so the "
                       "measurement cannot go on; measure longer in a new run (with --set "
                       "train.polish_steps=0 a run stays extendable)")
    if budget_seconds <= plan["budget_seconds"]:
        raise RunError(f"{run.name} measured {plan['budget_seconds'] / 60:g} minutes; give a longer "
                       "--budget-minutes to extend it")
    # each step leaves the run resumable: a crash between them ends in the old result or the new plan
    run.write_json(f"reproduce-{plan['budget_seconds']:.0f}s.json", result)
    (run.path / RESULT).unlink()
    run.write_json(PLAN, _measuring(budget_seconds, plan["per_difficulty"], plan["up_to"], plan["seed"]))


def run_task(run, trainer, plan, on_log=None, should_stop=lambda: False):
    """The protocol from wherever the run's plan and checkpoint left it; raises Interrupted when
    should_stop() says so (after saving a checkpoint to go on from).

    Every seed trains until it reaches the target or the budget (training time, over every session)
    ends; a seed that reaches it retires at once (it costs nothing further), so the share solved /
    tried is measured under one budget. Then the first seed that solved is polished alone for the
    task's polish steps and evaluated."""
    import torch
    cfg = trainer.cfg

    def log(recs):
        run.append_metrics(recs)
        if on_log:
            on_log(recs)

    def stop_here():
        save_progress(run, trainer, "interrupted")
        records.end_session(run)
        raise Interrupted(run.name)

    def go(stop):
        checkpoint = lambda tr: save_progress(run, tr, "running")
        if trainer.run(on_log=log, on_checkpoint=checkpoint, should_stop=stop) == "interrupted" \
                and should_stop():
            stop_here()

    if plan["phase"] == "measure":
        trainer.polish = 0                          # measuring the share: retire on reaching the target
        go(lambda: should_stop() or trainer.elapsed >= plan["budget_seconds"])
        measured = [r for r in trainer.all_seeds() if counts_as_tried(r)]
        solved = _solved(measured)
        plan = {**plan, "phase": "polish", "measured": measured, "measure_seconds": trainer.elapsed,
                "cpu_minutes": trainer.elapsed * torch.get_num_threads() / 60, "polish": 0,
                "polish_started": trainer.elapsed}
        if solved and cfg.train.polish_steps:
            # sharper distributions carry the fuzzy machine further beyond the training lengths
            trainer.retire(list(range(trainer.S)))
            trainer.revive(solved[0]["seed"])
            plan["polish"] = trainer.step - solved[0]["solved_step"] + cfg.train.polish_steps
            cfg.train.steps = max(cfg.train.steps, trainer.step + cfg.train.polish_steps)
        save_progress(run, trainer, "running")        # the checkpoint first: a plan never runs ahead of it
        run.write_json(PLAN, plan)
    measured = plan["measured"]
    solved = _solved(measured)
    if plan["polish"]:
        trainer.polish = plan["polish"]
        go(should_stop)
    if should_stop():                                # (before the tests at every difficulty)
        stop_here()
    polish_s = trainer.elapsed - plan["polish_started"]
    result = "solved" if solved else "budget"
    save_progress(run, trainer, result)
    records.end_session(run)
    t_eval = time.perf_counter()
    seeds = [r["seed"] for r in trainer.all_seeds()]
    pick = seeds.index(solved[0]["seed"]) if solved else None
    _, model, idx = load_model(run, pick)
    best = trainer.all_seeds()[idx]
    tk = task(cfg.task)
    M = tk.min_M(plan["up_to"])
    rows = generalization(model, cfg, M, plan["per_difficulty"], np.random.default_rng(plan["seed"]),
                          range(tk.min_difficulty, min(plan["up_to"], tk.max_difficulty(M)) + 1))
    low, high = wilson(len(solved), len(measured))
    cpu_minutes = plan["cpu_minutes"]
    return {
        "task": cfg.task, "run": run.name, "seed": best["seed"], "seed_index": idx,
        "M_train": cfg.M, "difficulty": cfg.difficulty, "budget_seconds": plan["budget_seconds"],
        "result": result, "seeds_tried": len(measured), "seeds_solved": len(solved),
        "share": len(solved) / len(measured), "share_low": low, "share_high": high,
        "solved_lineages": len({_origin(r, measured) for r in solved}),
        "solved": [{"seed": r["seed"], "step": r["solved_step"], "seconds": r["solved_seconds"]} for r in solved],
        "first_solved_seconds": solved[0]["solved_seconds"] if solved else None,
        "measure_seconds": plan["measure_seconds"], "cpu_minutes": cpu_minutes,
        "solved_per_cpu_minute": len(solved) / cpu_minutes if cpu_minutes else None,
        "polish_seconds": polish_s, "population": cfg.train.population.mode,
        "train_error": best["best_error"], "steps": trainer.step,
        "solved_step": best["solved_step"], "train_seconds": trainer.elapsed,
        "M_generalize": M, "per_difficulty": plan["per_difficulty"],
        "generalization_max_error": max(r["error"] for r in rows),
        "generalization_perfect_up_to": _perfect_up_to(rows, "error"),
        "discrete_max_error": max(r["discrete_error"] for r in rows),
        "discrete_perfect_up_to": _perfect_up_to(rows, "discrete_error"),
        "discrete_agrees": min(r["discrete_agrees"] for r in rows),
        "rows": rows, "paper": dict(zip(("train", "generalization", "discretization"), PAPER[cfg.task])),
        "stones": stone_counts(cfg.train.stones.names, cfg.task, measured),
        "circuit": native.backend(),
        "seconds": trainer.elapsed + time.perf_counter() - t_eval,
    }


def stone_counts(names, task_name, measured):
    """With stepping stones, per stone (in order) how many of the measured seeds left it exact and how
    many moved on without (`train.stones.steps` spent), and how many reached the task itself; None
    without stones."""
    if not names:
        return None
    out = {name: {"exact": 0, "advanced": 0} for name in names}
    for r in measured:
        for name, _, _, how in r.get("stones", []):
            out[name][how] += 1
    return {**out, task_name: {"reached": sum(1 for r in measured if r.get("stage") == task_name)}}


def _solved(measured):
    """The seed records that reached the target, the first to get there first."""
    return sorted((r for r in measured if r["solved_step"] is not None), key=lambda r: r["solved_seconds"])


def _origin(row, rows):
    """The seed a solved seed's weights descend from, following exploit/explore copies back."""
    by_seed, seen = {r["seed"]: r for r in rows}, set()
    while row["lineage"] and row["seed"] not in seen:
        seen.add(row["seed"])
        row = by_seed.get(row["lineage"][-1][1], {"seed": row["lineage"][-1][1], "lineage": []})
    return row["seed"]


def _perfect_up_to(rows, key):
    """The largest difficulty d such that every difficulty up to d has 0 error (0 if none)."""
    best = 0
    for r in rows:
        if r[key] != 0:
            break
        best = r["difficulty"]
    return best
