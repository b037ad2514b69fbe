"""The basin of a hand-wired circuit: does training find its way back to a known solution?

A hand-wired circuit (`circuits.py`) is a table of choices over the registers' zero flags. `distill`
fits a task's MLP (or LSTM) controller to that table (cross-entropy on the 2^R patterns), which gives a
learned model that solves the task exactly. `measure` starts K seeds from it, perturbed, trains them
with nramctl's own training loop and settings (`--set` anything: batch, lr, noise, entropy, ...) and
counts the seeds that are back at 0 error on fresh examples. Two perturbations:

  scale a   the head's weights and bias times a: the same argmax program with softer choices (a
            margin of m logits becomes a m), as a model that has found the program but not sharpened it;
  mix a     (1 - a) theta* + a theta_s, with theta_s seed s's own fresh initialization: a is how far
            the start lies on the way back to a random model (a = 1 is plain training).

The amount at which seeds stop coming back is the basin's edge. A training method that moves it
outward widens the basin around a real solution: a fast screen (seconds per seed) for methods that
might let gradient descent find the hard tasks' circuits from scratch (docs/RESULTS.md).
"""
import numpy as np
import torch

from .circuits import CIRCUITS, VARIANTS, circuit
from .config import ConfigError, task_config
from .evaluate import compare, evaluate
from .program import wired, zero_patterns
from .tasks import task
from .train import Trainer

MODES = ("scale", "mix")


def basin_config(name, config=None, overrides=(), seeds=8, variant=None):
    """The task's config with the registers and gates of its hand-wired circuit (or of the named
    variant, `circuits.VARIANTS`), and the MLP unless `--set model.controller=lstm` asks for the LSTM."""
    key = task(name).name
    fixed_keys = ("model.R", "model.repeat", "model.gates")
    for item in overrides:
        key_set = item.split("=", 1)[0].strip()
        if key_set in fixed_keys:
            raise ConfigError(f"--set {key_set}: basin uses the circuit's own (its registers and gates)")
        if key_set.startswith("train.population"):
            raise ConfigError(f"--set {key_set}: basin follows each seed from its start, without restarts")
    try:
        R, repeat, min_M, _, gates = circuit(key, variant)
    except KeyError:
        known = [v for t, v in VARIANTS if t == key]
        if variant is None:
            hint = f" (its phase-free circuits: --circuit {', '.join(known)})" if known else ""
            raise ConfigError(f"no hand-wired circuit for {key}{hint}; basin knows "
                              f"{', '.join(sorted(CIRCUITS))}") from None
        raise ConfigError(f"--circuit {variant}: no such circuit for {key} "
                          f"(its variants: {', '.join(known) or 'none'})") from None
    # a task's own search settings (tasks.yaml: Permutation restarts its seeds) do not apply here
    fixed = [f"model.R={R}", f"model.repeat={repeat}", f"model.gates=[{','.join(gates)}]", "train.population.mode=off",
             "train.population.deadlines=[]"]
    cfg = task_config(key, config, ["model.controller=mlp", *overrides, *fixed, f"train.seeds={seeds}"])
    if min_M and cfg.M < min_M:
        raise ConfigError(f"--circuit {variant} solves {key} from M = {min_M} on (--set M={min_M}); M is {cfg.M}")
    return cfg


def _targets(model, table):
    """The table's chosen source of every gate input and register, and its stop decision."""
    Q, K, R = model.Q, model.K, model.R
    n_args = 2 * Q * K
    return (table[:, :n_args].view(-1, Q, 2, K).argmax(-1), table[:, n_args:-1].view(-1, R, K).argmax(-1),
            (table[:, -1] > 0).to(table.dtype))


def distill(model, rules, steps=3000, lr=3e-3, length=16):
    """Fit every seed's controller to the rule table by cross-entropy on the 2^R zero patterns (input
    r = 1 where register r is zero, as `program.TableController` reads it). An LSTM is fitted on
    random sequences of `length` patterns, so that it answers each pattern alike whatever its state
    holds. Returns the final loss."""
    R, S, Q, K = model.R, model.S, model.Q, model.K
    sequence = [g.name for g in model.gates]          # the circuit's gates, its repeats written out
    args, regs, stop = _targets(model, wired(R, sequence, rules).controller.table[0])
    patterns = zero_patterns(R)
    recurrent = model.controller.recurrent
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.controller.parameters(), lr=lr)
    n_args, ce = 2 * Q * K, torch.nn.functional.cross_entropy
    for _ in range(steps):
        # [L, S, B] pattern indices: every pattern once (feed-forward), or random sequences (LSTM)
        idx = (torch.randint(0, 1 << R, (length, S, 4 << R), generator=g) if recurrent
               else torch.arange(1 << R).expand(1, S, -1))
        state = model.controller.initial_state(S, idx.shape[2], patterns)
        loss = 0
        for p in idx:
            logits, state = model.controller(patterns[p], state)
            logits, p = logits.reshape(-1, logits.shape[-1]), p.reshape(-1)
            a = logits[:, :n_args].reshape(-1, Q, 2, K) + model.arg_mask
            loss = loss + (ce(a.reshape(-1, K), args[p].reshape(-1))
                           + ce(logits[:, n_args:-1].reshape(-1, K), regs[p].reshape(-1))
                           + torch.nn.functional.binary_cross_entropy_with_logits(logits[:, -1], stop[p]))
        loss = loss / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def perturb(model, solved, fresh, mode, amount):
    """Set the model's parameters to the solved ones perturbed (see the module's docstring)."""
    with torch.no_grad():
        for key, p in model.named_parameters():
            if mode == "scale":
                p.copy_(solved[key] * amount if key.startswith("controller.head.") else solved[key])
            else:
                p.copy_((1 - amount) * solved[key] + amount * fresh[key])


def _errors(model, cfg, per_difficulty, rng, discrete=False):
    """[S] error on fresh examples, `per_difficulty` at every training difficulty; with `discrete`, the
    worse of the fuzzy and the discretized error."""
    lo = task(cfg.task).min_difficulty
    d = np.repeat(np.arange(lo, cfg.difficulty + 1), per_difficulty)
    if not discrete:
        return evaluate(model, cfg, cfg.M, d, rng)["error"]
    res = compare(model, cfg, cfg.M, d, rng)
    return np.maximum(res["error"], res["discrete_error"])


def check_plan(mode, amounts):
    """A one-line ConfigError unless the mode is known and every amount lies in its range."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: scale or mix")
    top = 1 if mode == "mix" else 100
    if not all(0 <= a <= top for a in amounts):
        raise ConfigError(f"--amounts: each between 0 and {top} with --mode {mode}")


def measure(cfg, mode, amounts, steps, per_difficulty=50, progress=None, variant=None):
    """One row per amount: the seeds' median error at the start, each seed's error after `steps`
    training steps (fresh examples, `per_difficulty` at every training difficulty) and how many are
    back at 0; `distilled_error` is the unperturbed model's worst seed on the same kind of examples.
    `variant` names another circuit of the task (`circuits.VARIANTS`; cfg from basin_config with it)."""
    check_plan(mode, amounts)
    R, repeat, _, rules, _ = circuit(cfg.task, variant)
    if (cfg.model.R, cfg.model.repeat) != (R, repeat):   # cfg made for another circuit: refuse, not distill
        raise ConfigError(f"the config has R {cfg.model.R} and repeat {cfg.model.repeat}; the circuit "
                          f"{variant or 'default'} wants {R} and {repeat} (make it with basin_config)")
    trainer = Trainer(cfg)
    fresh = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    loss = distill(trainer.model, rules)
    solved = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    rng = np.random.default_rng([cfg.train.seed, 7])
    exact = _errors(trainer.model, cfg, per_difficulty, rng)
    out = {"task": cfg.task, "circuit": variant or "default", "M": cfg.M,
           "controller": cfg.model.controller, "mode": mode, "steps": steps, "seeds": trainer.S, "distill_loss": loss,
           "distilled_error": float(exact.max()), "rows": []}
    for amount in amounts:
        trainer = Trainer(cfg)
        perturb(trainer.model, solved, fresh, mode, amount)
        start = _errors(trainer.model, cfg, per_difficulty, rng)
        for i in range(steps):
            trainer.train_step()
            if progress:
                progress(amount, i + 1)
        final = _errors(trainer.model, cfg, per_difficulty, rng)
        out["rows"].append({"amount": amount, "start_error": float(np.median(start)),
                            "final_errors": [round(float(e), 4) for e in final],
                            "recovered": int((final == 0).sum()), "levels": [c.level for c in trainer.curricula]})
    return out
