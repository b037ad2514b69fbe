"""The NRAM gates (modules), each defined once by its integer function.

A gate is an integer function m(a, b) on {0..M-1}. Its fuzzy version acts on distributions:

    P(m(A, B) = c) = sum_{a,b} P(A=a) P(B=b) [m(a, b) = c]

The fuzzy functions below are fast structured forms of that formula (shifts, cumulative sums,
circulant products); `tests/test_gates.py` checks each one against the brute-force sum.
The integer functions are written with operators only (`+ - % < *`), so the same function runs on
Python ints (the discrete executor) and on integer tensors (the batched discretized machine).

READ and WRITE touch memory and are applied by the machine itself; their meaning:
READ(p) = memory[p]; WRITE(p, a) sets memory[p] = a and returns a.
"""
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch


class GateError(ValueError):
    """An unknown gate name."""


@dataclass(frozen=True)
class Gate:
    name: str
    arity: int                         # how many inputs the gate reads: 0, 1 or 2
    int_fn: Optional[Callable]          # (a, b, M) -> int; None for READ / WRITE
    fuzzy: Optional[Callable]           # (A [N, M], B [N, M]) -> [N, M]; None for READ / WRITE
    memory: str = ""                    # "read" or "write" for the memory gates
    expr: str = ""                      # the integer function as an expression in a, b, M


@functools.lru_cache(maxsize=None)
def _relations(M, dtype, device):
    """Fixed 0/1 matrices over {0..M-1}: rel[name][x, c] = [x name c], and the one-hot rows."""
    i = torch.arange(M, device=device)
    x, c = i[:, None], i[None, :]
    eye = torch.eye(M, dtype=dtype, device=device)
    return {"<": (x < c).to(dtype), "<=": (x <= c).to(dtype), ">": (x > c).to(dtype),
            ">=": (x >= c).to(dtype), "one_hot": eye, "flip01": eye[1] - eye[0]}


def _rel(X, name):
    return _relations(X.shape[-1], X.dtype, X.device)[name]


def _const(k):
    def fuzzy(A, B):
        return _rel(A, "one_hot")[k % A.shape[-1]].expand_as(A)
    return fuzzy


def _binary(p, X):
    """[N] probability of 1 -> [N, M] distribution on {0, 1}."""
    return _rel(X, "one_hot")[0] + p[:, None] * _rel(X, "flip01")


def _windows(X):
    """[N, M] -> [N, M+1, M] view with out[n, s, c] = X[n, (s + c) mod M]: no gather, no copy."""
    return torch.cat([X, X], -1).unfold(-1, X.shape[-1], 1)


def _add(A, B):   # P(a+b = c) = sum_a A[a] B[c-a]; row a of the circulant is window M - a
    return torch.bmm(A[:, None, :], _windows(B)[:, 1:].flip(1))[:, 0]


def _sub(A, B):   # P(a-b = c) = sum_b B[b] A[c+b]; row b is window b (copied: bmm is slow on views)
    return torch.bmm(B[:, None, :], _windows(A)[:, :-1].contiguous())[:, 0]


def _lt(A, B):    # P(a < b) = sum_{a,b} A[a] [a < b] B[b]
    return _binary(((A @ _rel(A, "<")) * B).sum(-1), A)


def _le(A, B):
    return _binary(((A @ _rel(A, "<=")) * B).sum(-1), A)


def _eq(A, B):
    return _binary((A * B).sum(-1), A)


def _min(A, B):   # P(min = c) = P(A=c) P(B>=c) + P(A>c) P(B=c)
    return A * (B @ _rel(B, ">=")) + (A @ _rel(A, ">")) * B


def _max(A, B):   # P(max = c) = P(A=c) P(B<=c) + P(A<c) P(B=c)
    return A * (B @ _rel(B, "<=")) + (A @ _rel(A, "<")) * B


def _gate(name, arity, expr, fuzzy):
    """A value gate from its integer expression in a, b and M (compiled once, exported as text)."""
    return Gate(name, arity, eval(f"lambda a, b, M: {expr}"), fuzzy, expr=expr)


GATES = {
    "READ":  Gate("READ", 1, None, None, memory="read"),
    "ZERO":  _gate("ZERO", 0, "0", _const(0)),
    "ONE":   _gate("ONE", 0, "1 % M", _const(1)),
    "TWO":   _gate("TWO", 0, "2 % M", _const(2)),
    "INC":   _gate("INC", 1, "(a + 1) % M", lambda A, B: torch.roll(A, 1, -1)),
    "ADD":   _gate("ADD", 2, "(a + b) % M", _add),
    "SUB":   _gate("SUB", 2, "(a - b) % M", _sub),
    "DEC":   _gate("DEC", 1, "(a - 1) % M", lambda A, B: torch.roll(A, -1, -1)),
    "LT":    _gate("LT", 2, "(a < b) * 1", _lt),
    "LE":    _gate("LE", 2, "(a <= b) * 1", _le),
    "EQ":    _gate("EQ", 2, "(a == b) * 1", _eq),
    "MIN":   _gate("MIN", 2, "a + (b - a) * (b < a)", _min),
    "MAX":   _gate("MAX", 2, "a + (b - a) * (b > a)", _max),
    "WRITE": Gate("WRITE", 2, None, None, memory="write"),
}
PAPER_GATES = list(GATES)       # the paper's 14 gates in the paper's order
ALIASES = {"LESS-THAN": "LT", "LESS-OR-EQUAL": "LE", "EQUALITY": "EQ", "LESS-OR-EQUAL-THAN": "LE"}


def gate(name):
    """Look a gate up by name (case-insensitive, paper's long names accepted)."""
    key = ALIASES.get(str(name).upper(), str(name).upper())
    if key not in GATES:
        raise GateError(f"unknown gate {name!r}; valid gates: {', '.join(GATES)}")
    return GATES[key]


def circuit(names, repeat=1):
    """The gate sequence of a machine: `names` repeated `repeat` times."""
    if repeat < 1:
        raise GateError(f"gate repetitions must be >= 1, got {repeat}")
    if not names:
        raise GateError("the gate list is empty")
    return [gate(n) for n in names] * repeat
