"""The constant-time discrete executor: a trained model run as an ordinary integer program.

Registers and cells are Python ints; memory is a list (or a dict for sparse, huge memories, where
unwritten cells read 0); each gate calls its integer function from `gates.GATES`; READ and WRITE touch
one cell. The controller's decisions are argmaxes. For a feed-forward (MLP) controller, whose only
inputs are the R bits [r_i == 0], they are precomputed into a lookup table over the 2^R patterns, so
execution needs no neural network; an LSTM controller still runs its network once per step. Either
way the cost of a step does not depend on M.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch

from .program import table_from_controller


@dataclass(frozen=True)
class Choice:
    """One timestep's discrete decisions: sources of every gate input and register, and stop."""
    args: Tuple[Tuple[int, int], ...]    # per gate: (source of a, source of b)
    regs: Tuple[int, ...]               # per register: its new source
    stop: bool


def choice_from_logits(model, logits):
    """One logit vector [n_out] -> Choice (argmax of each masked softmax; stop when f > 0.5)."""
    Q, K, R = model.Q, model.K, model.R
    n_args = 2 * Q * K
    args = (logits[:n_args].view(Q, 2, K) + model.arg_mask).argmax(-1).tolist()
    regs = logits[n_args:-1].view(R, K).argmax(-1).tolist()
    return Choice(tuple(map(tuple, args)), tuple(regs), bool(logits[-1] > 0))


class Program:
    """A model's decisions as a program: a lookup table for an MLP, the network for an LSTM."""

    def __init__(self, model):
        self.model, self.gates, self.R = model, model.gates, model.R
        self.table = None
        if not model.controller.recurrent:
            logits = table_from_controller(model)[0]
            self.table: List[Choice] = [choice_from_logits(model, row) for row in logits]

    def start(self):
        """Controller state for a new example."""
        if self.table is not None:
            return None
        return self.model.controller.initial_state(1, 1, self.model.arg_mask)

    def decide(self, pattern, state):
        """(Choice, new state) for the zero pattern sum_i [r_i == 0] << i."""
        if self.table is not None:
            return self.table[pattern], state
        x = torch.tensor([[[float(pattern >> r & 1) for r in range(self.R)]]])
        with torch.no_grad():
            logits, state = self.model.controller(x, state)
        return choice_from_logits(self.model, logits[0, 0]), state


def execute(program, memory, M, T, trace=None):
    """Run one example. memory: a list of M ints (changed in place) or a dict (sparse: missing cells
    are 0). Halts after the first step whose stop decision is set, else after T steps.
    Returns the halting step (0-based). `trace`, a list, receives (pattern, Choice) per step."""
    gates, R = program.gates, program.R
    sparse = isinstance(memory, dict)
    regs = [0] * R
    state = program.start()
    for t in range(T):
        pattern = 0
        for r in range(R):
            if regs[r] == 0:
                pattern |= 1 << r
        choice, state = program.decide(pattern, state)
        if trace is not None:
            trace.append((pattern, choice))
        values = list(regs)
        for g, (ia, ib) in zip(gates, choice.args):
            a, b = values[ia], values[ib]
            if g.memory == "read":
                out = memory.get(a, 0) if sparse else memory[a]
            elif g.memory == "write":
                memory[a] = b
                out = b
            else:
                out = g.int_fn(a, b, M)
            values.append(out)
        regs = [values[s] for s in choice.regs]
        if choice.stop:
            return t
    return T - 1
