"""The discretized machine (SPEC section 3), batched over examples.

Every softmax becomes a one-hot argmax, so registers and cells hold plain integers and each gate
calls its own integer function from `gates.GATES`: the fuzzy and discrete modes share one definition
of every gate. The controller still runs as a network here; see `executor.py` for the lookup-table
executor whose cost per step does not depend on M.

Shapes: N rows (= S seeds x B examples), R registers, Q gates, K = R + Q, M cells.
"""
from typing import NamedTuple, Optional

import torch

from .machine import stops_at


class DiscreteStep(NamedTuple):
    args: torch.Tensor            # [N, Q, 2] chosen source index of each gate input
    regs: torch.Tensor            # [N, R] chosen source index of each new register
    stop: torch.Tensor            # [N] f_t
    values: torch.Tensor          # [N, K] the registers, then every gate's output
    memory: torch.Tensor          # [N, M] memory after the step


def apply_circuit(gates, M, registers, memory, args):
    """Run the gates in order on integers. registers [N, R], memory [N, M], args [N, Q, 2]
    -> (values [N, R + Q], memory [N, M])."""
    N, R = registers.shape
    values = torch.cat([registers, registers.new_zeros(N, len(gates))], 1)
    rows = torch.arange(N)
    for i, g in enumerate(gates):
        a = values[rows, args[:, i, 0]]
        b = values[rows, args[:, i, 1]]
        if g.memory == "read":
            out = memory[rows, a]
        elif g.memory == "write":
            memory = memory.clone()
            memory[rows, a] = b
            out = b
        else:
            out = torch.as_tensor(g.int_fn(a, b, M), dtype=torch.long).expand(N)
        values[:, R + i] = out
    return values, memory


@torch.no_grad()
def discrete_run(model, memory, T, trace=False):
    """Run the discretized machine. memory [N, M] long, T [N] long ->
    (memory at the halting step [N, M], halting step [N], trace or None).
    An example halts at the first t with f_t > 0.5, else after T_n steps."""
    N, M = memory.shape
    regs = memory.new_zeros(N, model.R)
    ctl = model.controller.initial_state(model.S, N // model.S, model.arg_mask)
    halted = torch.zeros(N, dtype=torch.bool)
    halt = T - 1
    steps = [] if trace else None
    for t in range(int(T.max())):
        ch, ctl = model.choose((regs == 0).to(model.arg_mask.dtype), ctl)
        args, reg_src = ch.args.argmax(-1), ch.regs.argmax(-1)
        values, new_mem = apply_circuit(model.gates, M, regs, memory, args)
        f = torch.sigmoid(ch.stop)
        live = ~halted
        memory = torch.where(live[:, None], new_mem, memory)
        regs = torch.where(live[:, None], values.gather(1, reg_src), regs)
        now = live & stops_at(f, t, T)
        halt = torch.where(now, t, halt)
        halted |= now
        if trace:
            steps.append(DiscreteStep(args, reg_src, f, values, memory.clone()))
        if bool(halted.all()):
            break
    return memory, halt, steps
