"""ListSearch through stepping stones (stop 34, docs/RESULTS.md "ListSearch by halting"): S fresh MLPs on
the ten gates of `circuits.LISTSEARCH_HALT` train on each stepping-stone task in turn, every seed carrying
its own weights from one stage to the next, and then on ListSearch, mixed toward a fresh initialization
first (`basin.perturb`). An experiment script, not part of the package: it registers its stone tasks at
run time and uses nramctl's internals.

    OMP_NUM_THREADS=1 python docs/experiments/stones.py --seeds 16 --stages pair,hop,compare,walk \
        --stage-steps 3000 --mix 0.3 --listsearch-steps 6000 --seed 3400 --R 2

The stones, each in ListSearch's layout | head | v | out | nodes (next, value) and trash |:
    pair     cell 2 := [mem[0] = mem[1]] (the two cells redrawn, equal half the time), T = 1
    hop      cell 2 := [mem[head] = v] (the head's next pointer against v, equal half the time), T = 1
    compare  cell 2 := [value(head) = v] (equal half the time), T = 1
    walk     a list two nodes longer than n at M 21: cell 2 := its n-th node, cell 0 := node n + 1, T = n
The three comparisons train on every length at once (no curriculum); the walk and ListSearch with it.
Stones joined by + (`--stages pair,hop,walk+compare`) train together: their steps alternate on one set of
weights (each keeps its own Adam state), and a seed has solved the stage when it is exact on all of them.
A part may be ListSearch itself (`walk+compare+listsearch`). (An MLP or LSTM cannot be exact on walk and
compare at once: at step 1 every register is 0, so it makes the same choices in both, and the walk at n = 1
wants cell 2 := head where compare wants cell 2 := [value(head) = v]; stop 35.)

One-step stones (stop 35, docs/RESULTS.md "ListSearch one step at a time"): with R 1 and r0 never written,
an MLP makes the same choices at every step, so a T = 1 task whose target is one step of a phase-free walk
(LISTSEARCH_SEQUENCE's, from a state the walk passes through) is that walk's every step:
    step-pair, step-inc, step-hop, step   cell 0 stays where x = v, else moves to next(q); cell 2 := q;
                                          x = q, q + 1, next(q), value(q) (the walk's own test)
    stepv                                 step, with cell 1 (v) scored as well
    step2, step3, step4                   that many steps of the walk (T = 2, 3, 4), v within reach half the time
`--circuit sequence|const|restore` picks the gate list, `--scored walk|head|all` the cells a step stone
scores, `--discrete` makes a stone solved only where it is also exact discretized.

Merge (`--task merge --circuit merge`, the twenty gates of circuits.MERGE_FIXED, R 1, also phase-free):
    merge1, merge2, merge3, merge4        that many steps of its merge from Merge's memory after a random
                                          number of steps; cells 0-2 and the output scored
    merge1a, merge1b, ... (any count)     the same with B empty or A empty: the merge a copy of one run
The report's "listsearch" keys and lines then stand for Merge.

The chain that reproduced ListSearch (seed index 8 left step4 exact on ListSearch; `pretrained/listsearch`):

    OMP_NUM_THREADS=1 python docs/experiments/stones.py --circuit const --scored walk --seeds 16 \
        --stages step-pair,step-hop,step-inc,step,step2,step3,step4 --stage-steps 3000 --mix 0 \
        --listsearch-steps 4000 --seed 5200 --R 1 --set model.stop_bias=-10 --set model.keep_bias=10 --save P.pt
    python docs/experiments/stones.py --export P.pt 8 ls-stones      # that seed as the nramctl run runs/ls-stones"""
import argparse
import dataclasses
import json
import time

import numpy as np

from nramctl import tasks as T
from nramctl.basin import _errors, perturb
from nramctl.config import task_config
from nramctl.evaluate import compare as fuzzy_and_discrete, evaluate
from nramctl.train import Trainer

GATES = {"halt": "model.gates=[READ,INC,READ,READ,INC,READ,EQ,INC,WRITE,WRITE]",
         "sequence": "model.gates=[READ,INC,READ,READ,INC,READ,EQ,ADD,WRITE,INC,WRITE]",
         "const": "model.gates=[ONE,TWO,READ,INC,READ,READ,READ,EQ,ADD,WRITE,WRITE]",
         "restore": "model.gates=[ONE,TWO,READ,INC,READ,READ,READ,EQ,WRITE,WRITE,WRITE]",
         "merge": "model.gates=[INC,INC,DEC,READ,READ,READ,READ,READ,MIN,LE,LT,WRITE,MIN,ADD,WRITE,ADD,SUB,WRITE,"
                  "ADD,WRITE]"}


def _layout(M, rng, k, length):
    """ListSearch's memory, as `tasks.listsearch` lays it out, before v and the target are set."""
    mem, target, mask = T._blank(k, M)
    nodes = T._linked_list(length, M, rng, mem)
    T._trash(M, rng, mem, nodes)
    return mem, target, mask, nodes


def _other(x, M, rng):
    """A value in 1..M-1 other than x, per row."""
    return (x + rng.integers(1, M - 1, size=len(x)) - 1) % (M - 1) + 1


def _against(mem, target, mask, x, rng, M):
    """v (cell 1) := x half the time, another value otherwise; cell 2 := [x = v]."""
    mem[:, 1] = np.where(rng.random(len(x)) < 0.5, x, _other(x, M, rng))
    target[:, 2], mask[:, 2] = (mem[:, 1] == x).astype(mem.dtype), True
    return mem, target, mask


def hop(n, M, rng, k):
    mem, target, mask, nodes = _layout(M, rng, k, n)
    return _against(mem, target, mask, mem[T._rows(k)[:, 0], nodes[:, 0]], rng, M)


def pair(n, M, rng, k):
    mem, target, mask, _ = _layout(M, rng, k, n)
    mem[:, 0] = rng.integers(1, M, size=k)
    return _against(mem, target, mask, mem[:, 0].copy(), rng, M)


def compare(n, M, rng, k):
    mem, target, mask, nodes = _layout(M, rng, k, n)
    return _against(mem, target, mask, mem[T._rows(k)[:, 0], nodes[:, 0] + 1], rng, M)


def walk(n, M, rng, k):
    mem, target, mask, nodes = _layout(M, rng, k, min(n + 2, (M - 3) // 2))
    r = T._rows(k)[:, 0]
    mem[:, 1] = mem[r, nodes[:, n - 1] + 1]
    target[:, 2], mask[:, 2] = nodes[:, n - 1], True
    target[:, 0], mask[:, 0] = nodes[:, n], True
    return mem, target, mask


def _mid_walk(n, M, rng, k):
    """ListSearch's memory with the walk under way: cell 0 at a random node of the list, cell 2 at the
    node before it (0 at the head). Returns memory, target, mask, the nodes and each row's node index."""
    mem, target, mask, nodes = _layout(M, rng, k, n)
    r, j = T._rows(k)[:, 0], rng.integers(0, n, size=k)
    mem[:, 0], mem[:, 2] = nodes[r, j], np.where(j > 0, nodes[r, np.maximum(j - 1, 0)], 0)
    return mem, target, mask, nodes, j


def _score(target, mask, after, how):
    """The target is the memory `after` the steps; scored are cells 0-2 ("head"), 0 and 2 ("walk") or
    every cell ("all")."""
    target[:], mask[:] = after, how == "all"
    mask[:, [0, 2] if how == "walk" else [0, 1, 2]] = True


def _step(which, scored=None):
    """One step of LISTSEARCH_SEQUENCE's walk from a state the walk passes through: cell 0 at a random
    node q of the list, cell 2 at the node before it (0 at the head). Where x = v the walk stays (cell 0
    := q), else it moves on (cell 0 := next(q)); either way cell 2 := q. x is q itself (`pair`), next(q)
    (`hop`), q + 1 (`inc`) or value(q) (`step`, the walk's own test), equal to v half the time; `advance` never equal.
    Cells 0, 1 and 2 are scored (`--scored all`: every cell; `walk`: cells 0 and 2 alone), so that a step
    which gets cells 0 and 2 right by overwriting v fails."""
    def fn(n, M, rng, k):
        mem, target, mask, _, _ = _mid_walk(n, M, rng, k)
        r, q = T._rows(k)[:, 0], mem[:, 0].copy()
        x = {"pair": q, "inc": q + 1, "hop": mem[r, q], "step": mem[r, q + 1], "advance": mem[r, q + 1]}[which]
        mem, target, mask = _against(mem, target, mask, x, rng, M)
        if which == "advance":
            mem[:, 1] = _other(x, M, rng)
        _score(target, mask, mem, scored or SCORED)    # every other cell stays as it was
        target[:, 2], target[:, 0] = q, np.where(mem[:, 1] == x, q, mem[r, q])
        return mem, target, mask
    return fn


def _steps(count):
    """`count` steps of LISTSEARCH_SEQUENCE's walk (T = count) from a node q of the list (cell 2 the node
    before it), v the value of q or of one of the next count - 1 nodes half the time, else another value;
    the target is what the circuit's steps leave in the scored cells (as the one-step stones), simulated
    here step by step as the circuit does them: where value(p) = v, cell 2 := next(p) and then cell 2 := p,
    else cell 0 := next(p) and cell 2 := p, with p = cell 0."""
    def fn(n, M, rng, k):
        mem, target, mask, nodes, j = _mid_walk(n, M, rng, k)
        r = T._rows(k)[:, 0]
        ahead = nodes[r, np.minimum(j + rng.integers(0, count, size=k), n - 1)]
        x = mem[r, ahead + 1]
        mem, target, mask = _against(mem, target, mask, x, rng, M)
        out = mem.copy()
        for _ in range(count):
            p = out[:, 0].copy()
            hit = out[r, (p + 1) % M] == out[:, 1]
            nxt = out[r, p]
            out[r, np.where(hit, 2, 0)] = nxt
            out[:, 2] = p
        _score(target, mask, out, SCORED)
        return mem, target, mask
    return fn


def _merge_step(mem):
    """One step of circuits.MERGE_FIXED on [k, M] memories, in place: m = min of the two heads written at
    the output pointer, then A's pointer moves where its head is <= B's, else B's, and the output's moves;
    nothing moves once both heads are the guardian G = M - 1."""
    k, M = mem.shape
    r = np.arange(k)
    pa, pb, po = mem[:, 0].copy(), mem[:, 1].copy(), mem[:, 2].copy()
    x, y = mem[r, pa], mem[r, pb]
    m, adv = np.minimum(x, y), (np.minimum(x, y) < M - 1).astype(mem.dtype)
    a_moves = (x <= y) * adv
    mem[r, po] = m
    mem[:, 0], mem[:, 1], mem[:, 2] = (pa + a_moves) % M, (pb + adv - a_moves) % M, (po + adv) % M


def _merge_steps(count, only=None):
    """`count` steps of MERGE_FIXED's merge (T = count) from a state it passes through: Merge's memory after
    a random number of its steps, fewer than n. The target is what the circuit's steps leave in cells 0-2
    and in the output. `only` "a" or "b": B or A empty (n1 = n or 0), the merge a copy of one run."""
    def fn(n, M, rng, k):
        rows = []
        while sum(len(x[0]) for x in rows) < k:        # Merge's own examples, filtered to the wanted n1
            mem, target, mask = T.merge(n, M, rng, 4 * k * (n + 1) if only else k)
            n1 = mem[:, 1] - 4
            keep = n1 == n if only == "a" else n1 == 0 if only == "b" else np.ones(len(mem), bool)
            rows.append((mem[keep], mask[keep]))
        mem, mask = (np.concatenate([x[i] for x in rows])[:k] for i in (0, 1))
        done = rng.integers(0, n, size=k)
        for t in range(n):
            at = done > t
            part = mem[at]
            _merge_step(part)
            mem[at] = part
        target = mem.copy()
        for _ in range(count):
            _merge_step(target)
        mask[:, :3] = True
        return mem, target, mask
    return fn


SCORED = "head"         # the step stones score cells 0-2 ("head") or every cell ("all")


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def _load(trainer, weights):
    """Every seed's parameters from `weights` (named as the model's, [S, ...] each)."""
    trainer.model.load_state_dict(weights, strict=False)


ONE_STEP = ["T=1", "train.curriculum.enabled=false"]
NONE = (None, [], None)                         # a part that is a task itself (`walk+compare+listsearch`)
STONES = {"pair": (pair, ONE_STEP, lambda n: 1), "hop": (hop, ONE_STEP, lambda n: 1),
          "compare": (compare, ONE_STEP, lambda n: 1), "walk": (walk, ["T=n", "M=21"], lambda n: n),
          **{f"step-{w}" if w in ("pair", "inc", "hop") else w: (_step(w), ONE_STEP, lambda n: 1)
             for w in ("pair", "inc", "hop", "step", "advance")},
          "stepv": (_step("step", "head"), ONE_STEP, lambda n: 1),     # `step` with cells 0-2 scored
          **{f"step{c}": (_steps(c), [f"T={c}", "train.curriculum.enabled=false"], lambda n, c=c: c) for c in (2, 3, 4)},
          **{f"merge{c}{only or ''}": (_merge_steps(c, only), [f"T={c}", "train.curriculum.enabled=false"],
                                       lambda n, c=c: 2 * n + 5) for c in (1, 2, 3, 4) for only in (None, "a", "b")}}


def _settings(a):
    """The settings every stage and ListSearch train with, from the script's arguments."""
    return ["model.controller=mlp", GATES[a.circuit], "model.repeat=1", f"model.R={a.R}", "train.batch=16",
            "train.curriculum.threshold=0.01", f"train.seeds={a.seeds}", f"train.seed={a.seed}", *a.set]


def export(path, index, name):
    """One seed of a `--save` file, with the weights its last stone left, as an nramctl ListSearch run
    (`runs/NAME`, config and checkpoints, checked on fresh examples): a start for `nramctl train
    listsearch --set train.init=NAME` and `nramctl eval`."""
    import pickle

    import torch

    from nramctl.experiment import new_run, save_progress
    from nramctl.runs import RunError, RunStore
    try:                                # everything checked before the run is made: no half-made run
        saved = torch.load(path, weights_only=True)
        a = argparse.Namespace(**saved["args"])
        weights = list(saved["stones"].values())[-1]
    except (OSError, RuntimeError, KeyError, TypeError, IndexError, EOFError, pickle.UnpicklingError) as e:
        raise SystemExit(f"error: --export {path}: not a stones.py --save file ({type(e).__name__})")
    if not 0 <= index < a.seeds:
        raise SystemExit(f"error: --export: {path} has seed indices 0..{a.seeds - 1}, not {index}")
    store = RunStore()
    try:
        store.check_new_name(name)
    except RunError as e:
        raise SystemExit(f"error: --export: {e}")
    seed = {k: v[index:index + 1] for k, v in weights.items()}
    cfg = task_config(getattr(a, "task", "listsearch"), None,
                      _settings(a) + ["train.seeds=1", f"train.seed={a.seed + index}"])
    run, trainer = new_run(store, cfg, name)
    trainer.model.load_state_dict(seed, strict=False)
    errors = trainer.check()
    save_progress(run, trainer, "solved" if trainer.solved_step[0] is not None else "budget")
    print(run.name, "error", float(errors[0]), "solved" if trainer.solved_step[0] is not None else "not solved")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--stages", default="pair,hop,compare,walk")
    ap.add_argument("--stage-steps", type=int, default=3000)
    ap.add_argument("--mix", type=float, default=0.3)
    ap.add_argument("--listsearch-steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=3400)
    ap.add_argument("--R", type=int, default=2)
    ap.add_argument("--task", choices=("listsearch", "merge"), default="listsearch", help="the task the stones lead to")
    ap.add_argument("--circuit", choices=sorted(GATES), default="halt", help="whose gates the MLP wires")
    ap.add_argument("--scored", choices=("head", "all", "walk"), default="head", help="the cells a step stone scores")
    ap.add_argument("--discrete", action="store_true", help="a stone is solved only if also exact discretized")
    ap.add_argument("--set", action="append", default=[], help="a setting for every stage (key=value)")
    ap.add_argument("--save", help="torch.save the ListSearch model's weights (every seed) and the report here")
    ap.add_argument("--export", nargs=3, metavar=("SAVED", "INDEX", "NAME"),
                    help="write seed INDEX of a --save file as the nramctl run NAME, and train nothing")
    a = ap.parse_args()
    if a.export:
        return export(a.export[0], int(a.export[1]), a.export[2])
    global SCORED
    SCORED = a.scored
    for name, (fn, _, steps) in STONES.items():
        T.TASKS[name] = T.Task(name, fn, steps, 1)
    common = _settings(a)
    t0, rng, params, report = time.time(), np.random.default_rng(1), None, {"stages": {}}
    for stage in a.stages.split(","):
        parts = stage.split("+")                # "walk+compare": the stones' steps alternate on one set of weights
        trainers = [Trainer(dataclasses.replace(task_config(a.task, None, common + STONES.get(p, NONE)[1]),
                                                task=p)) for p in parts]
        if params is not None:                  # each seed from its own weights of the stage before
            _load(trainers[0], params)
        current = trainers[0]

        def take(trainer):                      # the weights the last step left, into this stone's trainer
            if trainer is not current:
                _load(trainer, dict(current.model.named_parameters()))
            return trainer

        def errors(per_difficulty):
            return np.max([_errors(take(t).model, t.cfg, per_difficulty, rng, a.discrete) for t in trainers],
                          axis=0)

        for i in range(a.stage_steps):
            for trainer in trainers:
                current = take(trainer)
                current.train_step()
            if (i + 1) % 250 == 0 and (errors(30) == 0).all():
                break
        e = errors(50)
        report["stages"][stage] = {"steps": i + 1, "solved": int((e == 0).sum()), "errors": np.round(e, 3).tolist()}
        print(stage, json.dumps(report["stages"][stage]), f"{time.time() - t0:.0f}s", flush=True)
        params = _weights(current)
        report.setdefault("stone_weights", {})[stage] = params
    base = task_config(a.task, None, common)
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=a.seed + 50))
    trainer = Trainer(cfg)
    fresh = _weights(trainer)
    perturb(trainer.model, params or fresh, fresh, "mix", a.mix)
    first, best = {}, np.ones(a.seeds)
    d = np.repeat(np.arange(1, cfg.difficulty + 1), 30)
    start = fuzzy_and_discrete(trainer.model, cfg, cfg.M, d, rng)      # the stones' weights on ListSearch, untrained
    report["listsearch_untrained"] = {k: np.round(start[k], 3).tolist() for k in ("error", "discrete_error")}
    print("listsearch untrained", json.dumps(report["listsearch_untrained"]), flush=True)
    for i in range(a.listsearch_steps):
        trainer.train_step()
        if (i + 1) % 250 == 0:
            e = _errors(trainer.model, cfg, 30, rng)
            best = np.minimum(best, e)
            for j in np.nonzero(e == 0)[0].tolist():
                first.setdefault(j, i + 1)
            print("listsearch step", i + 1, np.round(e, 3).tolist(), "levels", [c.level for c in trainer.curricula],
                  flush=True)
            if (e == 0).all():
                break
    e = _errors(trainer.model, cfg, 50, rng)
    by_length = [evaluate(trainer.model, cfg, cfg.M, np.full(50, n), rng)["error"] for n in range(1, cfg.difficulty + 1)]
    end = fuzzy_and_discrete(trainer.model, cfg, cfg.M, d, rng)
    report.update(final_discrete=np.round(end["discrete_error"], 3).tolist(),   # solved: both 0
                  solved_fuzzy_and_discrete=int(((end["error"] == 0) & (end["discrete_error"] == 0)).sum()))
    report.update(seeds=a.seeds, mix=a.mix, listsearch_solved=int((e == 0).sum()), final=np.round(e, 3).tolist(),
                  best=np.round(best, 3).tolist(), first_solved_step=first, seconds=round(time.time() - t0),
                  final_by_length=np.round(np.stack(by_length, 1), 2).tolist())   # [seed][length 1..]
    weights = report.pop("stone_weights", {})
    if a.save:
        import torch
        torch.save({"weights": _weights(trainer), "stones": weights, "args": vars(a), "report": report}, a.save)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
