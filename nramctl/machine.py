"""The fuzzy Neural Random-Access Machine (SPEC section 1).

Shapes: S seeds, B examples per seed, N = S * B rows, R registers, Q gates, K = R + Q sources,
M memory cells (= value range), T timesteps.

One timestep (`step`):
  1. the controller reads P(r_i = 0) [N, R] and emits one logit vector;
  2. gate i's inputs A, B are softmax mixtures of the R registers and gates 1..i-1's outputs;
  3. gates run in order; READ sees WRITEs made earlier in the same step;
  4. all registers are replaced at once by softmax mixtures of the K sources;
  5. f = sigmoid(stop logit).

Machine state is a value: `State` goes into `step` and a new one comes out.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from . import circuit, fused
from .controller import build_controller
from .gates import circuit as gate_sequence


class State(NamedTuple):
    registers: torch.Tensor       # [N, R, M]
    memory: torch.Tensor          # [N, M, M], memory[n, i, j] = P(cell i holds j)
    ctl: tuple                    # controller state (empty for an MLP)
    t: int                        # timesteps already executed


class Choices(NamedTuple):
    """The controller's decisions for one timestep, as logits (masked where a source is not allowed)."""
    args: torch.Tensor            # [N, Q, 2, K] logits over sources for each gate input
    regs: torch.Tensor            # [N, R, K] logits over sources for each new register
    stop: torch.Tensor            # [N] stop logit


class NRAM(nn.Module):
    """Controller plus circuit description. `seed_values` gives one model per seed (S = len)."""

    def __init__(self, R, gates, repeat=1, controller="mlp", hidden=64, seed_values=(0,), stop_bias=None,
                 keep_bias=None, head_scale=1.0):
        super().__init__()
        self.R, self.gates = R, tuple(gate_sequence(gates, repeat))
        self.gate_names, self.repeat = list(gates), repeat
        self.Q, self.K, self.S = len(self.gates), R + len(self.gates), len(seed_values)
        self.kind, self.hidden = controller, hidden
        n_out = 2 * self.Q * self.K + R * self.K + 1
        self.controller = build_controller(controller, self.S, R, hidden, n_out, seed_values, stop_bias,
                                           head_scale)
        if keep_bias is not None:       # register r's logit for keeping its old value (source r)
            with torch.no_grad():
                self.controller.head.bias[:, 0, 2 * self.Q * self.K + torch.arange(R) * (self.K + 1)] = keep_bias
        # gate i may read the R registers and the outputs of gates 0..i-1
        allowed = torch.arange(self.K)[None, :] < (R + torch.arange(self.Q))[:, None]
        mask = torch.zeros(self.Q, 2, self.K).masked_fill(~allowed[:, None, :], float("-inf"))
        self.register_buffer("arg_mask", mask, persistent=False)
        self.register_buffer("arity", torch.tensor([g.arity for g in self.gates]), persistent=False)

    def initial_state(self, memory):
        """memory: [N, M] integer cells -> State with one-hot memory and all registers at 0."""
        N, M = memory.shape
        dtype = self.arg_mask.dtype
        mem = torch.nn.functional.one_hot(memory, M).to(dtype)
        regs = torch.zeros(N, self.R, M, dtype=dtype)
        regs[:, :, 0] = 1.0
        return State(regs, mem, self.controller.initial_state(self.S, N // self.S, mem), 0)

    def choose(self, zero_prob, ctl, noise=None):
        """zero_prob: [N, R] = P(r_i = 0) -> (Choices, new controller state). `noise` [N, n_out - 1]
        is added to the source logits (all but the stop logit): training's logit noise."""
        N = zero_prob.shape[0]
        logits, ctl = self.controller(zero_prob.view(self.S, N // self.S, self.R), ctl)
        logits = logits.reshape(N, -1)
        if noise is not None:
            logits = torch.cat([logits[:, :-1] + noise, logits[:, -1:]], 1)
        n_args = 2 * self.Q * self.K
        args = logits[:, :n_args].view(N, self.Q, 2, self.K) + self.arg_mask
        regs = logits[:, n_args:-1].view(N, self.R, self.K)
        return Choices(args, regs, logits[:, -1]), ctl


class ClipGrad(torch.autograd.Function):
    """Identity forward; clamps every coordinate of the incoming gradient to [-c, c]."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.c = c
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(-ctx.c, ctx.c), None


def clip(x, c):
    return ClipGrad.apply(x, c) if c and x.requires_grad else x


class StepOut(NamedTuple):
    stop: torch.Tensor            # [N] f_t
    weights: list                 # softmax weights (args [N, Q, 2, K], regs [N, R, K]) for the entropy
    outputs: Optional[list]       # gate outputs [N, M] each, when traced
    inputs: Optional[list]        # (A, B) per gate, when traced
    ll: Optional[torch.Tensor] = None   # [N] the step's log-likelihood of the scored cells (fused step)


def step(model, state, clip_c=None, renorm=True, trace=False, unroll=None, noise=None):
    """One fuzzy timestep: State -> (State, StepOut). `noise`: added to the source logits (`choose`).

    The circuit (gate inputs, gates, registers, memory) is one fused autograd node (`circuit.py`);
    the activation clip and the renormalization act on what a step hands on: controller logits,
    registers and memory. With an `unroll` (`fused.py`) the whole step, controller included, runs
    in the compiled kernel and also gives the step's log-likelihood."""
    if unroll is not None:
        regs, mem, ctl, f, ll, args_w, regs_w = fused.step(unroll, state, state.t, clip_c, renorm)
        return State(regs, mem, ctl, state.t + 1), StepOut(f, [args_w, regs_w], None, None, ll)
    ch, ctl = model.choose(state.registers[:, :, 0], state.ctl, noise)
    outputs = inputs = None
    if trace:
        with torch.no_grad():
            out = circuit.forward(model.gates, ch.args, ch.regs, state.registers, state.memory, renorm)
        regs, mem, args_w, regs_w = out[:4]
        outputs = list(out.values[:, model.R:].unbind(1))
        inputs = [(None, None) if ab is None else (ab[:, 0], ab[:, -1]) for ab in out.inputs]
    else:
        regs, mem, args_w, regs_w = circuit.circuit(model.gates, ch.args, ch.regs, state.registers,
                                                    state.memory, clip_c, renorm)
    f = torch.sigmoid(clip(ch.stop, clip_c))
    return State(regs, mem, ctl, state.t + 1), StepOut(f, [args_w, regs_w], outputs, inputs)


def halt_mass(f, remaining, t, T):
    """The halting probability of step t: p_t = f_t prod_{s<t} (1 - f_s) (`remaining` is the product);
    the last step t = T_n - 1 takes the remaining mass, and steps after it get none. Works for one
    step (t an int) or all at once (t [T, 1], f and remaining [T, N])."""
    return torch.where(t < T - 1, f * remaining, torch.where(t == T - 1, remaining, 0.0))


def stops_at(f, t, T):
    """Evaluation's halting rule at step t: f_t > 0.5, or the last step T_n - 1 (or later)."""
    return (f > 0.5) | (t >= T - 1)


def halting(stops, T):
    """halt_mass of every step. stops: [T, N] values f_t in [0, 1]; T: [N] -> [T, N]."""
    remaining = torch.cumprod(torch.cat([torch.ones_like(stops[:1]), 1 - stops[:-1]]), 0)
    return halt_mass(stops, remaining, torch.arange(stops.shape[0])[:, None], T)


def halt_step(stops, T):
    """Evaluation's halting step (0-based): the first t with f_t > 0.5, else T_n - 1. [T, N] -> [N]."""
    return stops_at(stops, torch.arange(stops.shape[0])[:, None], T).to(torch.int8).argmax(0)


class Batch(NamedTuple):
    """N examples of one memory size; tasks produce them, every runner consumes them."""
    memory: torch.Tensor          # [N, M] long, the input cells
    target: torch.Tensor          # [N, M] long, expected value of each scored cell
    mask: torch.Tensor            # [N, M] bool, the scored cells
    T: torch.Tensor               # [N] long, timesteps each example gets
    difficulty: torch.Tensor      # [N] long


class RunOut(NamedTuple):
    loss: torch.Tensor            # [N] halting-weighted negative log-likelihood of the scored cells
    entropy: Optional[torch.Tensor]  # [N] summed entropy of every controller softmax over live steps
    pred: torch.Tensor            # [N, M] argmax of each cell at the halting step
    halt: torch.Tensor            # [N] halting step (0-based): first f_t > 0.5, else T_n - 1
    trace: Optional[list]         # per step (State before, StepOut, State after) when traced


def entropy(w, eps):
    return -(w * torch.log(w.clamp_min(eps))).sum(-1)


def fuzzy_run(model, batch, clip_c=None, renorm=True, eps=1e-6, trace=False, entropy_bonus=False,
              need_loss=True, dropout=None, noise=None):
    """Unroll the fuzzy machine for max(T) steps and score it (SPEC sections 1 and 3).

    loss_n = - sum_t p_t sum_{i scored} log(max(memory^(t)[i, y_i], eps))
    The controller's entropy is computed only with `entropy_bonus` (RunOut.entropy is None otherwise).
    `dropout` ([N, H], scaled 0 / 1/(1-p) entries) multiplies the LSTM's hidden state each step hands
    to the next: recurrent dropout with one mask per example for the whole run. `noise` ([T, N, U],
    T at least max(T_n); U the source logits the circuit uses, in `fused.head_columns` order) is
    added to each timestep's logits: training's logit noise.
    Without autograd (evaluation) the run is streamed: memory O(N M^2) instead of O(T N M^2), and
    without `need_loss` it stops once every example has halted."""
    if not torch.is_grad_enabled() and not trace and not entropy_bonus and dropout is None and noise is None:
        return _streamed_run(model, batch, renorm, eps, need_loss)
    state = model.initial_state(batch.memory)
    y, T = batch.target[:, :, None], batch.T
    steps = [] if trace else None
    unroll = _unroll(model, batch, eps, grad=True, noise=noise) if not trace else None
    if unroll is not None:                     # every timestep in the kernel, one autograd node
        stops, lls, args_w, regs_w, memories = fused.run(unroll, state, clip_c, renorm, dropout)
    else:
        if noise is not None:                  # into the head's whole layout (the unused columns: 0)
            cols = fused.head_columns(model)[:-1]
            noise = noise.new_zeros(*noise.shape[:2], model.controller.head.bias.shape[-1] - 1).index_copy_(2, cols, noise)
        stops, lls, memories, args_ws, regs_ws = [], [], [], [], []
        for t in range(int(T.max())):
            if dropout is not None and t > 0:
                h, c = state.ctl
                state = state._replace(ctl=(h * dropout.view_as(h), c))
            before = state
            state, out = step(model, state, clip_c, renorm, trace, noise=None if noise is None else noise[t])
            stops.append(out.stop)
            lls.append(log_likelihood(state.memory, y, batch.mask, eps))
            memories.append(state.memory.detach())
            if entropy_bonus:
                args_ws.append(out.weights[0])
                regs_ws.append(out.weights[1])
            if trace:
                steps.append((before, out, state))
        stops, lls = torch.stack(stops), torch.stack(lls)                 # [T, N]
        args_w, regs_w = (torch.stack(args_ws), torch.stack(regs_ws)) if entropy_bonus else (None, None)
    loss = -(halting(stops, T) * lls).sum(0)
    h = None
    if entropy_bonus:
        alive = (torch.arange(len(stops))[:, None] < T).to(stops.dtype)  # [T, N]
        used = (model.arity[:, None] > torch.arange(2)[None, :]).to(stops.dtype)
        h = (entropy(args_w, eps) * used).sum((2, 3)) + entropy(regs_w, eps).sum(2)
        h = (h * alive).sum(0)
    halt = halt_step(stops.detach(), T)
    pred = torch.empty_like(batch.memory)
    for t in halt.unique().tolist():                                  # argmax only where an example halts
        rows = (halt == t).nonzero()[:, 0]
        pred[rows] = memories[t][rows].argmax(-1)
    return RunOut(loss, h, pred, halt, steps)


def log_likelihood(memory, y, mask, eps):
    """[N]: sum over the scored cells i of log max(P(cell i holds y_i), eps); y [N, M, 1]."""
    return (torch.log(memory.gather(2, y).squeeze(2).clamp_min(eps)) * mask).sum(-1)


def _unroll(model, batch, eps, grad, noise=None):
    """The fused kernel's shared state for this run, or None where the fused step does not apply."""
    if not fused.applies(model, model.arg_mask):
        return None
    return fused.Unroll(model, batch, int(batch.T.max()), eps, grad, noise)


def _streamed_run(model, batch, renorm, eps, need_loss):
    """fuzzy_run without autograd, one step's memory at a time: each example's prediction is taken at
    its halting step and the loss accumulated as the halting probabilities come in."""
    state = model.initial_state(batch.memory)
    y, T, N = batch.target[:, :, None], batch.T, batch.memory.shape[0]
    dtype = state.registers.dtype
    remaining = torch.ones(N, dtype=dtype)               # prod_{s<t} (1 - f_s)
    loss = torch.zeros(N, dtype=dtype)
    halted = torch.zeros(N, dtype=torch.bool)
    halt = torch.zeros(N, dtype=torch.long)
    pred = torch.empty_like(batch.memory)
    unroll = _unroll(model, batch, eps, grad=False)
    for t in range(int(T.max())):
        state, out = step(model, state, None, renorm, unroll=unroll)
        f = out.stop
        if need_loss:
            ll = out.ll if out.ll is not None else log_likelihood(state.memory, y, batch.mask, eps)
            loss -= halt_mass(f, remaining, t, T) * ll
            remaining = remaining * (1 - f)
        now = ~halted & stops_at(f, t, T)
        if now.any():
            rows = now.nonzero()[:, 0]
            pred[rows] = state.memory[rows].argmax(-1)
            halt[rows] = t
            halted |= now
        if halted.all() and not need_loss:
            break
    return RunOut(loss, None, pred, halt, None)
