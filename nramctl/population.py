"""The seed population of one batched training: which seeds train, and what happens to them.

A trainer's state (`Trainer.state_dict()`) holds every seed's slice along axis 0 of each tensor and
position in each per-seed list. These functions pick and place such slices, so that
  - a finished seed is *retired*: its whole state is archived and it leaves the batch (it costs
    nothing further, and it can be brought back, e.g. to be polished alone);
  - a stuck seed is *restarted* from a fresh initialization under a new seed number (a new attempt:
    seeds tried grows by one); in that mode a finished seed's slot is refilled the same way;
  - exploit/explore (population-based training): a stuck seed takes over the weights, optimizer
    moments and curriculum of a better one, with its learning rate perturbed; the copy is recorded
    in the seed's lineage.
`Population.after_check` applies the configured policy at every check on fresh examples.
"""
import numpy as np
import torch

PER_SEED_LISTS = ("seeds", "curricula", "data_rngs", "noise_gens", "best_error", "best_step", "solved_step",
                  "nonfinite", "solved_seconds", "lrs", "lineage", "last_improved", "polish_stage",
                  "exact_extra", "adam_start", "stage", "stage_start", "stone_exact", "stone_log", "born")


def _pick_tensor(v, idx):
    return v[idx].clone() if torch.is_tensor(v) and v.dim() > 0 else v


def subset(state, idx):
    """The state of the seeds at positions `idx` (a list), as a trainer of those seeds would have it."""
    idx = list(idx)
    out = dict(state)
    out["model"] = {k: _pick_tensor(v, idx) for k, v in state["model"].items()}
    out["best_params"] = {k: _pick_tensor(v, idx) for k, v in state["best_params"].items()}
    opt = dict(state["optimizer"])
    opt["state"] = {i: {k: _pick_tensor(v, idx) for k, v in st.items()} for i, st in opt["state"].items()}
    out["optimizer"] = opt
    for name in PER_SEED_LISTS:
        out[name] = [state[name][i] for i in idx]
    out["log"] = {k: ([v[i] for i in idx] if isinstance(v, list) else v) for k, v in state["log"].items()}
    return out


def place(state, pos, one, keys=("model", "optimizer", "curricula")):
    """Write a one-seed state `one` into position `pos` of `state` (in place), for the given parts:
    model weights, optimizer moments, curriculum, best (best params, error, step)."""
    with torch.no_grad():
        if "model" in keys:
            for k, v in state["model"].items():
                v[pos] = one["model"][k][0]
        if "optimizer" in keys:
            for i, st in state["optimizer"]["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        src = one["optimizer"]["state"].get(i, {}).get(k)
                        v[pos] = src[0] if src is not None else 0
        if "best" in keys:
            for k, v in state["best_params"].items():
                v[pos] = one["best_params"][k][0]
    for name in [n for n in keys if n in PER_SEED_LISTS] + (["best_error", "best_step"] if "best" in keys else []):
        state[name][pos] = one[name][0]
    return state


def _restart(trainer, slots, event):
    """A fresh seed in each of these slots; one event each for the metrics."""
    events = []
    for s in slots:
        old = trainer.seeds[s]
        events.append({"event": event, "seed": trainer.restart(s), "replaces": old, "step": trainer.step})
    return events


class Population:
    """The policy of config `train.population`: restart stuck seeds, exploit/explore."""

    def __init__(self, cfg):
        self.cfg = cfg.train.population
        self.rng = np.random.default_rng([cfg.train.seed, 3])
        self.deadlines = [(int(steps), error) for steps, error in self.cfg.deadlines] \
            + ([(self.cfg.deadline, self.cfg.deadline_error)] if self.cfg.deadline else [])

    def stuck(self, trainer, s):
        """Seed s is not solved, and has not improved its best error for `patience` steps, or its best
        error is still above a deadline's error after that deadline's steps of its own."""
        c = self.cfg
        if trainer.solved_step[s] is not None or trainer.stone_of(s) is not None:
            return False                # (a seed on a stepping stone follows train.stones' rules)
        if c.patience and trainer.step - trainer.last_improved[s] >= c.patience:
            return True
        age = trainer.step - trainer.adam_start[s]
        return any(age >= steps and trainer.best_error[s] > error for steps, error in self.deadlines)

    def refills(self):
        """Restarts also refill the slot of a seed that finished (with `until: all`): a search keeps
        every slot training a seed until its budget ends, instead of ending once every slot has solved."""
        return self.cfg.mode == "restart"

    def refill(self, trainer, finished):
        """A fresh seed in each finished seed's slot (the finished seed retired with its record)."""
        return _restart(trainer, finished, "refill")

    def after_check(self, trainer):
        """Called after every check; returns the events (dicts) it caused, for the metrics."""
        c, events = self.cfg, []
        if c.mode == "off" or trainer.S == 0:
            return events
        stuck = [s for s in range(trainer.S) if self.stuck(trainer, s)]
        if not stuck:
            return events
        if c.mode == "restart":
            return _restart(trainer, stuck, "restart")
        # exploit/explore: each stuck seed copies one of the better seeds (lowest best error, not stuck)
        ranked = sorted((s for s in range(trainer.S) if s not in stuck and trainer.solved_step[s] is None
                         and trainer.stone_of(s) is None),
                        key=lambda s: trainer.best_error[s])
        donors = ranked[:max(1, int(np.ceil(c.top * trainer.S)))]
        for s in stuck:
            if not donors or trainer.best_error[donors[0]] >= trainer.best_error[s]:
                trainer.last_improved[s] = trainer.step          # nobody better: wait another round
                continue
            src = donors[int(self.rng.integers(len(donors)))]
            factor = float(self.rng.choice(c.perturb))
            trainer.exploit(s, src, factor)
            events.append({"event": "exploit", "seed": trainer.seeds[s], "from": trainer.seeds[src],
                           "lr": trainer.lrs[s], "step": trainer.step})
        return events
