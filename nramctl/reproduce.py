"""The paper's protocol for one task (SPEC section 5), as one function.

Train K seeds at the paper's train difficulty with the curriculum (one batched process) until a seed
reaches 0 error on fresh examples or the time budget ends; keep that seed; evaluate it at every
difficulty up to 50 at the memory size difficulty 50 needs (T scaled by the task's rule), fuzzy and
discretized; and set the figures beside the paper's Table 1 row.
"""
import time

import numpy as np

from .evaluate import generalization
from .experiment import load_model, new_run, save_progress
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
    """Returns a dict of results for one task; the trained run stays in `store`."""
    t0 = time.perf_counter()
    run, trainer = new_run(store, cfg)
    solved = lambda: any(s is not None for s in trainer.solved_step)
    over = lambda: time.perf_counter() - t0 > budget_s

    def log(records):
        run.append_metrics(records)
        if on_log:
            on_log(records)

    checkpoint = lambda tr: save_progress(run, tr, "running")
    tried = trainer.S
    trainer.run(on_log=log, on_checkpoint=checkpoint, should_stop=lambda: solved() or over())
    n_solved = sum(s is not None for s in trainer.solved_step)
    if solved() and cfg.train.polish_steps:
        # keep the first seed that reached 0 and polish it alone: sharper distributions carry the
        # fuzzy machine further beyond the training lengths
        trainer.keep_only(next(s for s, v in enumerate(trainer.solved_step) if v is not None))
        trainer.run(on_log=log, on_checkpoint=checkpoint, should_stop=over)
    result = "solved" if solved() else "budget"
    save_progress(run, trainer, result)
    train_s = time.perf_counter() - t0
    _, model, idx = load_model(run)
    tk = task(cfg.task)
    M = tk.min_M(up_to)
    rows = generalization(model, cfg, M, per_difficulty, np.random.default_rng(seed),
                          range(tk.min_difficulty, min(up_to, tk.max_difficulty(M)) + 1))
    return {
        "task": cfg.task, "run": run.name, "seed": trainer.seeds[idx], "seed_index": idx,
        "M_train": cfg.M, "difficulty": cfg.difficulty,
        "result": result, "seeds_tried": tried, "seeds_solved": n_solved,
        "train_error": trainer.best_error[idx], "steps": trainer.step,
        "solved_step": trainer.solved_step[idx], "train_seconds": train_s,
        "M_generalize": M, "per_difficulty": per_difficulty,
        "generalization_max_error": max(r["error"] for r in rows),
        "generalization_perfect_up_to": _perfect_up_to(rows, "error"),
        "discrete_max_error": max(r["discrete_error"] for r in rows),
        "discrete_perfect_up_to": _perfect_up_to(rows, "discrete_error"),
        "discrete_agrees": min(r["discrete_agrees"] for r in rows),
        "rows": rows, "paper": dict(zip(("train", "generalization", "discretization"), PAPER[cfg.task])),
        "seconds": time.perf_counter() - t0,
    }


def _perfect_up_to(rows, key):
    """The largest difficulty d such that every difficulty up to d has 0 error (0 if none)."""
    best = 0
    for r in rows:
        if r[key] != 0:
            break
        best = r["difficulty"]
    return best
