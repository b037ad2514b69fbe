"""The whole timestep in the compiled kernel: controller, head, circuit, stop and log-likelihood.

`machine.step` is the definition: the controller reads P(r_i = 0), its head emits the logits, the
circuit (`circuit.py`) runs, f = sigmoid(stop logit). Run as PyTorch ops, a timestep is some forty
small operations forward and backward whose bookkeeping costs more than their arithmetic at the batch
sizes NRAM trains with. Here the kernel (`kernel/fused.h`) does all of it per example, in cache, for
blocks of examples of one seed, and one call (`span_forward_*`) runs every timestep of a run, one
(`span_backward_*`) goes back through them: one autograd node per run, where a node per timestep
cost 7% of an eight-seed training step in Python and in autograd's bookkeeping.

Three things make it cheaper than the sum of its parts:
- the head computes only the logits that are used: a gate reads the R registers and the gates before
  it, and a one-input gate reads one argument (for the paper's 14 gates and R = 4: 308 of 577 columns).
  The others get no gradient (their softmax weight is 0), so leaving them out changes nothing.
- parameter gradients are not summed step by step. Each step's backward writes every layer's input
  rows and output gradients into [S, rows, width] buffers (a row per example and step that runs); after the last step's backward (the first
  timestep: autograd walks back in time) one batched product per layer gives the weight gradients of
  all timesteps at once, returned to autograd by that last node.
- an example whose T_n steps are done is skipped: a batch runs max(T_n) steps, and the later steps of
  a shorter example weigh nothing in the loss (its halting mass there is 0), so the kernel only
  carries its state on (the same values) and hands back zero gradients. Under the curriculum most
  examples are shorter than the batch's longest: 1.3x to 2.1x the training steps per second on the
  hard tasks and on Copy, with the same losses to the bit.

`Unroll` holds what a run's timesteps share (packed weights, targets, those buffers); `run` is a
whole run and `span` some timesteps of it, through the autograd node `Steps` when gradients are
wanted; recurrent dropout, which changes the state between timesteps, runs a span per timestep.
`tests/test_reference.py` checks a whole run against the plain reference and against the PyTorch
path, in float64 and float32.
"""
import ctypes
import functools
from typing import NamedTuple, Optional

import numpy as np
import torch

from . import native
from .controller import LSTMController, MLPController

def applies(model, *tensors):
    """Whether the fused timestep runs this model on these tensors (the trained controllers, the
    kernel built, CPU float tensors)."""
    return type(model.controller) in (MLPController, LSTMController) and native.usable(*tensors)


def _layers(model):
    c = model.controller
    return (c.l1, c.l2, c.head) if isinstance(c, MLPController) else (c.inp, c.gates, c.head)


def head_columns(model):
    """The head's columns that are used, in the kernel's order: each gate input's allowed sources
    (gate i: the R registers and gates 0..i-1), then the register logits, then the stop logit."""
    return _head_columns(model.R, model.K, model.Q, tuple(g.arity for g in model.gates))


@functools.lru_cache(maxsize=None)
def _head_columns(R, K, Q, arity):
    cols = [(2 * i + a) * K + k for i, n in enumerate(arity) for a in range(n) for k in range(R + i)]
    n_args = 2 * Q * K
    return torch.tensor(cols + list(range(n_args, n_args + R * K + 1)))


class Unroll:
    """What the timesteps of one run share: packed weights (forward [S, in, out] and, for the
    backward, transposed), targets, and the per-layer rows the weight gradients are computed from."""

    def __init__(self, model, batch, steps, eps, grad, noise=None):
        self.model, self.steps, self.eps, self.grad = model, steps, eps, grad
        layers = _layers(model)
        self.lstm = isinstance(model.controller, LSTMController)    # else an MLP
        self.cols = head_columns(model)
        S = model.S
        with torch.no_grad():
            self.Wf = [layers[0].weight, layers[1].weight, layers[2].weight[:, :, self.cols]]
            self.bf = [layers[0].bias, layers[1].bias, layers[2].bias[:, :, self.cols]]
            self.Wf = [w.detach().contiguous() for w in self.Wf]
            self.bf = [b.detach().reshape(S, -1).contiguous() for b in self.bf]
            self.Wt = [w.transpose(1, 2).contiguous() for w in self.Wf] if grad else None
        self.params = [p for layer in layers for p in (layer.weight, layer.bias)]
        self.H, self.O = model.hidden, len(self.cols)
        N, M = batch.memory.shape
        self.N, self.M = N, M
        self.B = N // S
        dtype = self.Wf[0].dtype
        # the logit noise ([T, N, O - 1]: the used source logits, machine.fuzzy_run) and 0 on the stop logit
        self.noise = None if noise is None else torch.nn.functional.pad(noise[:steps].to(dtype), (0, 1)).contiguous()
        self.y = batch.target.to(torch.int32).contiguous()
        self.mask = batch.mask.to(dtype).contiguous()
        ins = [model.R, (2 if self.lstm else 1) * self.H, self.H]
        outs = [self.H, (4 if self.lstm else 1) * self.H, self.O]
        # pos [N, steps]: -1 where an example is past its T_n steps (the kernel skips it), else the
        # row of that example's step among its seed's rows of the weight-gradient buffers below
        runs = (torch.arange(steps)[None, :] < batch.T[:, None]).view(S, -1)
        self.pos = torch.where(runs, runs.cumsum(1) - 1, -1).view(N, steps).to(torch.int32).contiguous()
        if grad:
            # one row per example and step that runs, in each seed's block of `rows` (the others pad:
            # zeros, so that they add nothing)
            counts = runs.sum(1)
            self.rows = max(int(counts.max()), 1)
            pad = (torch.arange(self.rows)[None, :] >= counts[:, None]).nonzero(as_tuple=True)
            self.X = [torch.empty(S, self.rows, w, dtype=dtype) for w in ins]
            self.D = [torch.empty(S, self.rows, w, dtype=dtype) for w in outs]
            if len(pad[0]):                    # only the pad rows (a boolean mask would pass over all)
                for buf in self.X + self.D:
                    buf[pad] = 0
        else:
            self.rows = 0
            self.X = self.D = [None] * 3
        self.went_back = set()                 # timesteps whose backward has run
        self.pending = 0                       # spans run forward whose backward has not come
        self.plan = native.plan(model.gates)
        self.fn_forward = native.function("span_forward", dtype)
        self.fn_backward = native.function("span_backward", dtype) if grad else None

    def ints(self, t, renorm):
        """The kernel's sizes. A whole timestep is some microseconds per example, so even 16 examples
        (one seed's batch) are worth sharing out over the threads."""
        m = self.model
        return (ctypes.c_int * 15)(self.N, m.S, self.B, m.R, m.Q, self.M, self.plan.G, self.H, self.O, int(self.lstm),
                                   int(renorm), native.threads(self.N, 16), self.steps, t, self.rows)

    def weight_grads(self):
        """Every controller parameter's gradient over all timesteps: one batched product per layer."""
        S, grads = self.model.S, []
        missed = sorted(set(range(self.steps)) - self.went_back)    # timesteps no gradient reached
        if missed:
            pos = self.pos[:, missed]
            n, t = (pos >= 0).nonzero(as_tuple=True)
            rows = n // self.B, pos[n, t].long()
            for D in self.D:
                D[rows] = 0
        for layer, (X, D) in enumerate(zip(self.X, self.D)):
            dW, db = torch.bmm(X.transpose(1, 2), D), D.sum(1, keepdim=True)
            if layer == 2:                     # back into the head's full column layout
                full_w, full_b = self.params[4], self.params[5]
                dW = dW.new_zeros(full_w.shape).index_copy_(2, self.cols, dW)
                db = db.new_zeros(full_b.shape).index_copy_(2, self.cols, db)
            grads += [dW, db]
        return grads


def _each(x, n):
    """The addresses of x[0], ..., x[n - 1]: the rows of a tensor or the tensors of a list (None: n
    null pointers)."""
    if x is None:
        return np.zeros(n, np.uint64)
    if isinstance(x, list):
        return np.array([t.data_ptr() for t in x], np.uint64)
    return np.uint64(x.data_ptr()) + np.arange(n, dtype=np.uint64) * np.uint64(x.stride(0) * x.element_size())


def _same(x, n):
    return np.full(n, 0 if x is None else x.data_ptr(), np.uint64)


def _chain(first, inner, last, n):
    """A state handed from timestep to timestep in a span of n: (inputs, outputs) per timestep. The
    first input is `first`, timestep i writes inner[i] and the span's last writes `last`, and each
    reads what the one before wrote."""
    outs = np.concatenate([_each(inner, n - 1), _same(last, 1)])
    ins = np.concatenate([_same(first, 1), outs[:-1]])
    return ins, outs


def _call(fn, u, t0, renorm, columns, *doubles):
    """One kernel call over a span: row i of the table holds timestep t0 + i's pointers."""
    table = np.ascontiguousarray(np.stack(columns, 1))
    fn(u.ints(t0, renorm), table.ctypes.data, table.shape[1], table.shape[0], *map(ctypes.c_double, doubles))


class Span(NamedTuple):
    """What the timesteps t0 .. t0 + n - 1 computed: the state after them, and per timestep (a first
    axis of n) the stop f, the log-likelihood, the softmax weights and the memory."""
    regs: torch.Tensor
    mem: torch.Tensor
    h: Optional[torch.Tensor]
    c: Optional[torch.Tensor]
    f: torch.Tensor                          # [n, N]
    ll: torch.Tensor                         # [n, N]
    args_w: torch.Tensor                     # [n, N, Q, 2, K]
    regs_w: torch.Tensor                     # [n, N, R, K]
    mems: list                               # n - 1 x [N, M, M]: the memory after each timestep but the last


def _forward(unroll, t0, n, regs, mem, h, c, renorm, save):
    """Timesteps t0 .. t0 + n - 1 in one kernel call -> (Span, what the backward needs besides the
    span's input memory and outputs: [V, AB, saved, keep], a list of n tensors each or None).

    The large per-timestep buffers are separate tensors, not one [n, ...] block: a block of a whole
    run (over 100 MB at M 20) is a fresh mapping from the system each time, whose pages fault in one
    by one (measured: 8x the page faults of a run and a slower kernel), where tensors of a few MB are
    reused from the allocator's heap."""
    u, m = unroll, unroll.model
    N, R, M = regs.shape
    K, Q, H = m.K, m.Q, u.H
    new = regs.new_empty
    regs, mem = regs.contiguous(), mem.contiguous()
    lstm = u.lstm
    if lstm:
        h, c = h.contiguous(), c.contiguous()
    P = native.padded(M)
    each = lambda count, *shape: [new(*shape) for _ in range(count)]
    out = Span(new(N, R, M), new(N, M, M), new(N, H) if lstm else None, new(N, H) if lstm else None,
               new(n, N), new(n, N), new(n, N, Q, 2, K), new(n, N, R, K), each(n - 1, N, M, M))
    inner_regs = new(n - 1, N, R, M)
    inner_h, inner_c = (new(n - 1, N, H), new(n - 1, N, H)) if lstm else (None, None)
    big = [each(n, N, P, native.padded(K)) if save else None,       # the sources, transposed
           each(n, N, Q, 2, P),                                     # the gate inputs
           each(n, N, u.plan.G, M, M) if save else None,            # memory as the gates saw it
           each(n, N, 6 * H) if save and lstm else None]            # the LSTM's gates and cell
    X = u.X if save else [None] * 3
    chains = [_chain(regs, inner_regs, out.regs, n), _chain(mem, out.mems, out.mem, n),
              _chain(h, inner_h, out.h, n), _chain(c, inner_c, out.c, n)]
    columns = [np.full(n, a, np.uint64) for a in u.plan.addresses]
    for w, b in zip(u.Wf, u.bf):
        columns += [_same(w, n), _same(b, n)]
    columns += [ins for ins, _ in chains] + [_same(x, n) for x in (u.y, u.mask, u.pos)]
    columns += [outs for _, outs in chains]
    columns += [_each(x, n) for x in (out.f, out.ll, out.args_w, out.regs_w, *big)]
    columns += [_same(x, n) for x in X]
    columns.append(_each(None if u.noise is None else u.noise[t0:t0 + n], n))
    _call(u.fn_forward, u, t0, renorm, columns, u.eps)
    return out, big


class Steps(torch.autograd.Function):
    """(registers, memory, h, c, mems[, *controller parameters]) -> the Span of timesteps t0 .. t0 + n - 1
    but its memories (appended to the list `mems`), in one kernel call each way: a whole run is one
    node, not one per timestep. Only the node of the first timestep takes the parameters: autograd
    reaches it last, and it returns their gradients over all timesteps (`Unroll.weight_grads`)."""

    @staticmethod
    def forward(ctx, unroll, t0, n, renorm, clip_c, regs, mem, h, c, mems, *params):
        ctx.unroll, ctx.t0, ctx.n, ctx.clip_c, ctx.renorm, ctx.n_params = unroll, t0, n, clip_c, renorm, len(params)
        ctx.set_materialize_grads(False)
        out, ctx.big = _forward(unroll, t0, n, regs, mem, h, c, renorm, save=True)
        ctx.mems = out.mems
        mems += out.mems
        ctx.save_for_backward(out.args_w, out.regs_w, mem.contiguous(), out.mem, out.f)
        unroll.pending += 1
        if not unroll.lstm:                    # an MLP has no recurrent state
            out = out._replace(h=regs.new_empty(0), c=regs.new_empty(0))
        return tuple(out[:-1])

    @staticmethod
    def backward(ctx, d_regs, d_mem, d_h, d_c, d_f, d_ll, d_args_w, d_regs_w):
        u, n = ctx.unroll, ctx.n
        lstm = u.lstm
        args_w, regs_w, mem_in, mem_last, f = ctx.saved_tensors
        N, R, M, H = f.shape[1], regs_w.shape[2], u.M, u.H
        new = f.new_empty
        # d(state) alternates between two buffers from the last timestep back to the first, which
        # writes buffer 0: the gradient of the span's input state
        bufs = [[new(N, R, M), new(N, M, M), new(N, H) if lstm else None, new(N, H) if lstm else None]
                for _ in range(min(n, 2))]
        incoming = [x if x is None else x.contiguous()
                    for x in (d_regs, d_mem, d_h if lstm else None, d_c if lstm else None)]
        d_in = [_each([bufs[i % 2][k] for i in range(n)] if bufs[0][k] is not None else None, n) for k in range(4)]
        d_out = [np.concatenate([d_in[k][1:], _same(incoming[k], 1)]) for k in range(4)]
        V, AB, saved, keep = ctx.big
        grads = [x if x is None else x.contiguous() for x in (d_f, d_ll, d_args_w, d_regs_w)]
        columns = [np.full(n, a, np.uint64) for a in u.plan.addresses] + [_same(w, n) for w in u.Wt]
        columns += [_each(x, n) for x in (args_w, regs_w, V, AB, saved)]
        columns += [*_chain(mem_in, ctx.mems, mem_last, n), _each(f, n), _each(keep, n)]
        columns += [_same(x, n) for x in (u.y, u.mask, u.pos, *u.X)]
        columns += d_out + [_each(x, n) for x in grads] + d_in + [_same(x, n) for x in u.D]
        _call(u.fn_backward, u, ctx.t0, ctx.renorm, columns, ctx.clip_c or 0.0, u.eps)
        ctx.big = ctx.mems = None
        u.pending -= 1
        u.went_back.update(range(ctx.t0, ctx.t0 + n))
        params = u.weight_grads() if u.pending == 0 else [None] * ctx.n_params
        d_regs_in, d_mem_in, d_h_in, d_c_in = bufs[0]
        return (None,) * 5 + (d_regs_in, d_mem_in, d_h_in, d_c_in, None, *params)


def span(unroll, regs, mem, h, c, t0, n, clip_c, renorm):
    """Timesteps t0 .. t0 + n - 1 from this state (h, c: [N, H], or None for an MLP) -> Span, through
    the autograd node when gradients are wanted."""
    if not unroll.lstm:
        h = c = regs.new_empty(0)
    if unroll.grad:
        params = unroll.params if t0 == 0 else ()
        mems = []
        out = Span(*Steps.apply(unroll, t0, n, renorm, clip_c, regs, mem, h, c, mems, *params), mems)
        return out if unroll.lstm else out._replace(h=None, c=None)
    return _forward(unroll, t0, n, regs, mem, h, c, renorm, save=False)[0]


def run(unroll, state, clip_c, renorm, dropout=None):
    """All the run's timesteps from `state` -> (f [T, N], ll [T, N], args_w [T, ...], regs_w [T, ...],
    memories: the memory after each timestep, detached). One span; with recurrent dropout (`dropout`
    [N, H] multiplies the hidden state handed from one timestep to the next) one span a timestep."""
    h, c = (x.reshape(unroll.N, unroll.H) for x in state.ctl) if unroll.lstm else (None, None)
    regs, mem, spans = state.registers, state.memory, []
    for t0, n in ([(0, unroll.steps)] if dropout is None else [(t, 1) for t in range(unroll.steps)]):
        if dropout is not None and t0 > 0:
            h = h * dropout
        out = span(unroll, regs, mem, h, c, t0, n, clip_c, renorm)
        spans.append(out)
        regs, mem, h, c = out.regs, out.mem, out.h, out.c
    memories = [m for s in spans for m in (*s.mems, s.mem.detach())]     # the inner ones need no grad

    def whole(key):                            # [T, ...] over the spans
        return torch.cat([getattr(s, key) for s in spans]) if len(spans) > 1 else getattr(spans[0], key)
    return whole("f"), whole("ll"), whole("args_w"), whole("regs_w"), memories


def step(unroll, state, t, clip_c, renorm):
    """One fused timestep: -> (registers, memory, controller state, f, ll, args_w, regs_w)."""
    lstm = unroll.lstm
    h, c = (x.reshape(unroll.N, unroll.H) for x in state.ctl) if lstm else (None, None)
    out = span(unroll, state.registers, state.memory, h, c, t, 1, clip_c, renorm)
    return out.regs, out.mem, ((out.h, out.c) if lstm else ()), out.f[0], out.ll[0], out.args_w[0], out.regs_w[0]
