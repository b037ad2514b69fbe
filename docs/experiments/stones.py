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
weights (each keeps its own Adam state), and a seed has solved the stage when it is exact on all of them."""
import argparse
import dataclasses
import json
import time

import numpy as np

from nramctl import tasks as T
from nramctl.basin import _errors, perturb
from nramctl.config import task_config
from nramctl.evaluate import evaluate
from nramctl.train import Trainer

GATES = "model.gates=[READ,INC,READ,READ,INC,READ,EQ,INC,WRITE,WRITE]"


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


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def _load(trainer, weights):
    """Every seed's parameters from `weights` (named as the model's, [S, ...] each)."""
    trainer.model.load_state_dict(weights, strict=False)


ONE_STEP = ["T=1", "train.curriculum.enabled=false"]
STONES = {"pair": (pair, ONE_STEP, lambda n: 1), "hop": (hop, ONE_STEP, lambda n: 1),
          "compare": (compare, ONE_STEP, lambda n: 1), "walk": (walk, ["T=n", "M=21"], lambda n: n)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--stages", default="pair,hop,compare,walk")
    ap.add_argument("--stage-steps", type=int, default=3000)
    ap.add_argument("--mix", type=float, default=0.3)
    ap.add_argument("--listsearch-steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=3400)
    ap.add_argument("--R", type=int, default=2)
    ap.add_argument("--save", help="torch.save the ListSearch model's weights (every seed) and the report here")
    a = ap.parse_args()
    for name, (fn, _, steps) in STONES.items():
        T.TASKS[name] = T.Task(name, fn, steps, 1)
    common = ["model.controller=mlp", GATES, "model.repeat=1", f"model.R={a.R}", "train.batch=16",
              "train.curriculum.threshold=0.01", f"train.seeds={a.seeds}", f"train.seed={a.seed}"]
    t0, rng, params, report = time.time(), np.random.default_rng(1), None, {"stages": {}}
    for stage in a.stages.split(","):
        parts = stage.split("+")                # "walk+compare": the stones' steps alternate on one set of weights
        trainers = [Trainer(dataclasses.replace(task_config("listsearch", None, common + STONES[p][1]), task=p))
                    for p in parts]
        if params is not None:                  # each seed from its own weights of the stage before
            _load(trainers[0], params)
        current = trainers[0]

        def take(trainer):                      # the weights the last step left, into this stone's trainer
            if trainer is not current:
                _load(trainer, dict(current.model.named_parameters()))
            return trainer

        def errors(per_difficulty):
            return np.max([_errors(take(t).model, t.cfg, per_difficulty, rng) for t in trainers], axis=0)

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
    base = task_config("listsearch", None, common)
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=a.seed + 50))
    trainer = Trainer(cfg)
    fresh = _weights(trainer)
    perturb(trainer.model, params or fresh, fresh, "mix", a.mix)
    first, best = {}, np.ones(a.seeds)
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
    report.update(seeds=a.seeds, mix=a.mix, listsearch_solved=int((e == 0).sum()), final=np.round(e, 3).tolist(),
                  best=np.round(best, 3).tolist(), first_solved_step=first, seconds=round(time.time() - t0),
                  final_by_length=np.round(np.stack(by_length, 1), 2).tolist())   # [seed][length 1..]
    if a.save:
        import torch
        torch.save({"weights": _weights(trainer), "args": vars(a), "report": report}, a.save)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
