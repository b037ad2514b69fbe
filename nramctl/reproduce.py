"""The paper's protocol for one task (SPEC section 5), as one function.

Train K seeds at the paper's train difficulty with the curriculum (one batched process), each until it
reaches 0 error on fresh examples or the time budget ends; report the share of seeds that solved with
its 95% Wilson interval; polish the first seed that solved and evaluate it at every difficulty up to 50
at the memory size difficulty 50 needs (T scaled by the task's rule), fuzzy and discretized; and set
the figures beside the paper's Table 1 row.
"""
import time

import numpy as np

from . import native, records
from .evaluate import generalization
from .experiment import load_model, new_run, save_progress
from .population import wilson
from .tasks import task

PAPER = {  # Table 1: train error, generalization, discretization
    "access": ("0", "perfect", "perfect"), "increment": ("0", "perfect", "perfect"),
    "copy": ("0", "perfect", "perfect"), "reverse": ("0", "perfect", "perfect"),
    "swap": ("0", "perfect", "perfect"), "permutation": ("0", "almost perfect", "perfect"),
    "listk": ("0", "strong", "hurts"), "listsearch": ("0", "weak", "hurts"),
    "merge": ("1%", "weak", "hurts"), "walkbst": ("0.3%", "strong", "hurts"),
}
EASY = ["access", "increment", "copy", "reverse", "swap"]


def reproduce_task(store, cfg, budget_s, per_difficulty=20, up_to=50, on_log=None, seed=12345):
    """Returns a dict of results for one task; the trained run stays in `store`.

    Every seed trains until it reaches the target or the budget ends; a seed that reaches it retires
    at once (it costs nothing further), so the share solved / tried is measured under one budget.
    Then the first seed that solved is polished alone for the task's polish steps and evaluated."""
    import torch
    cfg.train.until = "all"
    t0 = time.perf_counter()
    run, trainer = new_run(store, cfg)
    over = lambda: time.perf_counter() - t0 > budget_s

    def log(recs):
        run.append_metrics(recs)
        if on_log:
            on_log(recs)

    checkpoint = lambda tr: save_progress(run, tr, "running")
    trainer.polish = 0                                  # measuring the share: retire on reaching the target
    trainer.run(on_log=log, on_checkpoint=checkpoint, should_stop=over)
    measured = trainer.all_seeds()
    measure_s, cpu_minutes = time.perf_counter() - t0, trainer.elapsed * torch.get_num_threads() / 60
    solved = sorted((r for r in measured if r["solved_step"] is not None), key=lambda r: r["solved_seconds"])
    polish_s = 0.0
    if solved and cfg.train.polish_steps:
        # sharper distributions carry the fuzzy machine further beyond the training lengths
        t1 = time.perf_counter()
        trainer.retire(list(range(trainer.S)))
        trainer.revive(solved[0]["seed"])
        trainer.polish = trainer.step - solved[0]["solved_step"] + cfg.train.polish_steps
        trainer.cfg.train.steps = max(trainer.cfg.train.steps, trainer.step + cfg.train.polish_steps)
        trainer.run(on_log=log, on_checkpoint=checkpoint)
        polish_s = time.perf_counter() - t1
    result = "solved" if solved else "budget"
    save_progress(run, trainer, result)
    records.end_session(run)
    seeds = [r["seed"] for r in trainer.all_seeds()]
    pick = seeds.index(solved[0]["seed"]) if solved else None
    _, model, idx = load_model(run, pick)
    best = trainer.all_seeds()[idx]
    tk = task(cfg.task)
    M = tk.min_M(up_to)
    rows = generalization(model, cfg, M, per_difficulty, np.random.default_rng(seed),
                          range(tk.min_difficulty, min(up_to, tk.max_difficulty(M)) + 1))
    low, high = wilson(len(solved), len(measured))
    return {
        "task": cfg.task, "run": run.name, "seed": best["seed"], "seed_index": idx,
        "M_train": cfg.M, "difficulty": cfg.difficulty, "budget_seconds": budget_s,
        "result": result, "seeds_tried": len(measured), "seeds_solved": len(solved),
        "share": len(solved) / len(measured), "share_low": low, "share_high": high,
        "solved_lineages": len({_origin(r, measured) for r in solved}),
        "solved": [{"seed": r["seed"], "step": r["solved_step"], "seconds": r["solved_seconds"]} for r in solved],
        "first_solved_seconds": solved[0]["solved_seconds"] if solved else None,
        "measure_seconds": measure_s, "cpu_minutes": cpu_minutes,
        "solved_per_cpu_minute": len(solved) / cpu_minutes if cpu_minutes else None,
        "polish_seconds": polish_s, "population": cfg.train.population.mode,
        "train_error": best["best_error"], "steps": trainer.step,
        "solved_step": best["solved_step"], "train_seconds": time.perf_counter() - t0,
        "M_generalize": M, "per_difficulty": per_difficulty,
        "generalization_max_error": max(r["error"] for r in rows),
        "generalization_perfect_up_to": _perfect_up_to(rows, "error"),
        "discrete_max_error": max(r["discrete_error"] for r in rows),
        "discrete_perfect_up_to": _perfect_up_to(rows, "discrete_error"),
        "discrete_agrees": min(r["discrete_agrees"] for r in rows),
        "rows": rows, "paper": dict(zip(("train", "generalization", "discretization"), PAPER[cfg.task])),
        "circuit": native.backend(),
        "seconds": time.perf_counter() - t0,
    }


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
