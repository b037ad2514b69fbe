"""The paper's training method (SPEC section 2), for S seeds trained as one batched computation.

Each seed has its own initial weights, data stream, curriculum level, gradient-noise stream, norm clip
and best snapshot; only the arithmetic is shared. A seed whose loss or gradient turns NaN or Inf is
rolled back to its state before that step (weights and optimizer moments) and trains on from there with
the next batch; the other seeds are untouched. The loop knows nothing of files or terminals: it reports
through callbacks, and `Trainer.state_dict()` holds everything needed to resume bit for bit.
"""
import dataclasses
import time

import numpy as np
import torch

from . import fused
from .adam import Adam
from .data import Curriculum, concat, extended_rule, make_batch, rng_from_state, rng_state
from .evaluate import compare, evaluate, score
from .machine import NRAM, fuzzy_run
from .population import PER_SEED_LISTS, Population, place, subset
from .runtime import freeze_long_lived_objects
from .stones import stone
from .tasks import task


def build_model(cfg, seed_values=None):
    m = cfg.model
    seeds = seed_values if seed_values is not None else seed_list(cfg)
    return NRAM(m.R, m.gates, m.repeat, m.controller, m.hidden, seeds, m.stop_bias, m.keep_bias, m.head_scale)


def _zero_moments(state, at):
    """Zero one parameter's Adam moments (its per-seed tensors) at seed positions `at`."""
    for v in state.values():
        if torch.is_tensor(v) and v.dim() > 0:
            v[at] = 0


def seed_list(cfg):
    return [cfg.train.seed + s for s in range(cfg.train.seeds)]


class Trainer:
    """S seeds (`seeds`, default cfg.train.seed, seed + 1, ...) trained as one batched computation.
    Seeds that finish with `until: all` are retired (archived whole, see population.py) and leave the
    batch; `all_seeds()` and `all_best_params()` report the active and the retired together."""

    def __init__(self, cfg, seeds=None):
        self.cfg, tr = cfg, cfg.train
        self.task = task(cfg.task)
        self.seeds = list(seeds) if seeds is not None else seed_list(cfg)
        self.S = len(self.seeds)
        self.model = build_model(cfg, self.seeds)
        self.lrs = [tr.lr] * self.S                   # per seed: exploit/explore perturbs them
        self.adam_start = [0] * self.S                # per seed: Adam's step count when its moments began
        self.opt = Adam(self.model.parameters(), lr=tr.lr)
        lo, hi = self.task.min_difficulty, cfg.difficulty
        self.curricula = [Curriculum(tr.curriculum, lo, hi) for _ in self.seeds]
        self.data_rngs = [np.random.default_rng([s, 0]) for s in self.seeds]
        self.noise_gens = [torch.Generator().manual_seed(s * 7919 + 1) for s in self.seeds]
        self.step = 0
        self.elapsed = 0.0                            # seconds spent training, over every session
        self.best_error = [float("inf")] * self.S
        self.best_step = [None] * self.S
        self.solved_step = [None] * self.S
        self.solved_seconds = [None] * self.S
        self.last_improved = [0] * self.S
        self.lineage = [[] for _ in self.seeds]       # exploit/explore copies: [step, from seed]
        self.nonfinite = [0] * self.S                 # steps rolled back because of NaN / Inf
        self.polish_stage = [0] * self.S              # extra steps a polishing seed trains and is judged with
        self.exact_extra = [None] * self.S            # extra steps its kept model was found exact with
        self.best_params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.start_weights = None                     # train.init's model (one seed): where restarts begin
        self.retired = []                             # one-seed states of finished seeds
        self.next_seed = max(self.seeds, default=tr.seed) + 1     # for restarts
        self.population = Population(cfg)
        self.polish = tr.polish_steps                 # reproduce measures shares with 0, then polishes
        self.stones = [stone(cfg.task, name) for name in tr.stones.names]
        self.stage = [0] * self.S                     # per seed: the stone it trains on (len(stones): the task)
        self.stage_start = [0] * self.S               # the step its stage began
        self.stone_exact = [None] * self.S            # the step it was first exact on its stone
        self.stone_log = [[] for _ in self.seeds]     # the stones it left: [stone, steps, error, exact|advanced]
        self.born = [0] * self.S                      # the step it began (its restart's)
        self._stone_events, self._stuck_on_stone = [], []
        self._reset_log()

    @classmethod
    def from_state(cls, cfg, state):
        """The trainer a state_dict describes (its seeds may be a subset: others retired)."""
        t = cls(cfg, state.get("seeds"))
        t.load_state_dict(state)
        return t

    # ---- one optimisation step -------------------------------------------------------------
    def batch(self):
        parts = []
        for s in range(self.S):
            stone = self.stone_of(s)
            if stone is not None:           # the stone's difficulties drawn uniformly, no curriculum
                d = self.data_rngs[s].integers(self.task.min_difficulty, self.cfg.difficulty + 1,
                                               size=self.cfg.train.batch)
                parts.append(make_batch(stone.task.name, self.cfg.M, d, self.data_rngs[s], stone.T))
                continue
            d = self.curricula[s].sample(self.data_rngs[s], self.cfg.train.batch)
            parts.append(make_batch(self.cfg.task, self.cfg.M, d, self.data_rngs[s], self.cfg.T,
                                    self._extra_steps(s)))
        return concat(parts)

    def _extra_steps(self, s):
        """The most extra steps seed s trains with: its polish stage once it polishes, if
        polish_extra_steps is set."""
        tr = self.cfg.train
        polishing = self.solved_step[s] is not None
        return self.polish_stage[s] if polishing and tr.polish_extra_steps else tr.extra_steps

    def _next_stage(self, k):
        """Polish stages: 2, 4, 8, ... extra steps, up to polish_extra_steps. Straight to many extra
        steps a solution may not carry over (ListK: 0 of 4 seeds in five fine-tunings straight to 14),
        while each doubling did at its first checks (docs/RESULTS.md)."""
        return min(max(2 * k, 2), self.cfg.train.polish_extra_steps)

    def train_step(self):
        cfg, tr = self.cfg, self.cfg.train
        b = self.batch()
        entropy = tr.entropy.enabled and self.step >= tr.entropy.start
        out = fuzzy_run(self.model, b, tr.clip_activation, tr.renormalize, tr.log_eps,
                        entropy_bonus=entropy, dropout=self._dropout_mask(len(b.T)), noise=self._logit_noise(b))
        per_seed = out.loss.view(self.S, -1).mean(1)
        obj = per_seed.sum()
        if entropy:
            coef = tr.entropy.coef * tr.entropy.decay ** (self.step - tr.entropy.start)
            obj = obj - coef * out.entropy.view(self.S, -1).mean(1).sum()
        self.opt.zero_grad()
        obj.backward()
        # checked before clipping and noise mix a gradient; Adam's bounded update cannot turn finite
        # weights non-finite, so a finite loss and gradient leave a seed finite
        params = [p for p in self.model.parameters() if p.grad is not None]
        sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)             # [S] squared norms
        bad = ~(torch.isfinite(per_seed.detach()) & torch.isfinite(sq))
        before = self._snapshot(bad) if bad.any() else None
        self._clip_and_noise(params, sq)
        if tr.lr_decay != 1:
            self._set_lrs()
        self.opt.step()
        if before is not None:
            self._restore(before, bad)
        self._hold_solved()
        self.step += 1
        err = score(out.pred, b, self.S)
        self._advance(out.pred, b, bad)
        return per_seed.detach(), err, bad

    def _dropout_mask(self, N):
        """[N, H] recurrent dropout mask (train.dropout), drawn from each seed's noise stream."""
        p = self.cfg.train.dropout
        if not p:
            return None
        B, H = N // self.S, self.cfg.model.hidden
        keep = [torch.bernoulli(torch.full((B, H), 1 - p), generator=g) for g in self.noise_gens]
        return torch.cat(keep).to(self.model.arg_mask.dtype) / (1 - p)

    def _logit_noise(self, b):
        """[T, N, U] Gumbel noise on the used source logits (train.logit_noise, decayed by the step),
        drawn from each seed's noise stream; None when off."""
        tr = self.cfg.train
        scale = tr.logit_noise * tr.logit_noise_decay ** self.step
        if not scale:
            return None
        B, U = len(b.T) // self.S, len(fused.head_columns(self.model)) - 1
        dtype = self.model.arg_mask.dtype
        noise = torch.zeros(int(b.T.max()), len(b.T), U, dtype=dtype)
        for s, g in enumerate(self.noise_gens):     # each seed draws for its own longest example
            T = int(b.T[s * B:(s + 1) * B].max())
            part = noise[:T, s * B:(s + 1) * B]
            part.copy_(torch.rand(T, B, U, generator=g, dtype=dtype))
            part.clamp_(min=torch.finfo(dtype).tiny).log_().neg_().log_().mul_(-scale)
        return noise

    def _finite_weights(self):
        """[S] bool: every weight of the seed is finite."""
        ok = torch.ones(self.S, dtype=torch.bool)
        for p in self.model.parameters():
            ok &= torch.isfinite(p.detach()).flatten(1).all(1)
        return ok

    def _snapshot(self, bad):
        """The weights and Adam moments of the seeds in `bad` before the update."""
        return [(p.detach()[bad].clone(), {k: v[bad].clone() for k, v in self.opt.state.get(i, {}).items()
                                           if torch.is_tensor(v) and v.dim() > 0})
                for i, p in enumerate(self.model.parameters())]

    def _restore(self, before, bad):
        """Roll the seeds in `bad` back to their state before this step."""
        with torch.no_grad():
            for i, (p, (w, moments)) in enumerate(zip(self.model.parameters(), before)):
                p[bad] = w
                for k, v in moments.items():
                    self.opt.state[i][k][bad] = v
                if not moments and i in self.opt.state:    # the very first update: no moments yet
                    _zero_moments(self.opt.state[i], bad)
        for s in bad.nonzero()[:, 0].tolist():
            self.nonfinite[s] += 1

    def _advance(self, pred, b, bad):
        """Curriculum decisions use each seed's error on the examples at or below its level (a step
        rolled back for NaN / Inf does not count)."""
        wrong = ((pred != b.target) & b.mask).sum(1).view(self.S, -1)
        scored = b.mask.sum(1).view(self.S, -1)
        d = b.difficulty.view(self.S, -1)
        for s, c in enumerate(self.curricula):
            if bad[s] or self.stone_of(s) is not None:
                continue
            at = d[s] <= c.level
            c.update(float(wrong[s][at].sum()) / max(int(scored[s][at].sum()), 1))

    def _clip_and_noise(self, params, sq):
        """Each seed's gradient scaled to norm at most clip_norm (sq: [S] squared norms), then noise."""
        tr = self.cfg.train
        if tr.clip_norm:
            scale = (tr.clip_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))
        if tr.noise.enabled:
            sigma = (tr.noise.eta / (1 + self.step) ** tr.noise.gamma) ** 0.5
            for s, g in enumerate(self.noise_gens):
                for p in params:
                    p.grad[s].add_(torch.randn(p.shape[1:], generator=g) * sigma)

    def finished(self, s):
        """Seed s reached the target and has trained its polish steps since."""
        solved = self.solved_step[s]
        return solved is not None and self.step >= solved + self.polish

    def _hold_solved(self):
        """Finished seeds keep their solution while the others train on."""
        done = torch.tensor([self.finished(s) for s in range(self.S)])
        if done.any():
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    p[done] = self.best_params[k][done]

    # ---- checks on fresh examples ----------------------------------------------------------
    def check(self):
        """Evaluate every seed on fresh examples over the whole training range; keep each seed's best.
        With solve_discrete, a seed's error is the worse of its fuzzy and discretized errors; with
        extra_steps K, the examples run K steps beyond the rule. A seed that is polishing (training
        on after reaching the target, which sharpens its distributions) replaces its kept solution
        only with one that still meets the target; with polish_extra_steps, also with its stage's extra
        steps, and each time it does, the next stage begins (2, 4, 8, ... up to polish_extra_steps)."""
        tr = self.cfg.train
        polishing = [self.solved_step[s] is not None for s in range(self.S)]
        stages = sorted({self.polish_stage[s] for s in range(self.S) if polishing[s]}) if tr.polish_extra_steps \
            else []
        on_stone = [self.stone_of(s) is not None for s in range(self.S)]
        errors = self._errors(tr.extra_steps, 1) if not all(on_stone) else np.zeros(self.S)
        for k in sorted({self.stage[s] for s in range(self.S) if on_stone[s]}):
            errors = np.where(np.array(self.stage) == k, self._stone_errors(k), errors)
        self._check_stones(errors)
        for k in stages:                    # polishing seeds: the worse of that and their stage's
            extended = np.maximum(errors, self._errors(k, 2))
            errors = np.where([polishing[s] and self.polish_stage[s] == k for s in range(self.S)], extended, errors)
        finite = self._finite_weights()
        for s in range(self.S):
            if on_stone[s]:
                continue                                      # (judged on its stone above)
            if polishing[s] and self.step > self.solved_step[s] + self.polish:
                continue                                      # finished before this check
            if not finite[s]:
                continue                                      # never keep a non-finite model
            e = float(errors[s])
            if (e < self.best_error[s]) if not polishing[s] else (e <= tr.target_error):
                if e < self.best_error[s]:
                    self.last_improved[s] = self.step
                self.best_error[s], self.best_step[s] = e, self.step
                with torch.no_grad():
                    for k, p in self.model.named_parameters():
                        self.best_params[k][s] = p[s]
                if polishing[s] and stages:
                    self.exact_extra[s] = self.polish_stage[s]
                    self.polish_stage[s] = self._next_stage(self.polish_stage[s])
            if not polishing[s] and e <= tr.target_error:
                self.solved_step[s] = self.step
                self.solved_seconds[s] = self.elapsed
                self.exact_extra[s] = tr.extra_steps
                self.polish_stage[s] = self._next_stage(0) if tr.polish_extra_steps else 0
        return errors

    def _errors(self, extra, stream):
        """[S] error of every seed on fresh examples with `extra` steps beyond the rule."""
        cfg, tr = self.cfg, self.cfg.train
        if extra:
            cfg = dataclasses.replace(cfg, T=extended_rule(cfg.T, extra))
        rng = np.random.default_rng([tr.seed, self.step, stream])
        d = rng.integers(self.task.min_difficulty, cfg.difficulty + 1, size=tr.eval_examples)
        if tr.solve_discrete:       # a solution must also hold once every softmax is an argmax
            res = compare(self.model, cfg, cfg.M, d, rng)
            return np.maximum(res["error"], res["discrete_error"])
        return evaluate(self.model, cfg, cfg.M, d, rng)["error"]

    # ---- stepping stones --------------------------------------------------------------------
    def stone_of(self, s):
        """The Stone seed position s trains on, or None once it trains on the task itself."""
        return self.stones[self.stage[s]] if self.stage[s] < len(self.stones) else None

    def _stone_errors(self, k):
        """[S] fuzzy error of every seed on fresh examples of stone k."""
        st, tr = self.stones[k], self.cfg.train
        cfg = dataclasses.replace(self.cfg, task=st.task.name, T=st.T)
        rng = np.random.default_rng([tr.seed, self.step, 3 + k])
        d = rng.integers(self.task.min_difficulty, cfg.difficulty + 1, size=tr.eval_examples)
        return evaluate(self.model, cfg, cfg.M, d, rng)["error"]

    def _check_stones(self, errors):
        """Seeds on a stone: one exact on it moves on after train.stones.polish more steps; one not exact
        after train.stones.steps moves on all the same or (stuck: restart) is restarted after the check."""
        c = self.cfg.train.stones
        for s in range(self.S):
            if self.stone_of(s) is None:
                continue
            e = float(errors[s])
            if e <= self.cfg.train.target_error and self.stone_exact[s] is None:
                self.stone_exact[s] = self.step
            if self.stone_exact[s] is not None and self.step - self.stone_exact[s] >= c.polish:
                self._next_stone(s, e, "exact")
            elif self.step - self.stage_start[s] >= c.steps:
                if c.stuck == "advance":
                    self._next_stone(s, e, "advanced")
                elif s not in self._stuck_on_stone:
                    self._stuck_on_stone.append(s)

    def _next_stone(self, s, error, how):
        """Seed position s leaves its stone (`how`: exact or advanced) for the next stone or the task,
        with its weights and fresh Adam moments (as a new training would start it)."""
        name = self.stones[self.stage[s]].name
        steps = self.step - self.stage_start[s]
        self.stone_log[s].append([name, steps, round(error, 4), how])
        self._stone_events.append({"event": "stone", "seed": self.seeds[s], "stone": name, "how": how,
                                   "stone_steps": steps, "error": round(error, 4), "step": self.step})
        self.stage[s] += 1
        self.stage_start[s], self.stone_exact[s], self.last_improved[s] = self.step, None, self.step
        with torch.no_grad():
            for st in self.opt.state.values():
                _zero_moments(st, s)
        self.adam_start[s] = self.opt.steps()
        self._set_lrs()

    def after_stones(self):
        """The stone events of the last check, and the restarts of the seeds it found stuck on a stone
        (each a fresh seed from the first stone); for the metrics."""
        events, self._stone_events = self._stone_events, []
        stuck, self._stuck_on_stone = self._stuck_on_stone, []
        for s in stuck:
            old, name = self.seeds[s], self.stones[self.stage[s]].name
            events.append({"event": "stone-restart", "seed": self.restart(s), "replaces": old, "stone": name,
                           "step": self.step})
        return events

    def done(self):
        if self.S == 0:
            return True
        finished = [self.finished(s) for s in range(self.S)]
        if self.cfg.train.until == "first":
            enough = any(finished) or any(r["solved_step"][0] is not None for r in self.retired)
        else:
            enough = all(finished)                            # (true once every seed is retired)
        out_of_time = self.cfg.train.max_minutes is not None and self.elapsed >= 60 * self.cfg.train.max_minutes
        return enough or out_of_time or self.step >= self.cfg.train.steps

    # ---- the population: keep, retire, restart, exploit ------------------------------------
    def keep(self, idx):
        """Go on with the seeds at positions `idx` only; each carries on exactly as it was."""
        state = subset(self.state_dict(), idx)
        fresh = Trainer(self.cfg, state["seeds"])
        fresh.load_state_dict(state)
        self.__dict__.update(fresh.__dict__)

    def _archive(self, state, i):
        """Seed position i's whole state, as kept in `retired` (without the archive itself)."""
        return {**subset(state, [i]), "retired": [], "start_weights": None}

    def start_at(self, weights):
        """Every seed takes these weights ({name: [1, ...]}, one trained model: `train.init`), and so does
        every seed a restart brings in later: a fine-tuning run's attempts all begin from that model."""
        self.start_weights = {k: v.detach().clone() for k, v in weights.items()}
        with torch.no_grad():
            for key, p in self.model.named_parameters():
                p.copy_(self.start_weights[key].expand_as(p))
                self.best_params[key].copy_(p)

    def retire(self, idx):
        """Archive the seeds at positions `idx` (whole state) and drop them from the batch."""
        if not idx:
            return
        state = self.state_dict()
        self.retired += [self._archive(state, i) for i in idx]
        self.keep([i for i in range(self.S) if i not in idx])

    def revive(self, seed):
        """A retired seed back as the only seed in training (e.g. to polish it alone)."""
        state = next(r for r in self.retired if r["seeds"][0] == seed)
        self.retired = [r for r in self.retired if r is not state]
        state = {**state, "retired": self.retired, "step": self.step, "elapsed": self.elapsed,
                 "next_seed": self.next_seed}
        fresh = Trainer(self.cfg, [seed])
        fresh.load_state_dict(state)
        self.__dict__.update(fresh.__dict__)

    def restart(self, s):
        """Give position s a fresh initialization under a new seed number (a new attempt, counted as a
        seed tried); the old attempt is retired with its record (unsolved when stuck, solved when its
        slot is refilled). Returns the new seed number."""
        new = self.next_seed
        self.next_seed += 1
        state = self.state_dict()
        state["retired"].append(self._archive(state, s))
        fresh = Trainer(self.cfg, [new])
        if self.start_weights is not None:
            fresh.start_at(self.start_weights)
        one = fresh.state_dict()
        place(state, s, one, keys=("model", "optimizer", "best", *PER_SEED_LISTS))
        state["last_improved"][s] = state["stage_start"][s] = state["born"][s] = self.step
        state["adam_start"][s] = self.opt.steps()    # fresh moments: a fresh Adam's bias corrections
        self.load_state_dict(state)
        return new

    def exploit(self, dst, src, factor=1.0):
        """Seed position dst takes over src's weights, optimizer moments, curriculum and best record,
        with its learning rate src's times `factor`; its own data and noise streams go on."""
        state = self.state_dict()
        one = subset(state, [src])
        one["curricula"] = [dict(one["curricula"][0])]
        place(state, dst, one, keys=("model", "optimizer", "curricula", "best", "adam_start"))
        state["lrs"][dst] = state["lrs"][src] * factor
        state["lineage"][dst] = state["lineage"][dst] + [[self.step, self.seeds[src]]]
        state["last_improved"][dst] = self.step
        self.load_state_dict(state)

    def all_seeds(self):
        """Every seed's record, active and retired, sorted by seed number; `steps`: the updates it
        trained (from its first, or from its restart)."""
        rows = [{"seed": self.seeds[s], "best_error": self.best_error[s], "best_step": self.best_step[s],
                 "solved_step": self.solved_step[s], "solved_seconds": self.solved_seconds[s],
                 "nonfinite_steps": self.nonfinite[s], "lineage": self.lineage[s],
                 "exact_extra_steps": self.exact_extra[s], "level": self.curricula[s].level,
                 "steps": self.step - self.born[s], "active": True, **self._stone_record(s)}
                for s in range(self.S)]
        rows += [{"seed": r["seeds"][0], "best_error": r["best_error"][0], "best_step": r["best_step"][0],
                  "solved_step": r["solved_step"][0], "solved_seconds": r["solved_seconds"][0],
                  "nonfinite_steps": r["nonfinite"][0], "lineage": r["lineage"][0],
                  "exact_extra_steps": r.get("exact_extra", [None])[0],
                  "level": r["curricula"][0]["level"] if r.get("curricula") else None,
                  "steps": r["step"] - r.get("born", r.get("adam_start", [0]))[0], "active": False,
                  **self._stone_record(0, r)}
                 for r in self.retired]
        return sorted(rows, key=lambda r: r["seed"])

    def _stone_record(self, s, state=None):
        """With stones: the stones seed position s has left and the stage it trains on (of a retired
        seed's `state` where given)."""
        if not self.stones:
            return {}
        log, stage = (state.get("stone_log", [[]])[0], state.get("stage", [0])[0]) if state is not None \
            else (self.stone_log[s], self.stage[s])
        at = self.stones[stage].name if stage < len(self.stones) else self.cfg.task
        return {"stones": [list(x) for x in log], "stage": at}

    def all_best_params(self):
        """Best parameters of every seed, in the order of all_seeds(): {name: [S_all, ...]}."""
        parts = [(self.seeds[s], {k: v[s:s + 1] for k, v in self.best_params.items()}) for s in range(self.S)]
        parts += [(r["seeds"][0], r["best_params"]) for r in self.retired]
        parts.sort(key=lambda x: x[0])
        return {k: torch.cat([p[k] for _, p in parts]) for k in self.best_params}

    def _set_lrs(self):
        """One learning rate for all seeds while they agree (the arithmetic of torch's Adam), else one
        per seed; each times train.lr_decay^step. Also Adam's per-seed step offsets (`adam_start`)
        once a restart has made them differ."""
        tr = self.cfg.train
        lrs = [lr * tr.lr_decay ** self.step for lr in self.lrs] if tr.lr_decay != 1 else self.lrs
        self.opt.lr = (lrs[0] if lrs else tr.lr) if len(set(lrs)) <= 1 else \
            torch.tensor(lrs, dtype=torch.float64)
        self.opt.starts = torch.tensor(self.adam_start, dtype=torch.float64) if any(self.adam_start) else None

    # ---- the loop ------------------------------------------------------------------------
    def _reset_log(self):
        self._acc = {"loss": np.zeros(self.S), "error": np.zeros(self.S), "n": 0,
                     "time": 0.0, "nonfinite": np.zeros(self.S, dtype=np.int64)}

    def run(self, on_log=None, on_checkpoint=None, should_stop=lambda: False):
        """Train until every seed is solved, the budget is spent, or should_stop() says so.
        on_log(records) gets one dict per seed every log_every steps (and one per population event);
        on_checkpoint(trainer) is called every checkpoint_every steps. With `until: all`, a seed that
        has finished (solved and polished) retires. Returns 'solved', 'budget' or 'interrupted'."""
        tr = self.cfg.train
        freeze_long_lived_objects()
        start, base = time.perf_counter(), self.elapsed
        while not self.done():
            if should_stop():
                return "interrupted"
            t0 = time.perf_counter()
            loss, err, bad = self.train_step()
            a = self._acc
            a["loss"] += np.where(bad.numpy(), 0.0, loss.numpy())
            a["error"] += err.numpy()
            a["nonfinite"] += bad.numpy()
            a["n"] += 1
            a["time"] += time.perf_counter() - t0
            self.elapsed = base + time.perf_counter() - start      # wall time, checks included
            evaluated = events = None
            if self.step % tr.eval_every == 0 or self.step >= tr.steps:
                evaluated = self.check()
            if self.step % tr.log_every == 0 or evaluated is not None or self.done():
                records = self._records(evaluated)
                if on_log:
                    on_log(records)
            if evaluated is not None:
                events = self.after_stones() + self.population.after_check(self)
                if tr.until == "all":
                    finished = [s for s in range(self.S) if self.finished(s)]
                    if finished and self.population.refills():
                        events += self.population.refill(self, finished)
                    else:
                        self.retire(finished)
                if events and on_log:
                    on_log(events)
            if on_checkpoint and (self.step % tr.checkpoint_every == 0) and not self.done():
                on_checkpoint(self)
        solved = any(r["solved_step"] is not None for r in self.all_seeds())
        return "solved" if solved else "budget"

    def _records(self, evaluated):
        a, tr = self._acc, self.cfg.train
        n = max(a["n"], 1)
        speed = n * tr.batch * self.S / a["time"] if a["time"] else 0.0
        recs = []
        for s in range(self.S):
            r = {"step": self.step, "seed": self.seeds[s], "loss": float(a["loss"][s] / n),
                 "error": float(a["error"][s] / n), "level": self.curricula[s].level,
                 "examples_per_s": round(speed, 1)}
            if evaluated is not None:
                r["eval_error"] = float(evaluated[s])
            if self.solved_step[s] is not None:
                r["solved_step"] = self.solved_step[s]
            if self.stone_of(s) is not None:
                r["stone"] = self.stone_of(s).name
            if a["nonfinite"][s]:
                r["nonfinite_rolled_back"] = int(a["nonfinite"][s])   # steps undone since the last record
            recs.append(r)
        self._reset_log()
        return recs

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self):
        return {
            "step": self.step, "seeds": list(self.seeds), "elapsed": self.elapsed, "next_seed": self.next_seed,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "curricula": [c.state_dict() for c in self.curricula],
            "data_rngs": [rng_state(r) for r in self.data_rngs],
            "noise_gens": [g.get_state() for g in self.noise_gens],
            "best_error": list(self.best_error), "best_step": list(self.best_step),
            "solved_step": list(self.solved_step), "solved_seconds": list(self.solved_seconds),
            "lrs": list(self.lrs), "adam_start": list(self.adam_start), "lineage": [list(x) for x in self.lineage],
            "last_improved": list(self.last_improved), "retired": list(self.retired),
            "best_params": self.best_params, "nonfinite": list(self.nonfinite), "start_weights": self.start_weights,
            "polish_stage": list(self.polish_stage), "exact_extra": list(self.exact_extra),
            "stage": list(self.stage), "stage_start": list(self.stage_start), "stone_exact": list(self.stone_exact),
            "stone_log": [list(x) for x in self.stone_log], "born": list(self.born),
            "log": {"loss": self._acc["loss"].tolist(), "error": self._acc["error"].tolist(),
                    "n": self._acc["n"], "time": self._acc["time"],
                    "nonfinite": self._acc["nonfinite"].tolist()},
        }

    def load_state_dict(self, d):
        self.step = int(d["step"])
        S = self.S
        self.elapsed = float(d.get("elapsed", 0.0))
        self.next_seed = int(d.get("next_seed", max(self.seeds, default=0) + 1))
        self.seeds = list(d.get("seeds", self.seeds))
        self.retired = list(d.get("retired", []))
        self.solved_seconds = list(d.get("solved_seconds", [None] * S))
        self.lrs = [float(x) for x in d.get("lrs", [self.cfg.train.lr] * S)]
        self.adam_start = [int(x) for x in d.get("adam_start", [0] * S)]
        self.lineage = [list(x) for x in d.get("lineage", [[] for _ in range(S)])]
        self.last_improved = list(d.get("last_improved", [0] * S))
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["optimizer"])
        self._set_lrs()
        for c, cs in zip(self.curricula, d["curricula"]):
            c.load_state_dict(cs)
        self.data_rngs = [rng_from_state(r) for r in d["data_rngs"]]
        for g, st in zip(self.noise_gens, d["noise_gens"]):
            g.set_state(st)
        self.best_error, self.best_step = list(d["best_error"]), list(d["best_step"])
        self.solved_step = list(d["solved_step"])
        self.nonfinite = list(d.get("nonfinite", [0] * self.S))
        # checkpoints from before the polish stages: a polishing seed went straight to polish_extra_steps
        K = self.cfg.train.polish_extra_steps
        self.polish_stage = list(d.get("polish_stage", [K if x is not None else 0 for x in self.solved_step]))
        self.exact_extra = list(d.get("exact_extra", [None] * self.S))
        self.stage = [int(x) for x in d.get("stage", [0] * self.S)]      # (runs from before stones: none)
        self.stage_start = [int(x) for x in d.get("stage_start", [0] * self.S)]
        self.stone_exact = list(d.get("stone_exact", [None] * self.S))
        self.stone_log = [list(x) for x in d.get("stone_log", [[] for _ in range(self.S)])]
        self.born = [int(x) for x in d.get("born", self.adam_start)]
        self.best_params = d["best_params"]
        self.start_weights = d.get("start_weights")       # runs from before it: restarts begin fresh
        log = d["log"]
        self._acc = {"loss": np.array(log["loss"]), "error": np.array(log["error"]),
                     "n": int(log["n"]), "time": float(log["time"]),
                     "nonfinite": np.array(log.get("nonfinite", [0] * self.S), dtype=np.int64)}
