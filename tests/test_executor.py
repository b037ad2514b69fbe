"""The constant-time executor against the dense discretized machine, on every task generator."""
import numpy as np
import pytest
import torch

from nramctl.circuits import CIRCUITS, GATES
from nramctl.data import make_batch
from nramctl.discrete import discrete_run
from nramctl.executor import Program, execute
from nramctl.machine import NRAM
from nramctl.program import wired
from nramctl.tasks import TASKS, task


def agree(model, name, M, n_examples=12, seed=0):
    t = task(name)
    rng = np.random.default_rng(seed)
    d = rng.integers(t.min_difficulty, t.max_difficulty(M) + 1, size=n_examples)
    b = make_batch(name, M, d, rng, "2*n+3")
    dense, halt, _ = discrete_run(model, b.memory, b.T)
    program = Program(model)
    for i in range(n_examples):
        mem = b.memory[i].tolist()
        h = execute(program, mem, M, int(b.T[i]))
        assert mem == dense[i].tolist(), (name, M, i)
        assert h == int(halt[i])
        sparse = {c: v for c, v in enumerate(b.memory[i].tolist()) if v}
        execute(program, sparse, M, int(b.T[i]))
        assert all(sparse.get(c, 0) == v for c, v in enumerate(dense[i].tolist()))


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_executor_equals_dense_discrete_machine(name, kind):
    """Random-weight controllers make varied programs; every one must run identically."""
    for seed, M in enumerate([23, 64, 200]):
        torch.manual_seed(seed)
        model = NRAM(3, GATES, controller=kind, hidden=16, seed_values=[seed + 10 * len(name)])
        with torch.no_grad():                    # sharper logits: more varied, less uniform programs
            model.controller.head.weight.mul_(8)
        agree(model, name, M, seed=seed)


@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_executor_runs_hand_wired_circuits(name):
    R, rules = CIRCUITS[name]
    for M in (16, 200):
        agree(wired(R, GATES, rules), name, M)


def test_executor_solves_copy_at_a_million_cells():
    """Copy of 20,000 elements in a sparse memory of 10^6 cells (the dense machine would need 10^12)."""
    R, rules = CIRCUITS["copy"]
    program = Program(wired(R, GATES, rules))
    M, n = 1_000_000, 20_000
    rng = np.random.default_rng(0)
    A = rng.integers(1, M, size=n).tolist()
    mem = {0: n + 1, **{1 + i: v for i, v in enumerate(A)}}
    execute(program, mem, M, 2 * n + 1)
    assert [mem.get(n + 1 + i, 0) for i in range(n)] == A


def test_exported_program_runs_without_torch_and_solves_copy(tmp_path):
    from nramctl.readable import describe, export_python
    R, rules = CIRCUITS["copy"]
    model = wired(R, GATES, rules)
    path = tmp_path / "copy_program.py"
    path.write_text(export_python(model, "copy", "hand-wired"))
    code = path.read_text()
    assert "import" not in code
    namespace = {}
    exec(compile(code, str(path), "exec"), namespace)
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        M = 2 * n + 1 + int(rng.integers(0, 5))
        mem, target, mask = task("copy").sample(n, M, rng)
        memory = mem.tolist()
        namespace["run"](memory, 2 * n + 1)
        assert np.array_equal(np.array(memory)[mask], target[mask])
    # the readable form: a first circuit, one repeated circuit, and the halting circuit
    b = make_batch("copy", 12, [5] * 4, rng, "2*n+1")
    d = describe(model, b.memory.tolist(), 12, b.T.tolist())
    assert [c["steps"] for c in d["circuits"]] == ["1", "2-6", "7"]
    assert d["circuits"][1]["lines"] == ["WRITE(r1, READ(r0))", "r0 = INC(r0)", "r1 = ADD(r1, 1)",
                                         "r3 = SUB(r2, INC(r0))"]
    assert d["circuits"][2]["lines"] == ["HALT"]
