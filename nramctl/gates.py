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


def _const(k):
    def fuzzy(A, B):
        out = torch.zeros_like(A)
        out[:, k % A.shape[-1]] = 1.0
        return out
    return fuzzy


def _binary(p, M):
    """[N] probability of 1 -> [N, M] distribution on {0, 1}."""
    return torch.nn.functional.pad(torch.stack([1 - p, p], -1), (0, M - 2))


def _at_least(X):
    """P(X >= c) for every c: suffix sums. [N, M] -> [N, M]."""
    return X.flip(-1).cumsum(-1).flip(-1)


def _above(X):
    """P(X > c): suffix sums that exclude c itself, computed without subtraction (stays >= 0)."""
    return torch.nn.functional.pad(_at_least(X)[:, 1:], (0, 1))


def _below(X):
    """P(X < c): prefix sums that exclude c itself."""
    return torch.nn.functional.pad(X.cumsum(-1)[:, :-1], (1, 0))


def _circulant(X, sign):
    """[N, M] -> [N, M, M] with out[n, i, c] = X[n, (c + sign * i) mod M]."""
    M = X.shape[-1]
    i = torch.arange(M, device=X.device)
    return X[:, (i[None, :] + sign * i[:, None]) % M]


def _add(A, B):   # P(a+b = c) = sum_a A[a] B[c-a]
    return torch.bmm(A[:, None, :], _circulant(B, -1))[:, 0]


def _sub(A, B):   # P(a-b = c) = sum_b B[b] A[c+b]
    return torch.bmm(B[:, None, :], _circulant(A, +1))[:, 0]


def _lt(A, B):    # P(a < b) = sum_a A[a] P(B > a)
    return _binary((A * _above(B)).sum(-1), A.shape[-1])


def _le(A, B):
    return _binary((A * _at_least(B)).sum(-1), A.shape[-1])


def _eq(A, B):
    return _binary((A * B).sum(-1), A.shape[-1])


def _min(A, B):   # P(min = c) = P(A=c) P(B>=c) + P(A>c) P(B=c)
    return A * _at_least(B) + _above(A) * B


def _max(A, B):   # P(max = c) = P(A=c) P(B<=c) + P(A<c) P(B=c)
    return A * (B.cumsum(-1)) + _below(A) * B


GATES = {
    "READ":  Gate("READ", 1, None, None, memory="read"),
    "ZERO":  Gate("ZERO", 0, lambda a, b, M: 0, _const(0)),
    "ONE":   Gate("ONE", 0, lambda a, b, M: 1 % M, _const(1)),
    "TWO":   Gate("TWO", 0, lambda a, b, M: 2 % M, _const(2)),
    "INC":   Gate("INC", 1, lambda a, b, M: (a + 1) % M, lambda A, B: torch.roll(A, 1, -1)),
    "ADD":   Gate("ADD", 2, lambda a, b, M: (a + b) % M, _add),
    "SUB":   Gate("SUB", 2, lambda a, b, M: (a - b) % M, _sub),
    "DEC":   Gate("DEC", 1, lambda a, b, M: (a - 1) % M, lambda A, B: torch.roll(A, -1, -1)),
    "LT":    Gate("LT", 2, lambda a, b, M: (a < b) * 1, _lt),
    "LE":    Gate("LE", 2, lambda a, b, M: (a <= b) * 1, _le),
    "EQ":    Gate("EQ", 2, lambda a, b, M: (a == b) * 1, _eq),
    "MIN":   Gate("MIN", 2, lambda a, b, M: a + (b - a) * (b < a), _min),
    "MAX":   Gate("MAX", 2, lambda a, b, M: a + (b - a) * (b > a), _max),
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
