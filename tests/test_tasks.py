"""Task generators against naive solvers written here, and layout invariants."""
import numpy as np
import pytest

from nramctl.tasks import TASKS, TaskError, task, timestep_rule


def follow_list(mem, head):
    """Nodes (next, value) from head: list of node addresses, by walking pointers."""
    nodes, p = [], head
    while p != 0:
        nodes.append(p)
        p = mem[p]
    return nodes


def solve(name, mem):
    """The expected output cells {address: value}, computed naively from the input memory alone."""
    M = len(mem)
    if name == "access":
        return {0: mem[mem[0]]}
    if name == "increment":
        out, i = {}, 0
        while mem[i] != 0:
            out[i] = (mem[i] + 1) % M
            i += 1
        return out
    if name in ("copy", "reverse"):
        p = mem[0]
        A = list(mem[1:p])
        if name == "reverse":
            A = A[::-1]
        return {p + i: v for i, v in enumerate(A)}
    if name == "swap":
        end = 2
        while mem[end] != 0:
            end += 1
        out = {i: mem[i] for i in range(2, end)}
        out[mem[0]], out[mem[1]] = mem[mem[1]], mem[mem[0]]
        return out
    if name == "permutation":
        a = mem[0]
        return {1 + i: mem[a + mem[1 + i]] for i in range(a - 1)}
    if name == "listk":
        return {2: mem[follow_list(mem, mem[0])[mem[1]] + 1]}
    if name == "listsearch":
        return {2: next(p for p in follow_list(mem, mem[0]) if mem[p + 1] == mem[1])}
    if name == "merge":
        a, b, o = mem[0], mem[1], mem[2]
        A, B, G = [], [], M - 1
        while mem[a] != G:
            A.append(mem[a]); a += 1
        while mem[b] != G:
            B.append(mem[b]); b += 1
        out, i, j = [], 0, 0
        while i < len(A) or j < len(B):
            if j >= len(B) or (i < len(A) and A[i] <= B[j]):
                out.append(A[i]); i += 1
            else:
                out.append(B[j]); j += 1
        return {o + k: v for k, v in enumerate(out)}
    if name == "walkbst":
        node, k = mem[0], 2
        while mem[k] != 0:
            node = mem[node + mem[k]]
            k += 1
        return {1: mem[node]}
    raise KeyError(name)


def tree_nodes(mem):
    """All node addresses of the BST, by walking children; checks the search-tree order too."""
    out, stack = [], [(mem[0], -1, 10 ** 9)]
    while stack:
        p, lo, hi = stack.pop()
        assert lo < mem[p] < hi
        out.append(p)
        if mem[p + 1]:
            stack.append((mem[p + 1], lo, mem[p]))
        if mem[p + 2]:
            stack.append((mem[p + 2], mem[p], hi))
    return out


def check_layout(name, n, mem, M):
    """Invariants beyond the answer: array lengths, NULL terminators, pointer targets."""
    assert ((0 <= mem) & (mem < M)).all()
    if name == "access":
        assert 1 <= mem[0] <= n and mem[n + 1] == 0 and (mem[1:n + 1] > 0).all()
    elif name == "increment":
        assert (mem[:n] > 0).all() and mem[n] == 0
    elif name in ("copy", "reverse"):
        assert mem[0] == n + 1 and (mem[1:n + 1] > 0).all() and (mem[n + 1:] == 0).all()
    elif name == "swap":
        assert mem[0] != mem[1] and 2 <= min(mem[:2]) and max(mem[:2]) <= n + 1 and mem[n + 2] == 0
    elif name == "permutation":
        assert sorted(mem[1:n + 1]) == list(range(n)) and mem[0] == n + 1
    elif name in ("listk", "listsearch"):
        nodes = follow_list(mem, mem[0])
        assert len(nodes) == n and len(set(nodes)) == n and min(nodes) >= 3
        assert all(p + 1 < M for p in nodes)
        if name == "listk":
            assert 0 <= mem[1] < n
    elif name == "merge":
        a, b, o = mem[:3]
        assert mem[b - 1] == M - 1 and mem[o - 1] == M - 1 and o + n <= M
        A, B = mem[a:b - 1], mem[b:o - 1]
        assert len(A) + len(B) == n and (np.diff(A) >= 0).all() and (np.diff(B) >= 0).all()
        assert ((mem[a:o] >= 1)).all()
    elif name == "walkbst":
        nodes = tree_nodes(mem)
        assert len(nodes) == n and len(set(nodes)) == n
        assert all(d in (1, 2) for d in mem[2:2 + list(mem[2:]).index(0)])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generator_matches_naive_solver(name):
    t = task(name)
    for M in (t.min_M(t.min_difficulty), 12, 23, 40):
        if M < t.min_M(t.min_difficulty):
            continue
        rng = np.random.default_rng(M)
        for n in range(t.min_difficulty, t.max_difficulty(M) + 1):
            examples = list(zip(*t.batch(n, M, rng, 25))) + [t.sample(n, M, rng) for _ in range(5)]
            for mem, target, mask in examples:
                check_layout(name, n, mem, M)
                expect = solve(name, list(mem))
                assert sorted(np.flatnonzero(mask)) == sorted(expect), (name, n, M)
                assert all(target[i] == v for i, v in expect.items()), (name, n, M, mem)
                assert ((0 <= target) & (target < M)).all()


def drawn_choice(name, mem):
    """A choice each example of the task draws uniformly, and its number of outcomes, read from the
    input memory alone (n = 4)."""
    M = len(mem)
    choices = {"access": lambda: (mem[0], 4), "increment": lambda: (mem[0], M - 1),
               "copy": lambda: (mem[1], M - 1), "reverse": lambda: (mem[4], M - 1),
               "swap": lambda: (mem[0] * M + mem[1], 4 * 3), "permutation": lambda: (mem[1], 4),
               "listk": lambda: (mem[1], 4), "listsearch": lambda: (mem[mem[0] + 1], M - 1),
               "merge": lambda: (mem[1] - 4, 5), "walkbst": lambda: (mem[mem[0]], M - 1)}
    return choices[name]()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batched_examples_are_independent_and_uniform(name):
    """A batch is k independent draws: the examples differ, and a choice each example makes (read
    from its memory by the function above) comes out uniform over its outcomes."""
    t = task(name)
    M, k = max(t.min_M(4), 20) + 3, 4000
    mem, _, _ = t.batch(4, M, np.random.default_rng(3), k)
    assert len({row.tobytes() for row in mem}) > 0.95 * k
    picks = [drawn_choice(name, list(row)) for row in mem]
    outcomes = picks[0][1]
    counts = np.unique([p for p, _ in picks], return_counts=True)[1]
    assert len(counts) == outcomes
    assert np.abs(counts / (k / outcomes) - 1).max() < 0.4, counts


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_deterministic_for_a_seed(name):
    t = task(name)
    M = t.min_M(4)
    a = [t.batch(4, M, np.random.default_rng(7), 3) for _ in range(2)]
    for x, y in zip(*a):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_smallest_memory_is_tight(name):
    """max_difficulty(M) is the largest n whose layout fits: min_M(n) <= M < min_M(n + 1)."""
    t = task(name)
    for M in range(t.min_M(t.min_difficulty), 60):
        n = t.max_difficulty(M)
        assert t.min_M(n) <= M < t.min_M(n + 1)
        t.sample(n, M, np.random.default_rng(0))       # the worst case fits
    with pytest.raises(TaskError, match="too small"):
        t.sample(t.max_difficulty(30) + 1, 30, np.random.default_rng(0))


def test_timestep_rules():
    assert timestep_rule("2*n+1")(5) == 11
    assert timestep_rule("3")(50) == 3
    for bad in ("__import__('os')", "n**2", "m+1", "2.5*n"):
        with pytest.raises(TaskError):
            timestep_rule(bad)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(TaskError, match="valid tasks: access"):
        task("sort")
