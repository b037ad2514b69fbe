"""Stepping stones: short tasks that teach a hard task's circuit a few steps at a time (stop 35).

A phase-free circuit (R 1, the register never written, so the controller sees the same input at every
step) makes the same choices at every step, so one step of its loop from any state the loop passes
through is a task of its own: T = 1, scored on the cells that step changes. A seed that is exact on it
has wired that step; a few steps (T = 2, 3, 4) from such states rule out the shortcuts one step leaves
open; and a stone whose comparison reads shallower inputs (the pointers themselves instead of the
values they point to) comes first, as curricula over depth. `train.stones` lists a task's stones in
order; the Trainer moves each seed on when it is exact on its stone (docs/RESULTS.md, "ListSearch one
step at a time" and "Stepping stones in nramctl").

Every stone draws the task's own memory layout at the task's difficulties, and is named TASK:STONE
(`tasks.task("listsearch:step2")` finds it, so data and evaluation take it as any task):

ListSearch (LISTSEARCH_SEQUENCE's walk: where value(q) = v the walk stays, else cell 0 := next(q); cell
2 := q; cells 0 and 2 scored, as the chain that reproduced ListSearch scored them):
    step-pair, step-hop, step-inc, step   one step from a node q, the test x = v on x = q, next(q), q + 1,
                                          or value(q) (the walk's own test)
    step2, step3, step4                   that many steps, v within reach half the time
Merge (circuits.MERGE_FIXED's merge; cells 0-2 and the cells the steps write scored):
    merge1p                               one step comparing the two pointers themselves
    merge1pb                              one step comparing A's head with B's pointer itself
    merge1o                               one step, only the written cell and cell 2 scored (the minimum of
                                          the two heads written, without the choice of pointer to move)
    merge1m                               one step, only cells 0 and 1 scored (which pointer moves)
    merge1a, merge1b (to merge4a, 4b)     K steps with B or A empty: a copy of one run
    merge1ab (to merge4ab)                the same, B or A empty half the time each
    merge1, merge2, merge3, merge4        K steps from a state the merge passes through
"""
from dataclasses import dataclass

from . import tasks as T

# numpy is imported inside the generators, as in tasks.py: `nramctl tasks` validates configs that name
# stones without importing it


@dataclass(frozen=True)
class Stone:
    name: str               # its own name, e.g. step2
    task: T.Task            # generator and memory needs, named TASK:STONE
    T: str                  # its timestep rule


# ---- ListSearch ------------------------------------------------------------------------------------

def _layout(M, rng, k, length):
    """ListSearch's memory, as `tasks.listsearch` lays it out, before v and the target are set."""
    mem, target, mask = T._blank(k, M)
    nodes = T._linked_list(length, M, rng, mem)
    T._trash(M, rng, mem, nodes)
    return mem, target, mask, nodes


def other(x, M, rng):
    """A value in 1..M-1 other than x, per row."""
    return (x + rng.integers(1, M - 1, size=len(x)) - 1) % (M - 1) + 1


def against(mem, target, mask, x, rng, M):
    """v (cell 1) := x half the time, another value otherwise; cell 2 := [x = v]."""
    import numpy as np
    mem[:, 1] = np.where(rng.random(len(x)) < 0.5, x, other(x, M, rng))
    target[:, 2], mask[:, 2] = (mem[:, 1] == x).astype(mem.dtype), True
    return mem, target, mask


def mid_walk(n, M, rng, k):
    """ListSearch's memory with the walk under way: cell 0 at a random node of the list, cell 2 at the
    node before it (0 at the head). Returns memory, target, mask, the nodes and each row's node index."""
    import numpy as np
    mem, target, mask, nodes = _layout(M, rng, k, n)
    r, j = T._rows(k)[:, 0], rng.integers(0, n, size=k)
    mem[:, 0], mem[:, 2] = nodes[r, j], np.where(j > 0, nodes[r, np.maximum(j - 1, 0)], 0)
    return mem, target, mask, nodes, j


def score(target, mask, after, how):
    """The target is the memory `after` the steps; scored are cells 0-2 ("head"), 0 and 2 ("walk") or
    every cell ("all")."""
    target[:], mask[:] = after, how == "all"
    mask[:, [0, 2] if how == "walk" else [0, 1, 2]] = True


def walk_step(which, scored="walk"):
    """One step of LISTSEARCH_SEQUENCE's walk from a state the walk passes through: cell 0 at a random
    node q of the list, cell 2 at the node before it (0 at the head). Where x = v the walk stays (cell
    0 := q), else it moves on (cell 0 := next(q)); either way cell 2 := q. x is q itself (`pair`),
    next(q) (`hop`), q + 1 (`inc`) or value(q) (`step`, the walk's own test), equal to v half the time;
    `advance` never equal. `scored`: the cells scored (see `score`)."""
    def fn(n, M, rng, k):
        import numpy as np
        mem, target, mask, _, _ = mid_walk(n, M, rng, k)
        r, q = T._rows(k)[:, 0], mem[:, 0].copy()
        x = {"pair": q, "inc": q + 1, "hop": mem[r, q], "step": mem[r, q + 1], "advance": mem[r, q + 1]}[which]
        mem, target, mask = against(mem, target, mask, x, rng, M)
        if which == "advance":
            mem[:, 1] = other(x, M, rng)
        score(target, mask, mem, scored)    # every other cell stays as it was
        target[:, 2], target[:, 0] = q, np.where(mem[:, 1] == x, q, mem[r, q])
        return mem, target, mask
    return fn


def walk_steps(count, scored="walk"):
    """`count` steps of LISTSEARCH_SEQUENCE's walk (T = count) from a node q of the list (cell 2 the node
    before it), v the value of q or of one of the next count - 1 nodes half the time, else another value;
    the target is what the circuit's steps leave in the scored cells, simulated here step by step as the
    circuit does them: where value(p) = v, cell 2 := next(p) and then cell 2 := p, else cell 0 := next(p)
    and cell 2 := p, with p = cell 0."""
    def fn(n, M, rng, k):
        import numpy as np
        mem, target, mask, nodes, j = mid_walk(n, M, rng, k)
        r = T._rows(k)[:, 0]
        ahead = nodes[r, np.minimum(j + rng.integers(0, count, size=k), n - 1)]
        x = mem[r, ahead + 1]
        mem, target, mask = against(mem, target, mask, x, rng, M)
        out = mem.copy()
        for _ in range(count):
            p = out[:, 0].copy()
            hit = out[r, (p + 1) % M] == out[:, 1]
            nxt = out[r, p]
            out[r, np.where(hit, 2, 0)] = nxt
            out[:, 2] = p
        score(target, mask, out, scored)
        return mem, target, mask
    return fn


# ---- Merge -----------------------------------------------------------------------------------------

def merge_step(mem, shallow=""):
    """One step of circuits.MERGE_FIXED on [k, M] memories, in place: m = min of the two heads written at
    the output pointer, then A's pointer moves where its head is <= B's, else B's, and the output's moves;
    nothing moves once both heads are the guardian G = M - 1. `shallow` "ab", "a" or "b": the step
    compares those sides' pointers themselves instead of the heads they point to (one READ less deep).
    Returns the addresses written (the output pointers, [k])."""
    import numpy as np
    k, M = mem.shape
    r = np.arange(k)
    pa, pb, po = mem[:, 0].copy(), mem[:, 1].copy(), mem[:, 2].copy()
    x = pa if "a" in shallow else mem[r, pa]
    y = pb if "b" in shallow else mem[r, pb]
    m, adv = np.minimum(x, y), (np.minimum(x, y) < M - 1).astype(mem.dtype)
    a_moves = (x <= y) * adv
    mem[r, po] = m
    mem[:, 0], mem[:, 1], mem[:, 2] = (pa + a_moves) % M, (pb + adv - a_moves) % M, (po + adv) % M
    return po


def merge_steps(count, only=None):
    """`count` steps of MERGE_FIXED's merge (T = count) from a state it passes through: Merge's memory after
    a random number of its steps, fewer than n. The target is what the circuit's steps leave in cells 0-2
    and in the cells they write (since stop 36: not the rest of the output, which one step leaves as it
    was and which, scored, made a step's pointer moves some 5% of the loss). `only` "a" or "b": B or A
    empty (n1 = n or 0), the merge a copy of one run; "ab": either, half the time each."""
    def fn(n, M, rng, k):
        import numpy as np
        rows = []
        while sum(len(x[0]) for x in rows) < k:        # Merge's own examples, filtered to the wanted n1
            mem, target, mask = T.merge(n, M, rng, 4 * k * (n + 1) if only else k)
            n1 = mem[:, 1] - 4
            keep = {"a": n1 == n, "b": n1 == 0, "ab": (n1 == n) | (n1 == 0)}.get(only, np.ones(len(mem), bool))
            rows.append((mem[keep], mask[keep]))
        mem, mask = (np.concatenate([x[i] for x in rows])[:k] for i in (0, 1))
        done = rng.integers(0, n, size=k)
        for t in range(n):
            at = done > t
            part = mem[at]
            merge_step(part)
            mem[at] = part
        target, r = mem.copy(), np.arange(k)
        mask[:] = False
        for _ in range(count):
            mask[r, merge_step(target)] = True
        mask[:, :3] = True
        return mem, target, mask
    return fn


def merge_shallow(sides):
    """One step of MERGE_FIXED's merge comparing the pointers of `sides` ("ab", "b") themselves
    (`merge_step`) and the others' heads: Merge's memory with cells 0, 1 and 2 redrawn in 3..M-2; cells
    0-2 and the written cell scored."""
    def fn(n, M, rng, k):
        import numpy as np
        mem, _, mask = T.merge(n, M, rng, k)
        mem[:, :3] = rng.integers(3, M - 1, size=(k, 3))
        target = mem.copy()
        mask[:] = False
        mask[np.arange(k), merge_step(target, shallow=sides)] = True
        mask[:, :3] = True
        return mem, target, mask
    return fn


def merge_moves(n, M, rng, k):
    """merge1 with only cells 0 and 1 scored: which pointer moves, without the output written."""
    mem, target, mask = merge_steps(1)(n, M, rng, k)
    mask[:] = False
    mask[:, :2] = True
    return mem, target, mask


def merge_out(n, M, rng, k):
    """merge1 with only the written cell and cell 2 scored: the minimum of the two heads written, without
    the choice of the pointer that moves."""
    mem, target, mask = merge_steps(1)(n, M, rng, k)
    mask[:, :2] = False
    return mem, target, mask


# ---- the registry ----------------------------------------------------------------------------------

def _stones():
    ls, mg = T.TASKS["listsearch"], T.TASKS["merge"]
    out = {"listsearch": {}, "merge": {}}
    for which in ("pair", "hop", "inc", "step"):
        out["listsearch"]["step" if which == "step" else f"step-{which}"] = (walk_step(which), "1", ls)
    for c in (2, 3, 4):
        out["listsearch"][f"step{c}"] = (walk_steps(c), str(c), ls)
    out["merge"]["merge1p"] = (merge_shallow("ab"), "1", mg)
    out["merge"]["merge1pb"] = (merge_shallow("b"), "1", mg)
    out["merge"]["merge1o"] = (merge_out, "1", mg)
    out["merge"]["merge1m"] = (merge_moves, "1", mg)
    for c in (1, 2, 3, 4):
        for only in ("a", "b", "ab", None):
            out["merge"][f"merge{c}{only or ''}"] = (merge_steps(c, only), str(c), mg)
    return {task: {name: Stone(name, T.Task(f"{task}:{name}", fn, base.min_M, base.min_difficulty), rule)
                   for name, (fn, rule, base) in stones.items()} for task, stones in out.items()}


STONES = _stones()


def names(task_name):
    """The stones of a task, in the order this module defines them (none for most tasks)."""
    return list(STONES.get(task_name, {}))


def stone(task_name, name):
    """The Stone `name` of the task; TaskError naming the task's stones where it has no such one."""
    prefix, _, short = str(name).rpartition(":")
    found = STONES.get(task_name, {}).get(short) if prefix in ("", task_name) else None
    if found is None:
        known = ", ".join(names(task_name)) or "none"
        raise T.TaskError(f"{task_name} has no stepping stone {name!r} (its stones: {known})")
    return found
