"""One timestep's circuit as a single autograd node: forward and a hand-written backward.

Forward (SPEC section 1), for N rows, R registers, Q gates, K = R + Q sources, M cells:

    W = softmax(arg logits) [N, Q, 2, K],  U = softmax(register logits) [N, R, K]
    V[:, :R] = registers;  gate i: (A, B) = W[:, i, :, :R+i] @ V[:, :R+i],  V[:, R+i] = gate_i(A, B)
    new registers = U @ V;  memory changes at each WRITE;  both renormalized to sum 1

Recorded op by op, a step is a few hundred small autograd nodes (mixing, stacking, views) whose
bookkeeping costs more than their arithmetic. Here the forward runs without a graph into one buffer V,
and the backward walks the gates in reverse with each gate's own `grad`, accumulating dV in place;
the weight gradients of all gates come out of one batched product at the end. The training
techniques that act on a step's edges are part of the node: the activation clip (gradients of the
logits, registers and memory clamped to [-c, c]) and the renormalization (identity backward).
`tests/test_reference.py` checks loss and gradients against a plain autograd reference.
"""
from typing import NamedTuple

import torch

from . import native


class Forward(NamedTuple):
    registers: torch.Tensor      # [N, R, M] new registers
    memory: torch.Tensor         # [N, M, M] memory after the step
    args_w: torch.Tensor         # [N, Q, 2, K] gate-input weights
    regs_w: torch.Tensor         # [N, R, K] register weights
    values: torch.Tensor         # [N, K, M] registers, then each gate's output
    inputs: list                 # per gate: [N, arity, M] its inputs (A, then B), None for a constant
    memories: list               # memory as each READ / WRITE saw it, in circuit order


def _split(ab):
    """A gate's inputs [N, arity, M] -> (A, B), B None for a one-input gate."""
    A, *B = ab.unbind(1)
    return A, (B[0] if B else None)


def forward(gates, arg_logits, reg_logits, registers, memory, renorm=True):
    """The circuit without autograd; every intermediate the backward pass needs.
    (Per-gate views come from one unbind: tuple indexing in the loop would cost more than the math.)"""
    N, R, M = registers.shape
    args_w, regs_w = torch.softmax(arg_logits, -1), torch.softmax(reg_logits, -1)
    V = registers.new_empty(N, R + len(gates), M)
    V[:, :R] = registers
    out, W = V.unbind(1)[R:], args_w.unbind(1)
    inputs, memories = [], []
    for i, g in enumerate(gates):
        A = B = ab = None
        if g.arity:
            ab = torch.bmm(W[i][:, :g.arity, :R + i], V[:, :R + i])
            A, B = _split(ab)
        inputs.append(ab)
        if g.memory:
            memories.append(memory)
        if g.memory == "read":
            out[i].copy_(torch.bmm(A[:, None, :], memory)[:, 0])
        elif g.memory == "write":
            memory = torch.addcmul(memory, A[:, :, None], B[:, None, :] - memory)
            out[i].copy_(B)
        else:
            out[i].copy_(g.fuzzy(A if A is not None else out[i], B))
    new_regs = torch.bmm(regs_w, V)
    if renorm:
        new_regs, memory = new_regs / new_regs.sum(-1, keepdim=True), memory / memory.sum(-1, keepdim=True)
    return Forward(new_regs, memory, args_w, regs_w, V, inputs, memories)


def _softmax_grad(w, dw, c):
    d = w * (dw - (w * dw).sum(-1, keepdim=True))
    return d.clamp(-c, c) if c else d


class Circuit(torch.autograd.Function):
    """(arg logits [N, Q, 2, K], register logits [N, R, K], registers [N, R, M], memory [N, M, M])
    -> (registers, memory, args_w, regs_w) after one timestep. Runs the compiled kernel
    (`native.py`) where it is available, else the PyTorch code in this file."""

    @staticmethod
    def forward(ctx, arg_logits, reg_logits, registers, memory, gates, clip_c, renorm):
        ctx.gates, ctx.clip_c, ctx.M = gates, clip_c, registers.shape[-1]
        ctx.set_materialize_grads(False)
        ctx.plan = native.plan(gates) if native.usable(arg_logits, reg_logits, registers, memory) else None
        if ctx.plan:
            regs, mem, args_w, regs_w, V, AB, saved, mem_in = native.forward(
                ctx.plan, arg_logits, reg_logits, registers, memory, renorm, save=any(ctx.needs_input_grad))
            ctx.save_for_backward(args_w, regs_w, V, AB, saved, mem_in)
            return regs, mem, args_w, regs_w
        out = forward(gates, arg_logits, reg_logits, registers, memory, renorm)
        ctx.inputs, ctx.memories = out.inputs, out.memories
        ctx.save_for_backward(out.args_w, out.regs_w, out.values)
        return out.registers, out.memory, out.args_w, out.regs_w

    @staticmethod
    def backward(ctx, d_regs, d_mem, d_args_w, d_regs_w):
        if ctx.plan:
            return (*native.backward(ctx.plan, ctx.M, *ctx.saved_tensors, d_regs, d_mem, d_args_w, d_regs_w,
                                     ctx.clip_c), None, None, None)
        args_w, regs_w, V = ctx.saved_tensors
        memories = list(ctx.memories)
        c, (N, R, K), M = ctx.clip_c, regs_w.shape, V.shape[-1]
        Q = K - R
        if d_regs is None:
            d_regs = V.new_zeros(N, R, M)
        if d_mem is None:
            d_mem = V.new_zeros(N, M, M)
        d_regs = d_regs.clamp(-c, c) if c else d_regs
        d_mem = d_mem.clamp(-c, c) if c else d_mem.clone()
        dV = torch.bmm(regs_w.transpose(1, 2), d_regs)              # [N, K, M], from the registers only
        dU = torch.bmm(d_regs, V.transpose(1, 2))
        # source k's gradient from the gates that read it, sum_j WT[:, k, j] dAB[:, j] over the later
        # gates' input slots j, gathered when its gate is reached: in-place accumulation into strided
        # views of dV falls back to a per-example loop on CPU
        WT = args_w.permute(0, 3, 1, 2).reshape(N, K, 2 * Q)
        dAB = V.new_zeros(N, 2 * Q, M)                               # slot 2i + a: gate i's input a
        slots = dAB.unbind(1)
        for i in reversed(range(Q)):
            g = ctx.gates[i]
            if not g.arity:
                continue
            k = R + i
            dout = torch.baddbmm(dV[:, k:k + 1], WT[:, k:k + 1, 2 * i + 2:], dAB[:, 2 * i + 2:])[:, 0]
            A, B = _split(ctx.inputs[i])
            if g.memory == "read":
                mem = memories.pop()
                dA, dB = torch.bmm(mem, dout[:, :, None])[:, :, 0], None
                d_mem.baddbmm_(A[:, :, None], dout[:, None, :])
            elif g.memory == "write":
                mem = memories.pop()
                dA = (d_mem * (B[:, None, :] - mem)).sum(-1)
                dB = torch.bmm(A[:, None, :], d_mem)[:, 0] + dout
                d_mem = d_mem * (1 - A)[:, :, None]
            else:
                dA, dB = g.grad(A, B, dout)
            slots[2 * i].copy_(dA)
            if dB is not None:
                slots[2 * i + 1].copy_(dB)
        d_registers = torch.baddbmm(dV[:, :R], WT[:, :R], dAB)
        # all gates' weight gradients at once; entries of masked sources are multiplied by w = 0 below
        dW = torch.bmm(dAB, V.transpose(1, 2)).view(N, Q, 2, K)
        if d_args_w is not None:
            dW = dW + d_args_w
        if d_regs_w is not None:
            dU = dU + d_regs_w
        return (_softmax_grad(args_w, dW, c), _softmax_grad(regs_w, dU, c), d_registers, d_mem,
                None, None, None)


def circuit(gates, arg_logits, reg_logits, registers, memory, clip_c=None, renorm=True):
    """One timestep's circuit through the fused node: (registers, memory, args_w, regs_w)."""
    return Circuit.apply(arg_logits, reg_logits, registers, memory, gates, clip_c, renorm)
