"""The whole timestep in the compiled kernel: controller, head, circuit, stop and log-likelihood.

`machine.step` is the definition: the controller reads P(r_i = 0), its head emits the logits, the
circuit (`circuit.py`) runs, f = sigmoid(stop logit). Run as PyTorch ops, a timestep is some forty
small operations forward and backward whose bookkeeping costs more than their arithmetic at the batch
sizes NRAM trains with. Here one kernel call (`kernel/fused.h`, `step_forward_*`) does all of it per example,
in cache, for blocks of examples of one seed, and one call (`step_backward_*`) goes back.

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

`Unroll` holds what a run's timesteps share (packed weights, targets, those buffers); `step` is one
timestep, through the autograd node when gradients are wanted. `tests/test_reference.py` checks a
whole run against the plain reference and against the PyTorch path, in float64 and float32.
"""
import ctypes

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
    R, K, Q = model.R, model.K, model.Q
    cols = [(2 * i + a) * K + k for i, g in enumerate(model.gates) for a in range(g.arity) for k in range(R + i)]
    n_args = 2 * Q * K
    return torch.tensor(cols + list(range(n_args, n_args + R * K + 1)))


class Unroll:
    """What the timesteps of one run share: packed weights (forward [S, in, out] and, for the
    backward, transposed), targets, and the per-layer rows the weight gradients are computed from."""

    def __init__(self, model, batch, steps, eps, grad):
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
        self.pending = 0                       # timesteps run forward whose backward has not come
        self.plan = native.plan(model.gates)
        self.fn_forward = native.function("step_forward", dtype)
        self.fn_backward = native.function("step_backward", dtype) if grad else None

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


def _forward(unroll, t, regs, mem, h, c, renorm, save):
    """One timestep in the kernel -> (regs, mem, h, c, f, ll, args_w, regs_w, saved tensors)."""
    u, m = unroll, unroll.model
    N, R, M = regs.shape
    K, Q = m.K, m.Q
    new = regs.new_empty
    regs, mem = regs.contiguous(), mem.contiguous()
    lstm = u.lstm
    h_out, c_out = (new(N, u.H), new(N, u.H)) if lstm else (None, None)
    f, ll = new(N), new(N)
    P = native.padded(M)
    args_w, regs_w, AB = new(N, Q, 2, K), new(N, R, K), new(N, Q, 2, P)
    V = new(N, P, native.padded(K)) if save else None       # the sources, transposed, for the backward
    saved = new(N, u.plan.G, M, M) if save else None
    keep = new(N, 6 * u.H) if save and lstm else None
    regs_out, mem_out = new(N, R, M), new(N, M, M)
    X = u.X if save else [None] * 3
    ptrs = list(u.plan.addresses)
    for w, b in zip(u.Wf, u.bf):
        ptrs += [native.address(w), native.address(b)]
    ptrs += [native.address(x) for x in (regs, mem, h.contiguous() if lstm else None, c.contiguous() if lstm else None,
                               u.y, u.mask, u.pos, regs_out, mem_out, h_out, c_out, f, ll, args_w, regs_w, V, AB,
                               saved, keep, *X)]
    u.fn_forward(u.ints(t, renorm), (ctypes.c_void_p * len(ptrs))(*ptrs), ctypes.c_double(u.eps))
    return regs_out, mem_out, h_out, c_out, f, ll, args_w, regs_w, (args_w, regs_w, V, AB, saved, mem, mem_out, f, keep)


class Step(torch.autograd.Function):
    """(registers, memory, h, c[, *controller parameters]) -> (registers, memory, h, c, f, ll,
    args_w, regs_w) after timestep t. Only the first timestep's node takes the parameters: autograd
    reaches it last, and it returns their gradients over all timesteps (`Unroll.weight_grads`)."""

    @staticmethod
    def forward(ctx, unroll, t, renorm, clip_c, regs, mem, h, c, *params):
        ctx.unroll, ctx.t, ctx.clip_c, ctx.renorm, ctx.n_params = unroll, t, clip_c, renorm, len(params)
        ctx.set_materialize_grads(False)
        *outs, saved = _forward(unroll, t, regs, mem, h, c, renorm, save=True)
        ctx.save_for_backward(*[x for x in saved if x is not None])
        unroll.pending += 1
        if not unroll.lstm:                    # an MLP has no recurrent state
            outs[2] = outs[3] = regs.new_empty(0)
        return tuple(outs)

    @staticmethod
    def backward(ctx, d_regs, d_mem, d_h, d_c, d_f, d_ll, d_args_w, d_regs_w):
        u = ctx.unroll
        lstm = u.lstm
        args_w, regs_w, V, AB, saved, mem_in, mem_out, f, *keep = ctx.saved_tensors
        N, R, M = V.shape[0], regs_w.shape[1], u.M
        new = V.new_empty
        d_regs_in, d_mem_in = new(N, R, M), new(N, M, M)
        d_h_in, d_c_in = (new(N, u.H), new(N, u.H)) if lstm else (None, None)
        grads = [x if x is None else x.contiguous()
                 for x in (d_regs, d_mem, d_h if lstm else None, d_c if lstm else None, d_f, d_ll, d_args_w, d_regs_w)]
        ptrs = [*u.plan.addresses, *map(native.address, u.Wt)]
        ptrs += [native.address(x) for x in (args_w, regs_w, V, AB, saved, mem_in, mem_out, f, keep[0] if keep else None,
                                   u.y, u.mask, u.pos, *u.X, *grads, d_regs_in, d_mem_in, d_h_in, d_c_in, *u.D)]
        u.fn_backward(u.ints(ctx.t, ctx.renorm), (ctypes.c_void_p * len(ptrs))(*ptrs),
           ctypes.c_double(ctx.clip_c or 0.0), ctypes.c_double(u.eps))
        u.pending -= 1
        u.went_back.add(ctx.t)
        params = u.weight_grads() if u.pending == 0 else [None] * ctx.n_params
        return (None, None, None, None, d_regs_in, d_mem_in, d_h_in, d_c_in, *params)


def step(unroll, state, t, clip_c, renorm):
    """One fused timestep: -> (registers, memory, controller state, f, ll, args_w, regs_w)."""
    lstm = unroll.lstm
    if lstm:                                   # [S, B, H] -> [N, H]
        h, c = (x.reshape(unroll.N, unroll.H) for x in state.ctl)
    else:
        h = c = state.registers.new_empty(0)
    if unroll.grad:
        params = unroll.params if t == 0 else ()
        out = Step.apply(unroll, t, renorm, clip_c, state.registers, state.memory, h, c, *params)
        regs, mem, h, c, f, ll, args_w, regs_w = out
    else:
        regs, mem, h, c, f, ll, args_w, regs_w, _ = _forward(unroll, t, state.registers, state.memory,
                                                             h, c, renorm, save=False)
    return regs, mem, ((h, c) if lstm else ()), f, ll, args_w, regs_w
