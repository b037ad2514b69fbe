"""The paper's ten algorithmic tasks (SPEC section 4), each a pure generator.

A generator is `(difficulty, M, rng) -> (memory, target, mask)`: three integer arrays of length M.
`memory` is the input, `target` holds the expected value of every scored cell (0 elsewhere) and `mask`
(bool) marks the scored cells. All randomness comes from the explicit `numpy.random.Generator`.
Pointers are absolute cell addresses; NULL is 0 and ends arrays and lists.
"""
import ast
from dataclasses import dataclass
from typing import Callable


class TaskError(ValueError):
    """An unknown task, or a difficulty that the memory size cannot hold."""


def _values(rng, n, M, low=1, high=None):
    """n array elements drawn uniformly from low..high (default M - 1)."""
    return rng.integers(low, (M - 1 if high is None else high) + 1, size=n)


def _blank(M):
    import numpy as np
    return np.zeros(M, dtype=np.int64), np.zeros(M, dtype=np.int64), np.zeros(M, dtype=bool)


def _places(rng, count, width, start, M):
    """Random, non-overlapping blocks of `width` cells inside start..M-1, in random order."""
    import numpy as np
    free = M - start - count * width
    offsets = np.sort(rng.choice(free + count, size=count, replace=False))
    starts = start + offsets + np.arange(count) * (width - 1)
    return rng.permutation(starts)


def access(n, M, rng):
    """| k | A[0] .. A[n-1] | NULL | ... |   ->  cell 0 := memory[k], 1 <= k <= n."""
    mem, target, mask = _blank(M)
    mem[1:n + 1] = _values(rng, n, M)
    mem[0] = rng.integers(1, n + 1)
    target[0], mask[0] = mem[mem[0]], True
    return mem, target, mask


def increment(n, M, rng):
    """| A[0] .. A[n-1] | NULL | ... |   ->  A[i] := (A[i] + 1) mod M in place."""
    mem, target, mask = _blank(M)
    mem[:n] = _values(rng, n, M)
    target[:n], mask[:n] = (mem[:n] + 1) % M, True
    return mem, target, mask


def copy(n, M, rng):
    """| p | A[0] .. A[n-1] | free ... |, p = n + 1   ->  A copied to p .. p+n-1."""
    mem, target, mask = _blank(M)
    mem[0], mem[1:n + 1] = n + 1, _values(rng, n, M)
    target[n + 1:2 * n + 1], mask[n + 1:2 * n + 1] = mem[1:n + 1], True
    return mem, target, mask


def reverse(n, M, rng):
    """As Copy   ->  A reversed at p .. p+n-1."""
    mem, target, mask = copy(n, M, rng)
    target[n + 1:2 * n + 1] = mem[1:n + 1][::-1]
    return mem, target, mask


def swap(n, M, rng):
    """| p | q | A[0] .. A[n-1] | NULL | ... |, p != q addresses of array cells  ->  swap cells p, q."""
    mem, target, mask = _blank(M)
    mem[2:n + 2] = _values(rng, n, M)
    mem[:2] = 2 + rng.choice(n, size=2, replace=False)
    target[2:n + 2], mask[2:n + 2] = mem[2:n + 2], True
    target[mem[0]], target[mem[1]] = mem[mem[1]], mem[mem[0]]
    return mem, target, mask


def permutation(n, M, rng):
    """| a | P[0] .. P[n-1] | A[0] .. A[n-1] | ... |, a -> A[0], P a permutation of 0..n-1
    ->  A[P[i]] written over P[i]."""
    mem, target, mask = _blank(M)
    P, A = rng.permutation(n), _values(rng, n, M)
    mem[0], mem[1:n + 1], mem[n + 1:2 * n + 1] = n + 1, P, A
    target[1:n + 1], mask[1:n + 1] = A[P], True
    return mem, target, mask


def _linked_list(n, M, rng, mem):
    """n nodes (next, value) at random places from cell 3 on; returns node addresses in list order."""
    import numpy as np
    nodes = _places(rng, n, 2, 3, M)
    mem[nodes] = np.append(nodes[1:], 0)
    mem[nodes + 1] = _values(rng, n, M)
    mem[0] = nodes[0]
    return nodes


def listk(n, M, rng):
    """| head | k | out | ... nodes (next, value) ... |, 0 <= k < n
    ->  cell 2 := value of the node k hops after head."""
    mem, target, mask = _blank(M)
    nodes = _linked_list(n, M, rng, mem)
    mem[1] = rng.integers(0, n)
    target[2], mask[2] = mem[nodes[mem[1]] + 1], True
    return mem, target, mask


def listsearch(n, M, rng):
    """| head | v | out | ... nodes (next, value), free cells hold random trash ... |
    ->  cell 2 := address of the first node whose value is v."""
    import numpy as np
    mem, target, mask = _blank(M)
    used = np.zeros(M, dtype=bool)
    used[:3] = True
    nodes = _linked_list(n, M, rng, mem)
    used[nodes], used[nodes + 1] = True, True
    mem[~used] = rng.integers(0, M, size=int((~used).sum()))
    mem[1] = mem[nodes[rng.integers(0, n)] + 1]
    first = next(a for a in nodes if mem[a + 1] == mem[1])
    target[2], mask[2] = first, True
    return mem, target, mask


def merge(n, M, rng):
    """| a | b | o | A[0..n1-1] | G | B[0..n2-1] | G | out ... |, G = M - 1, n1 + n2 = n, A and B
    sorted with elements in 1..M-2   ->  the n merged elements in sorted order from o."""
    import numpy as np
    mem, target, mask = _blank(M)
    n1 = int(rng.integers(0, n + 1))
    A, B = np.sort(_values(rng, n1, M, high=M - 2)), np.sort(_values(rng, n - n1, M, high=M - 2))
    a, b = 3, 4 + n1
    o = b + len(B) + 1
    mem[:3] = a, b, o
    mem[a:a + n1], mem[a + n1] = A, M - 1
    mem[b:b + len(B)], mem[b + len(B)] = B, M - 1
    target[o:o + n], mask[o:o + n] = np.sort(np.concatenate([A, B])), True
    return mem, target, mask


def walkbst(n, M, rng):
    """| root | out | d_1 .. d_k | NULL | ... nodes (value, left, right) ... |, d_i = 1 left, 2 right
    ->  cell 1 := value of the node at the end of the path."""
    import numpy as np
    mem, target, mask = _blank(M)
    values = rng.choice(np.arange(1, M), size=n, replace=False)
    left, right, depth = [-1] * n, [-1] * n, [0] * n
    for i in range(1, n):                       # insert in random order: a random BST shape
        j = 0
        while True:
            side = left if values[i] < values[j] else right
            if side[j] < 0:
                side[j], depth[i] = i, depth[j] + 1
                break
            j = side[j]
    k = int(rng.integers(0, max(depth) + 1))
    end = int(rng.choice([i for i in range(n) if depth[i] == k]))
    path, j = [], end
    while j != 0:                               # climb to the root, recording directions
        parent = next(p for p in range(n) if left[p] == j or right[p] == j)
        path.append(1 if left[parent] == j else 2)
        j = parent
    mem[2:2 + k] = path[::-1]
    addr = _places(rng, n, 3, 3 + k, M)
    for i in range(n):
        mem[addr[i]] = values[i]
        mem[addr[i] + 1] = addr[left[i]] if left[i] >= 0 else 0
        mem[addr[i] + 2] = addr[right[i]] if right[i] >= 0 else 0
    mem[0] = addr[0]
    target[1], mask[1] = values[end], True
    return mem, target, mask


@dataclass(frozen=True)
class Task:
    name: str
    generate: Callable           # (difficulty, M, rng) -> (memory, target, mask)
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

    def sample(self, n, M, rng):
        self.check(n, M)
        return self.generate(n, M, rng)


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
    key = str(name).lower()
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv,
            ast.USub, ast.Constant, ast.Name, ast.Load)


T_MAX = 10_000_000     # timesteps: beyond this a rule is a typo (the discrete executor at n = 10^6 uses 2*10^6)


def timestep_rule(expr):
    """Compile a rule such as '2*n+1' into n -> T (an int from 1 to T_MAX); only n, integers and
    + - * //. A rule that divides by zero or exceeds T_MAX at some n raises TaskError there."""
    try:
        tree = ast.parse(str(expr), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise TaskError(f"bad timestep rule {str(expr)[:60]!r}: write an expression in n such as '2*n+1'")
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
