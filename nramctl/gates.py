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
    grad: Optional[Callable] = None     # (A, B, dOut) -> (dA, dB): the fuzzy function's backward


# torch is imported inside the functions that compute: listing or validating gates (`nramctl --help`,
# `tasks`, `runs`) does not pay for importing it.

@functools.lru_cache(maxsize=None)
def _relations(M, dtype, device):
    """Fixed 0/1 matrices over {0..M-1}: rel[name][x, c] = [x name c], and the one-hot rows."""
    import torch
    i = torch.arange(M, device=device)
    x, c = i[:, None], i[None, :]
    eye = torch.eye(M, dtype=dtype, device=device)
    return {"<": (x < c).to(dtype), "<=": (x <= c).to(dtype), ">": (x > c).to(dtype),
            ">=": (x >= c).to(dtype), "one_hot": eye}


def _rel(X, name):
    return _relations(X.shape[-1], X.dtype, X.device)[name]


def _const(k):
    def fuzzy(A, B):
        return _rel(A, "one_hot")[k % A.shape[-1]].expand_as(A)
    return fuzzy


def _binary(s, A, B):
    """P(m = 1) = s [N], P(m = 0) = sum(A) sum(B) - s: the bilinear formula for a 0/1-valued gate
    (the mass sum(A) sum(B) is 1 on distributions; kept symbolic so gradients are the formula's)."""
    import torch
    total = A.sum(-1) * B.sum(-1)
    return torch.nn.functional.pad(torch.stack([total - s, s], -1), (0, A.shape[-1] - 2))


@functools.lru_cache(maxsize=None)
def _shifts(M, sign, device):
    """[M * M] index: entry r * M + c holds (c + sign * r) mod M."""
    import torch
    i = torch.arange(M, device=device)
    return ((i[None, :] + sign * i[:, None]) % M).flatten()


def _circulant(X, sign):
    """[N, M] -> [N, M, M] with out[n, r, c] = X[n, (c + sign * r) mod M], one index_select."""
    N, M = X.shape
    return X.index_select(1, _shifts(M, sign, X.device)).view(N, M, M)


def _add(A, B):   # P(a+b = c) = sum_a A[a] B[c-a]
    import torch
    return torch.bmm(A[:, None, :], _circulant(B, -1))[:, 0]


def _sub(A, B):   # P(a-b = c) = sum_b B[b] A[c+b]
    import torch
    return torch.bmm(B[:, None, :], _circulant(A, 1))[:, 0]


def _roll(X, k):  # INC (k = 1) and DEC (k = -1): out[c] = X[c - k]
    import torch
    return torch.roll(X, k, -1)


def _lt(A, B):    # P(a < b) = sum_{a,b} A[a] [a < b] B[b]
    return _binary(((A @ _rel(A, "<")) * B).sum(-1), A, B)


def _le(A, B):
    return _binary(((A @ _rel(A, "<=")) * B).sum(-1), A, B)


def _eq(A, B):
    return _binary((A * B).sum(-1), A, B)


def _min(A, B):   # P(min = c) = P(A=c) P(B>=c) + P(A>c) P(B=c)
    return A * (B @ _rel(B, ">=")) + (A @ _rel(A, ">")) * B


def _max(A, B):   # P(max = c) = P(A=c) P(B<=c) + P(A<c) P(B=c)
    return A * (B @ _rel(B, "<=")) + (A @ _rel(A, "<")) * B


# Backward of each fuzzy form, (A, B, dOut) -> (dA, dB), written out so that the machine's fused
# circuit (`circuit.py`) needs no autograd graph inside a step. The circulant gates are each other's
# adjoints; `tests/test_gates.py` checks every one against autograd of the brute-force formula.

def _add_grad(A, B, D):      # dA[a] = sum_b D[a+b] B[b]
    return _sub(D, B), _sub(D, A)


def _sub_grad(A, B, D):      # dA[a] = sum_b B[b] D[a-b];  dB[b] = sum_c D[c] A[c+b]
    return _add(B, D), _sub(A, D)


def _relation_grad(rel, rel_t):
    """Backward of _binary(((A @ rel) * B).sum(-1), A, B)."""
    def grad(A, B, D):
        d0, ds = D[:, :1], (D[:, 1] - D[:, 0])[:, None]
        return (d0 * B.sum(-1, keepdim=True) + ds * (B @ _rel(B, rel_t)),
                d0 * A.sum(-1, keepdim=True) + ds * (A @ _rel(A, rel)))
    return grad


def _eq_grad(A, B, D):
    d0, ds = D[:, :1], (D[:, 1] - D[:, 0])[:, None]
    return d0 * B.sum(-1, keepdim=True) + ds * B, d0 * A.sum(-1, keepdim=True) + ds * A


def _extreme_grad(ge, gt, ge_t, gt_t):
    """Backward of A * (B @ ge) + (A @ gt) * B (MIN: >=, >; MAX: <=, <)."""
    def grad(A, B, D):
        return (D * (B @ _rel(B, ge)) + (D * B) @ _rel(B, gt_t),
                (D * A) @ _rel(A, ge_t) + D * (A @ _rel(A, gt)))
    return grad


def _gate(name, arity, expr, fuzzy, grad=None):
    """A value gate from its integer expression in a, b and M (compiled once, exported as text)."""
    return Gate(name, arity, eval(f"lambda a, b, M: {expr}"), fuzzy, expr=expr, grad=grad)


GATES = {
    "READ":  Gate("READ", 1, None, None, memory="read"),
    "ZERO":  _gate("ZERO", 0, "0", _const(0)),
    "ONE":   _gate("ONE", 0, "1 % M", _const(1)),
    "TWO":   _gate("TWO", 0, "2 % M", _const(2)),
    "INC":   _gate("INC", 1, "(a + 1) % M", lambda A, B: _roll(A, 1), lambda A, B, D: (_roll(D, -1), None)),
    "ADD":   _gate("ADD", 2, "(a + b) % M", _add, _add_grad),
    "SUB":   _gate("SUB", 2, "(a - b) % M", _sub, _sub_grad),
    "DEC":   _gate("DEC", 1, "(a - 1) % M", lambda A, B: _roll(A, -1), lambda A, B, D: (_roll(D, 1), None)),
    "LT":    _gate("LT", 2, "(a < b) * 1", _lt, _relation_grad("<", ">")),
    "LE":    _gate("LE", 2, "(a <= b) * 1", _le, _relation_grad("<=", ">=")),
    "EQ":    _gate("EQ", 2, "(a == b) * 1", _eq, _eq_grad),
    "MIN":   _gate("MIN", 2, "a + (b - a) * (b < a)", _min, _extreme_grad(">=", ">", "<=", "<")),
    "MAX":   _gate("MAX", 2, "a + (b - a) * (b > a)", _max, _extreme_grad("<=", "<", ">=", ">")),
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
