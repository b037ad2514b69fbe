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

from nramctl import stones as S, tasks as T
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


_layout, _other, _against, _mid_walk, _score = S._layout, S.other, S.against, S.mid_walk, S.score


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


def _step(which, scored=None):
    """One step of the walk (`nramctl.stones.walk_step`), scored as --scored says unless `scored`."""
    def fn(n, M, rng, k):
        return S.walk_step(which, scored or SCORED)(n, M, rng, k)
    return fn


def _steps(count):
    """`count` steps of the walk (`nramctl.stones.walk_steps`), scored as --scored says."""
    def fn(n, M, rng, k):
        return S.walk_steps(count, SCORED)(n, M, rng, k)
    return fn


_merge_step, _merge_steps, _merge_shallow, _merge_out = S.merge_step, S.merge_steps, S.merge_shallow("ab"), S.merge_out


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
                                       lambda n, c=c: 2 * n + 5) for c in (1, 2, 3, 4) for only in (None, "a", "b")},
          "merge1p": (_merge_shallow, ONE_STEP, lambda n: 2 * n + 5),
          "merge1o": (_merge_out, ONE_STEP, lambda n: 2 * n + 5)}


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
