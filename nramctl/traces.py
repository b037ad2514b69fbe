"""Per-step circuit traces of one example, as plain data (rendered by `render.py`)."""
import numpy as np
import torch

from .data import make_batch
from .machine import fuzzy_run
from .program import source_names
from .tasks import task


def example_batch(cfg, M, difficulty, count, seed):
    """The first `count` examples of the stream drawn with `seed` (so the same arguments show the same
    examples every time)."""
    return make_batch(cfg.task, M, [difficulty] * count, np.random.default_rng([seed, 2]), cfg.T)


def nth_example(cfg, M, difficulty, example, seed):
    """Example number `example` of that stream alone, as a batch of one."""
    rng, t = np.random.default_rng([seed, 2]), task(cfg.task)
    for _ in range(example):
        t.sample(difficulty, M, rng)
    return make_batch(cfg.task, M, [difficulty], rng, cfg.T)


def _value(dist):
    """[M] distribution -> {"value": argmax, "p": its probability}."""
    p, v = dist.max(-1)
    return {"value": int(v), "p": round(float(p), 4)}


def traced_run(model, cfg, M, difficulty, example=0, seed=0):
    """(batch of one, RunOut with every step's states) for example number `example` of the stream."""
    batch = nth_example(cfg, M, difficulty, example, seed)
    with torch.no_grad():
        return batch, fuzzy_run(model, batch, trace=True)


def trace(model, cfg, M, difficulty, example=0, seed=0):
    """Run the fuzzy machine on one example and describe every step."""
    (batch, out), i = traced_run(model, cfg, M, difficulty, example, seed), 0
    names = source_names(model)
    steps = []
    for t, (before, so, after) in enumerate(out.trace):
        args_w = so.weights[0][i]                                  # [Q, 2, K]
        gates = []
        for q, g in enumerate(model.gates):
            inputs = []
            for j in range(g.arity):
                w, k = args_w[q, j].max(-1)
                inputs.append({"source": names[int(k)], "weight": round(float(w), 4)})
            gates.append({"name": names[model.R + q], "inputs": inputs, "output": _value(so.outputs[q][i])})
        mb, ma = before.memory[i].max(-1), after.memory[i].max(-1)
        changes = [{"cell": int(c), "before": int(mb.indices[c]), "after": int(ma.indices[c]),
                    "p": round(float(ma.values[c]), 4)}
                   for c in torch.nonzero(mb.indices != ma.indices).flatten()]
        steps.append({
            "step": t + 1,
            "gates": gates,
            "registers_before": [_value(r) for r in before.registers[i]],
            "registers_after": [_value(r) for r in after.registers[i]],
            "memory_changes": changes,
            "stop": round(float(so.stop[i]), 4),
        })
    return {
        "example": example, "difficulty": difficulty, "M": M, "T": int(batch.T[i]),
        "memory": batch.memory[i].tolist(), "target": batch.target[i].tolist(),
        "mask": batch.mask[i].int().tolist(), "halt": int(out.halt[i]) + 1,
        "output": out.pred[i].tolist(),
        "correct": bool(((out.pred[i] == batch.target[i]) | ~batch.mask[i]).all()),
        "steps": steps,
    }
