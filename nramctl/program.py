"""Lookup-table controllers and hand-wired circuits.

A controller that reads only P(r_i = 0) sees, once discretized, one of 2^R zero patterns. A
`TableController` stores one logit vector per pattern, so it is both the form a trained MLP takes
after discretization and the way to wire a circuit by hand:

    rules = [({0: True, 1: True}, {"READ": ["r0"], "WRITE": ["r0", "READ"], "r1": "READ"}),
             ({1: False},         {"READ": ["r1"], "WRITE": ["ZERO", "READ"], "stop": True})]

Each rule is (condition, circuit); a condition maps register index -> "is zero"; the first rule whose
condition holds gives the circuit. A circuit names each gate's inputs (sources "r0".., or a gate
name, "READ#2" for a gate's second occurrence), registers' new sources (a register not named keeps
its value) and the stop decision. Pattern index = sum over registers of [r_i == 0] << i.
"""
import itertools

import torch
from torch import nn

from .machine import NRAM

CHOSEN, OTHER, STOP = 0.0, -60.0, 30.0


def _pattern_bits(R):
    return torch.tensor([1 << r for r in range(R)])


class TableController(nn.Module):
    """table: [S, 2^R, n_out] logits, one row per zero pattern."""

    recurrent = False

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def initial_state(self, S, B, like):
        return ()

    def forward(self, x, state):
        S, B, R = x.shape
        idx = ((x > 0.5).long() * _pattern_bits(R)).sum(-1)                 # [S, B]
        rows = self.table.gather(1, idx[:, :, None].expand(S, B, self.table.shape[-1]))
        return rows.to(x.dtype), state


def source_names(model):
    """Name of every source index: r0..r{R-1}, then gate names (with #k for repeated gates)."""
    names, seen = [f"r{r}" for r in range(model.R)], {}
    for g in model.gates:
        seen[g.name] = seen.get(g.name, 0) + 1
        names.append(g.name if seen[g.name] == 1 else f"{g.name}#{seen[g.name]}")
    return names


def output_names(model):
    """The name of every logit the head emits, in its layout: (gate, input, source) for each gate input,
    (register, source) for each new register, and "stop"."""
    names = source_names(model)
    gates, R = names[model.R:], model.R
    return ([(g, j, src) for g in gates for j in range(2) for src in names]
            + [(f"r{r}", src) for r in range(R) for src in names] + ["stop"])


def grow(trained, fresh):
    """Parameters for `fresh` (one seed) that keep every choice `trained` makes: the two models differ
    only in their gate sequences, and each head logit that names the same gate input (or register) and
    the same source in both takes the trained model's weights; logits of gates or sources new to `fresh`
    keep their fresh initialization, small beside a trained model's sharp choices. The rest of the
    controller (it reads only the R zero flags) is copied whole."""
    old = {name: i for i, name in enumerate(output_names(trained))}
    pairs = [(i, old[name]) for i, name in enumerate(output_names(fresh)) if name in old]
    new_idx, old_idx = (torch.tensor(v) for v in zip(*pairs))
    t = dict(trained.named_parameters())
    out = {}
    for key, p in fresh.named_parameters():
        w = p[:1].detach().clone()
        if key.startswith("controller.head."):
            w[..., new_idx] = t[key][:1, ..., old_idx].detach()
        else:
            w.copy_(t[key][:1].detach())
        out[key] = w
    return out


def circuit_logits(model, circuit):
    """One rule's circuit -> logit vector [n_out] in the model's layout."""
    R, Q, K = model.R, model.Q, model.K
    names = source_names(model)
    index = {n: i for i, n in enumerate(names)}
    args = torch.full((Q, 2, K), OTHER)
    args[:, :, 0] = CHOSEN                                # unnamed inputs read r0
    regs = torch.full((R, K), OTHER)
    regs[torch.arange(R), torch.arange(R)] = CHOSEN       # unnamed registers keep their value
    for key, value in circuit.items():
        if key == "stop":
            continue
        if key.startswith("r") and key[1:].isdigit():
            regs[int(key[1:])] = OTHER
            regs[int(key[1:]), index[value]] = CHOSEN
            continue
        i = names.index(key) - R
        for j, src in enumerate(value):
            if index[src] >= R + i:
                raise ValueError(f"gate {key} cannot read {src}: it comes later in the circuit")
            args[i, j] = OTHER
            args[i, j, index[src]] = CHOSEN
    stop = torch.tensor([STOP if circuit.get("stop") else -STOP])
    return torch.cat([args.flatten(), regs.flatten(), stop])


def wired(R, gates, rules, seeds=1, repeat=1):
    """An NRAM whose controller is the hand-wired rule table, replicated for `seeds` seeds."""
    model = NRAM(R, gates, repeat, "mlp", 1, list(range(seeds)))
    rows = []
    for pattern in range(1 << R):
        zero = {r: bool(pattern >> r & 1) for r in range(R)}
        rule = next((c for cond, c in rules if all(zero[r] == z for r, z in cond.items())), None)
        if rule is None:
            raise ValueError(f"no rule covers the zero pattern {zero}")
        rows.append(circuit_logits(model, rule))
    table = torch.stack(rows)[None].expand(seeds, -1, -1).contiguous()
    model.controller = TableController(table)
    return model


def zero_patterns(R):
    """The 2^R binary controller inputs [2^R, R]: row p has input r = bit r of p (1: register r is
    zero), the order of the rule table's rows."""
    patterns = torch.tensor(list(itertools.product([0, 1], repeat=R)), dtype=torch.float32)
    return patterns.flip(-1)


def table_from_controller(model):
    """The logit table of a feed-forward controller at its 2^R binary inputs: [S, 2^R, n_out].
    With discretized registers the controller only ever sees these inputs."""
    R = model.R
    x = zero_patterns(R)[None].expand(model.S, -1, -1).contiguous()
    with torch.no_grad():
        logits, _ = model.controller(x, model.controller.initial_state(model.S, 1 << R, x))
    return logits
