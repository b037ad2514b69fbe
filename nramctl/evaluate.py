"""Evaluation (SPEC section 3): error on the scored cells at the halting step, fuzzy and discretized.

error         = wrong scored cells / all scored cells
example_error = share of examples with any wrong scored cell
Results are per seed: a model with S seeds is evaluated on the same examples for every seed.
"""
import numpy as np
import torch

from .data import concat, make_batch
from .discrete import discrete_run
from .machine import fuzzy_run


def score(pred, batch, S):
    """pred [N, M] with N = S * E -> error of each seed [S]: wrong scored cells / scored cells."""
    M = pred.shape[1]
    wrong = ((pred != batch.target) & batch.mask).view(S, -1, M).sum((1, 2))
    return wrong.double() / batch.mask.view(S, -1, M).sum((1, 2)).clamp_min(1)


def predict(model, batch, discrete=False):
    """Memory argmax at the halting step for every row: [N, M]."""
    with torch.no_grad():
        if discrete:
            return discrete_run(model, batch.memory, batch.T)[0]
        return fuzzy_run(model, batch, need_loss=False).pred


def eval_batch(cfg, M, difficulties, rng, S):
    """The same examples for every seed: a Batch of S * len(difficulties) rows."""
    b = make_batch(cfg.task, M, difficulties, rng, cfg.T)
    return concat([b] * S)


CHUNK_BYTES = 256 * 2 ** 20       # one chunk's M x M memories: peak memory stays bounded at any n and M


def chunk_size(M, S=1, most=250):
    """Examples per chunk: a few M x M float32 memories per row (state, next state, one-hot input,
    the discretized run's) must fit in CHUNK_BYTES."""
    return max(1, min(most, CHUNK_BYTES // (4 * 4 * M * M * S)))


def by_output_cell(wrong, mask):
    """Wrong and scored counts by output cell: the k-th scored cell of each row (in memory order) is
    output cell k. wrong, mask: bool [S, E, M] -> two int arrays [S, M]."""
    rank = (mask.long().cumsum(2) - 1).clamp_min(0)           # k for the k-th scored cell of a row
    S, _, M = mask.shape
    scored = torch.zeros(S, M, dtype=torch.long).scatter_add_(1, rank.view(S, -1), mask.long().view(S, -1))
    bad = torch.zeros(S, M, dtype=torch.long).scatter_add_(1, rank.view(S, -1), (wrong & mask).long().view(S, -1))
    return bad.numpy(), scored.numpy()


def _tally(model, cfg, M, difficulties, rng, modes, chunk=None, cells=None):
    """Run each mode ("fuzzy", "discrete") on the same fresh examples, in chunks of examples; per seed
    [S] counts of wrong cells and wrong examples per mode, scored cells, and examples on which the
    modes agree. `cells`, a dict, also receives per mode the wrong and scored counts by output cell
    ([S, M] each, `by_output_cell`)."""
    S = model.S
    chunk = chunk or chunk_size(M, S)
    wrong = {m: 0 for m in modes}
    bad = {m: 0 for m in modes}
    scored = agree = 0
    for lo in range(0, len(difficulties), chunk):
        part = difficulties[lo:lo + chunk]
        b = eval_batch(cfg, M, part, rng, S)
        shape = (S, len(part), M)
        preds = {m: predict(model, b, discrete=m == "discrete") for m in modes}
        for m, pred in preds.items():
            w = ((pred != b.target) & b.mask).view(shape)
            wrong[m] = wrong[m] + w.sum((1, 2)).numpy()
            bad[m] = bad[m] + w.any(2).sum(1).numpy()
            if cells is not None:
                cw, cs = by_output_cell(w, b.mask.view(shape))
                old = cells.get(m, (0, 0))
                cells[m] = (old[0] + cw, old[1] + cs)
        scored = scored + b.mask.view(shape).sum((1, 2)).numpy()
        if len(preds) == 2:
            differ = ((preds["fuzzy"] != preds["discrete"]) & b.mask).view(shape).any(2)
            agree = agree + (~differ).sum(1).numpy()
    return wrong, bad, np.maximum(scored, 1), agree


def evaluate(model, cfg, M, difficulties, rng, discrete=False, cells=False):
    """Error of every seed on fresh examples with the given difficulties (an array): dict of [S]
    arrays error and example_error; with `cells`, also cell_wrong and cell_scored ([S, K]: wrong and
    scored counts of output cells 0..K-1, K the most cells any example scores)."""
    mode = "discrete" if discrete else "fuzzy"
    by_cell = {} if cells else None
    wrong, bad, scored, _ = _tally(model, cfg, M, difficulties, rng, [mode], cells=by_cell)
    out = {"error": wrong[mode] / scored, "example_error": bad[mode] / len(difficulties)}
    if cells:
        cw, cs = by_cell[mode]
        K = int((cs.sum(0) > 0).sum())
        out.update(cell_wrong=cw[:, :K], cell_scored=cs[:, :K])
    return out


def compare(model, cfg, M, difficulties, rng):
    """Fuzzy and discretized runs on the same examples. Returns dict of [S] arrays: error,
    discrete_error, example_error, discrete_example_error, discrete_agrees (share of examples whose
    discretized scored output equals the fuzzy one)."""
    wrong, bad, scored, agree = _tally(model, cfg, M, difficulties, rng, ["fuzzy", "discrete"])
    n = len(difficulties)
    return {"error": wrong["fuzzy"] / scored, "discrete_error": wrong["discrete"] / scored,
            "example_error": bad["fuzzy"] / n, "discrete_example_error": bad["discrete"] / n,
            "discrete_agrees": agree / n}


def generalization(model, cfg, M, per_difficulty, rng, difficulties):
    """A row per difficulty: difficulty, T, and compare()'s figures (first seed) at memory size M."""
    return [{"difficulty": int(d), "T": cfg.T_of(d),
             **{k: float(v[0]) for k, v in compare(model, cfg, M, np.full(per_difficulty, d), rng).items()}}
            for d in difficulties]


def difficulty_grid(lo, hi, limit=60):
    """Every difficulty from lo to hi when there are few; else 1-2-5 steps per decade, and hi."""
    if hi - lo + 1 <= limit:
        return list(range(lo, hi + 1))
    grid, scale = set(range(lo, min(hi, 10) + 1)), 10
    while scale <= hi:
        grid.update(x * scale for x in (1, 2, 5) if lo <= x * scale <= hi)
        scale *= 10
    return sorted(grid | {hi})


def executor_generalization(model, cfg, M, per_difficulty, rng, difficulties, progress=None):
    """Rows of {difficulty, T, discrete_error, discrete_example_error, seconds, steps_per_s} from the
    constant-time executor; memories are sparse dicts, so M can be far beyond what M x M allows."""
    import time

    from .executor import Program, execute
    from .tasks import task
    program, t = Program(model), task(cfg.task)
    rows = []
    for n in difficulties:
        wrong = scored = bad = steps = 0
        t0 = time.perf_counter()
        for _ in range(per_difficulty):
            mem, target, mask = t.sample(n, M, rng)
            cells = np.flatnonzero(mem)
            sparse = dict(zip(cells.tolist(), mem[cells].tolist()))
            steps += execute(program, sparse, M, cfg.T_of(n)) + 1
            out = np.array([sparse.get(c, 0) for c in np.flatnonzero(mask).tolist()])
            w = int((out != target[mask]).sum())
            wrong, scored, bad = wrong + w, scored + int(mask.sum()), bad + (w > 0)
        dt = time.perf_counter() - t0
        rows.append({"difficulty": n, "T": cfg.T_of(n), "error": None,
                     "discrete_error": wrong / max(scored, 1), "discrete_agrees": None,
                     "discrete_example_error": bad / per_difficulty, "seconds": dt,
                     "steps_per_s": steps / dt if dt else None})
        if progress:
            progress(n, difficulties[-1])
    return rows
