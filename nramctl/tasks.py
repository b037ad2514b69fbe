"""The paper's ten algorithmic tasks (SPEC section 4), each a pure generator.

A generator is `(difficulty, M, rng, k) -> (memory, target, mask)`: three [k, M] arrays holding k
independent examples of that difficulty, drawn with whole-array numpy operations, so that a training
batch costs a few calls instead of a Python loop per example. `memory` is the input, `target` holds
the expected value of every scored cell (0 elsewhere) and `mask` (bool) marks the scored cells. All randomness comes from the explicit `numpy.random.Generator`.
Pointers are absolute cell addresses; NULL is 0 and ends arrays and lists.
"""
import ast
from functools import lru_cache
from dataclasses import dataclass
from typing import Callable


class TaskError(ValueError):
    """An unknown task, or a difficulty that the memory size cannot hold."""


def _values(rng, shape, M, low=1, high=None):
    """Array elements drawn uniformly from low..high (default M - 1)."""
    return rng.integers(low, (M - 1 if high is None else high) + 1, size=shape)


def _blank(k, M):
    import numpy as np
    return np.zeros((k, M), dtype=np.int64), np.zeros((k, M), dtype=np.int64), np.zeros((k, M), dtype=bool)


def _rows(k):
    import numpy as np
    return np.arange(k)[:, None]


def _distinct(rng, k, count, among):
    """Per row, `count` distinct integers from 0..among-1 in random order: [k, count]. `among` is
    an int or one per row (at least `count` each)."""
    import numpy as np
    among = np.broadcast_to(np.asarray(among), (k,))
    keys = rng.random((k, int(among.max())))
    keys[np.arange(keys.shape[1]) >= among[:, None]] = 2.0      # past a row's range: never chosen
    return np.argsort(keys, axis=1)[:, :count]


def _places(rng, k, count, width, start, M):
    """Per row, random non-overlapping blocks of `width` cells inside start..M-1 (`start` an int or
    one per row), in random order."""
    import numpy as np
    start = np.broadcast_to(np.asarray(start), (k,))[:, None]
    free = M - start[:, 0] - count * width
    offsets = np.sort(_distinct(rng, k, count, free + count), axis=1)
    starts = start + offsets + np.arange(count) * (width - 1)
    return np.take_along_axis(starts, _distinct(rng, k, count, count), axis=1)


# Each generator: (n, M, rng, k) -> memory, target, mask as [k, M] arrays, k independent examples.

def access(n, M, rng, k):
    """| k | A[0] .. A[n-1] | NULL | ... |   ->  cell 0 := memory[k], 1 <= k <= n."""
    mem, target, mask = _blank(k, M)
    mem[:, 1:n + 1] = _values(rng, (k, n), M)
    mem[:, 0] = rng.integers(1, n + 1, size=k)
    target[:, 0], mask[:, 0] = mem[_rows(k)[:, 0], mem[:, 0]], True
    return mem, target, mask


def increment(n, M, rng, k):
    """| A[0] .. A[n-1] | NULL | ... |   ->  A[i] := (A[i] + 1) mod M in place."""
    mem, target, mask = _blank(k, M)
    mem[:, :n] = _values(rng, (k, n), M)
    target[:, :n], mask[:, :n] = (mem[:, :n] + 1) % M, True
    return mem, target, mask


def copy(n, M, rng, k):
    """| p | A[0] .. A[n-1] | free ... |, p = n + 1   ->  A copied to p .. p+n-1."""
    mem, target, mask = _blank(k, M)
    mem[:, 0], mem[:, 1:n + 1] = n + 1, _values(rng, (k, n), M)
    target[:, n + 1:2 * n + 1], mask[:, n + 1:2 * n + 1] = mem[:, 1:n + 1], True
    return mem, target, mask


def reverse(n, M, rng, k):
    """As Copy   ->  A reversed at p .. p+n-1."""
    mem, target, mask = copy(n, M, rng, k)
    target[:, n + 1:2 * n + 1] = mem[:, n:0:-1]
    return mem, target, mask


def swap(n, M, rng, k):
    """| p | q | A[0] .. A[n-1] | NULL | ... |, p != q addresses of array cells  ->  swap cells p, q."""
    mem, target, mask = _blank(k, M)
    mem[:, 2:n + 2] = _values(rng, (k, n), M)
    mem[:, :2] = 2 + _distinct(rng, k, 2, n)
    target[:, 2:n + 2], mask[:, 2:n + 2] = mem[:, 2:n + 2], True
    r = _rows(k)[:, 0]
    target[r, mem[:, 0]], target[r, mem[:, 1]] = mem[r, mem[:, 1]], mem[r, mem[:, 0]]
    return mem, target, mask


def permutation(n, M, rng, k):
    """| a | P[0] .. P[n-1] | A[0] .. A[n-1] | ... |, a -> A[0], P a permutation of 0..n-1
    ->  A[P[i]] written over P[i]."""
    import numpy as np
    mem, target, mask = _blank(k, M)
    P, A = _distinct(rng, k, n, n), _values(rng, (k, n), M)
    mem[:, 0], mem[:, 1:n + 1], mem[:, n + 1:2 * n + 1] = n + 1, P, A
    target[:, 1:n + 1], mask[:, 1:n + 1] = np.take_along_axis(A, P, axis=1), True
    return mem, target, mask


def _linked_list(n, M, rng, mem):
    """Per row, n nodes (next, value) at random places from cell 3 on; returns [k, n] node
    addresses in list order."""
    import numpy as np
    k, rows = len(mem), _rows(len(mem))
    nodes = _places(rng, k, n, 2, 3, M)
    mem[rows, nodes] = np.concatenate([nodes[:, 1:], np.zeros((k, 1), dtype=nodes.dtype)], axis=1)
    mem[rows, nodes + 1] = _values(rng, (k, n), M)
    mem[:, 0] = nodes[:, 0]
    return nodes


def listk(n, M, rng, k):
    """| head | k | out | ... nodes (next, value) ... |, 0 <= k < n
    ->  cell 2 := value of the node k hops after head."""
    mem, target, mask = _blank(k, M)
    nodes = _linked_list(n, M, rng, mem)
    r = _rows(k)[:, 0]
    mem[:, 1] = rng.integers(0, n, size=k)
    target[:, 2], mask[:, 2] = mem[r, nodes[r, mem[:, 1]] + 1], True
    return mem, target, mask


def _trash(M, rng, mem, nodes):
    """Fill every cell that is neither one of the first three nor a list node's with a random value."""
    import numpy as np
    k, rows = len(mem), _rows(len(mem))
    free = np.ones((k, M), dtype=bool)
    free[:, :3], free[rows, nodes], free[rows, nodes + 1] = False, False, False
    mem[free] = rng.integers(0, M, size=int(free.sum()))


def listsearch(n, M, rng, k):
    """| head | v | out | ... nodes (next, value), free cells hold random trash ... |
    ->  cell 2 := address of the first node whose value is v."""
    import numpy as np
    mem, target, mask = _blank(k, M)
    rows, r = _rows(k), _rows(k)[:, 0]
    nodes = _linked_list(n, M, rng, mem)
    _trash(M, rng, mem, nodes)
    values = mem[rows, nodes + 1]
    mem[:, 1] = values[r, rng.integers(0, n, size=k)]
    target[:, 2], mask[:, 2] = nodes[r, np.argmax(values == mem[:, 1:2], axis=1)], True
    return mem, target, mask


def merge(n, M, rng, k):
    """| a | b | o | A[0..n1-1] | G | B[0..n2-1] | G | out ... |, G = M - 1, n1 + n2 = n, A and B
    sorted with elements in 1..M-2   ->  the n merged elements in sorted order from o."""
    import numpy as np
    mem, target, mask = _blank(k, M)
    rows = _rows(k)
    n1 = rng.integers(0, n + 1, size=k)
    values = _values(rng, (k, n), M, high=M - 2)
    in_b = np.arange(n) >= n1[:, None]                 # the first n1 values are A's, the rest B's
    sorted_ab = np.sort(values + in_b * M, axis=1) - in_b * M     # each part sorted in place
    mem[:, 0], mem[:, 1], mem[:, 2] = 3, 4 + n1, 5 + n
    mem[rows, 3 + np.arange(n) + in_b] = sorted_ab
    mem[rows[:, 0], 3 + n1], mem[:, 4 + n] = M - 1, M - 1
    target[:, 5 + n:5 + 2 * n], mask[:, 5 + n:5 + 2 * n] = np.sort(values, axis=1), True
    return mem, target, mask


def _random_bst(values):
    """Insert `values` in order into a search tree: each node's parent (-1 for the root), side
    (1 left, 2 right) and depth, as lists."""
    parent, side, depth = [-1], [0], [0]
    left, right = {}, {}
    for i in range(1, len(values)):
        j = 0
        while True:
            children, s = (left, 1) if values[i] < values[j] else (right, 2)
            if j not in children:
                children[j] = i
                parent.append(j), side.append(s), depth.append(depth[j] + 1)
                break
            j = children[j]
    return parent, side, depth


def walkbst(n, M, rng, k):
    """| root | out | d_1 .. d_k | NULL | ... nodes (value, left, right) ... |, d_i = 1 left, 2 right
    ->  cell 1 := value of the node at the end of the path."""
    import numpy as np
    mem, target, mask = _blank(k, M)
    rows, r = _rows(k), _rows(k)[:, 0]
    values = 1 + _distinct(rng, k, n, M - 1)         # inserted in random order: a random BST shape
    trees = [_random_bst(v) for v in values.tolist()]
    parent = np.array([p for p, _, _ in trees]).reshape(k, n)
    side = np.array([s for _, s, _ in trees]).reshape(k, n)
    depth = np.array([d for _, _, d in trees]).reshape(k, n)
    length = rng.integers(0, depth.max(axis=1) + 1)   # the path's length, then its end node
    keys = rng.random((k, n)) + (depth != length[:, None])
    end = np.argmin(keys, axis=1)
    at = end.copy()
    for step in range(int(length.max()), 0, -1):     # climb to the root, writing directions
        climbing = length >= step
        mem[r[climbing], 1 + step] = side[r[climbing], at[climbing]]
        at[climbing] = parent[r[climbing], at[climbing]]
    addr = _places(rng, k, n, 3, 3 + length, M)
    mem[rows, addr] = values
    has_parent = parent >= 0
    child_cell = addr[rows, np.maximum(parent, 0)] + side      # the parent's left or right cell
    mem[np.broadcast_to(rows, (k, n))[has_parent], child_cell[has_parent]] = addr[has_parent]
    mem[:, 0] = addr[:, 0]
    target[:, 1], mask[:, 1] = values[r, end], True
    return mem, target, mask


@dataclass(frozen=True)
class Task:
    name: str
    generate: Callable           # (difficulty, M, rng, k) -> (memory, target, mask), each [k, M]
    min_M: Callable              # difficulty -> smallest memory that holds it
    min_difficulty: int

    def max_difficulty(self, M):
        """The largest difficulty that M cells hold (0 if none)."""
        n = self.min_difficulty
        while self.min_M(n + 1) <= M:
            n += 1
        return n if self.min_M(n) <= M else 0

    def check(self, n, M):
        if n < self.min_difficulty:
            raise TaskError(f"{self.name}: difficulty {n} is below its minimum {self.min_difficulty}")
        if self.min_M(n) > M:
            raise TaskError(f"{self.name}: M={M} is too small for difficulty {n} "
                            f"(needs M >= {self.min_M(n)})")

    def batch(self, n, M, rng, k):
        """k independent examples of difficulty n: memory, target, mask as [k, M] arrays."""
        self.check(n, M)
        return self.generate(n, M, rng, k)

    def sample(self, n, M, rng):
        """One example: memory, target, mask as [M] arrays."""
        return tuple(a[0] for a in self.batch(n, M, rng, 1))


TASKS = {t.name: t for t in [
    Task("access", access, lambda n: n + 2, 1),
    Task("increment", increment, lambda n: n + 1, 1),
    Task("copy", copy, lambda n: 2 * n + 1, 1),
    Task("reverse", reverse, lambda n: 2 * n + 1, 1),
    Task("swap", swap, lambda n: n + 3, 2),
    Task("permutation", permutation, lambda n: 2 * n + 1, 1),
    Task("listk", listk, lambda n: 2 * n + 3, 1),
    Task("listsearch", listsearch, lambda n: 2 * n + 3, 1),
    Task("merge", merge, lambda n: 2 * n + 5, 1),
    Task("walkbst", walkbst, lambda n: 4 * n + 2, 1),
]}


def task(name):
    """The task of that name, or a task's stepping stone named TASK:STONE (`stones.py`)."""
    key = str(name).lower()
    base = key.split(":", 1)[0]
    if base != key and base in TASKS:
        from .stones import stone
        return stone(base, key).task
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv,
            ast.USub, ast.Constant, ast.Name, ast.Load)


T_MAX = 10_000_000     # timesteps: beyond this a rule is a typo (the discrete executor at n = 10^6 uses 2*10^6)


def timestep_rule(expr):
    """Compile a rule such as '2*n+1' into n -> T (an int from 1 to T_MAX); only n, integers and
    + - * //. A rule that divides by zero or exceeds T_MAX at some n raises TaskError there.
    Compiled once per text: training draws a batch per seed and step with it."""
    return _compiled_rule(str(expr))


@lru_cache(maxsize=256)
def _compiled_rule(expr):
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise TaskError(f"bad timestep rule {expr[:60]!r}: write an expression in n such as '2*n+1'")
    for node in ast.walk(tree):
        bad = not isinstance(node, _ALLOWED) or (isinstance(node, ast.Name) and node.id != "n") \
            or (isinstance(node, ast.Constant) and type(node.value) is not int)
        if bad:
            raise TaskError(f"bad timestep rule {expr!r}: only n, integers and + - * // are allowed")
    code = compile(tree, "<T rule>", "eval")

    def rule(n):
        try:
            T = int(eval(code, {"__builtins__": {}}, {"n": int(n)}))
        except ZeroDivisionError:
            raise TaskError(f"timestep rule {expr!r} divides by zero at n={n}") from None
        if T > T_MAX:
            raise TaskError(f"timestep rule {expr!r} gives T={T:,} at n={n}; at most {T_MAX:,} allowed")
        return max(1, T)
    return rule
