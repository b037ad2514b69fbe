"""Batches of task examples, and the curriculum that picks their difficulties (SPEC section 2)."""
from collections import deque

import numpy as np
import torch

from .machine import Batch
from .tasks import task, timestep_rule


def make_batch(task_name, M, difficulties, rng, T_rule, extra_steps=0):
    """One example per entry of `difficulties` -> Batch of [N, M] tensors, T from the rule; with
    `extra_steps` K > 0 each example gets U{0..K} steps more (drawn after the examples). The examples
    of each difficulty are drawn together, in increasing order of difficulty, and keep their places."""
    t, rule = task(task_name), timestep_rule(T_rule)
    d = np.asarray(difficulties, dtype=np.int64).reshape(-1)
    mem, target = np.zeros((len(d), M), dtype=np.int64), np.zeros((len(d), M), dtype=np.int64)
    mask, T = np.zeros((len(d), M), dtype=bool), np.zeros(len(d), dtype=np.int64)
    for n in np.unique(d):
        at = np.flatnonzero(d == n)
        mem[at], target[at], mask[at] = t.batch(int(n), M, rng, len(at))
        T[at] = rule(int(n))
    if extra_steps:
        T += rng.integers(0, extra_steps + 1, size=len(d))
    return Batch(*(torch.from_numpy(a) for a in (mem, target, mask, T, d)))


def extended_rule(T_rule, extra):
    """The timestep rule with `extra` more steps: an int K (T + K) or 'T' (twice T)."""
    if extra in (None, 0, "0"):
        return T_rule
    if str(extra).upper() == "T":
        return f"2*({T_rule})"
    return f"({T_rule})+{int(extra)}"


def concat(batches):
    return Batch(*(torch.cat(parts) for parts in zip(*batches)))


class Curriculum:
    """Zaremba & Sutskever's mixture: at level D draw e ~ Geometric(1/2) on {0, 1, ...}; then with
    probability p_any pick d uniformly from all difficulties, with p_upto uniformly from [lo, D + e],
    otherwise d = D + e; clipped to the task's range. The level advances when the error over the last
    `window` batches is below `threshold`, at least `min_batches` batches after the last advance. The
    first level is `start` (clipped to the range), else the smallest difficulty."""

    def __init__(self, cfg, lo, hi):
        self.cfg, self.lo, self.hi = cfg, lo, hi
        self.level = (min(max(cfg.start or lo, lo), hi) if cfg.enabled else hi)
        self.errors = deque(maxlen=cfg.window)
        self.since = 0

    def sample(self, rng, size):
        if not self.cfg.enabled:
            return rng.integers(self.lo, self.hi + 1, size=size)
        e = rng.geometric(0.5, size=size) - 1
        top = np.minimum(self.level + e, self.hi)
        u = rng.random(size)
        anyd = rng.integers(self.lo, self.hi + 1, size=size)
        upto = self.lo + np.floor(rng.random(size) * (top - self.lo + 1)).astype(np.int64)
        return np.where(u < self.cfg.p_any, anyd, np.where(u < self.cfg.p_any + self.cfg.p_upto, upto, top))

    def update(self, error):
        """Record one batch's error; returns True when the level advanced."""
        self.errors.append(float(error))
        self.since += 1
        c = self.cfg
        if (c.enabled and self.level < self.hi and len(self.errors) == c.window
                and self.since >= c.min_batches and np.mean(self.errors) < c.threshold):
            self.level += 1
            self.errors.clear()
            self.since = 0
            return True
        return False

    def state_dict(self):
        return {"level": self.level, "errors": list(self.errors), "since": self.since}

    def load_state_dict(self, d):
        self.level, self.since = int(d["level"]), int(d["since"])
        self.errors = deque((float(x) for x in d["errors"]), maxlen=self.cfg.window)


def rng_state(rng):
    """A numpy Generator's state as plain strings (128-bit ints survive weights_only loading)."""
    s = rng.bit_generator.state
    return {"state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def rng_from_state(d):
    rng = np.random.default_rng()
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": int(d["state"]), "inc": int(d["inc"])},
                               "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}
    return rng
