"""docs/experiments/stones.py, the stepping-stone experiment script (docs/RESULTS.md, "ListSearch one step at
a time"): its one-step stones are one step of a ListSearch walk, checked against a plain walk step written
out here, and a hand-wired phase-free circuit that solves ListSearch is exact on them, fuzzy and discrete."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from nramctl import tasks
from nramctl.circuits import LISTSEARCH_SEQUENCE, MERGE_FIXED
from nramctl.data import make_batch
from nramctl.discrete import discrete_run
from nramctl.machine import fuzzy_run
from nramctl.program import wired
from test_stones import _walk           # a plain walk of K steps, the stones' oracle

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "stones.py"
# LISTSEARCH_SEQUENCE on the script's `const` gate list: the addresses 1 and 2 from the constants
CONST = (1, [({}, {"READ": ["r0"], "INC": ["READ"], "READ#2": ["READ"], "READ#3": ["INC"], "READ#4": ["ONE"],
                   "EQ": ["READ#3", "READ#4"], "ADD": ["EQ", "EQ"], "WRITE": ["ADD", "READ#2"],
                   "WRITE#2": ["TWO", "READ"]})],
         ("ONE", "TWO", "READ", "INC", "READ", "READ", "READ", "EQ", "ADD", "WRITE", "WRITE"))


@pytest.fixture(scope="module")
def stones():
    spec = importlib.util.spec_from_file_location("stones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, x", [("step-pair", lambda m, q: q), ("step-inc", lambda m, q: q + 1),
                                     ("step-hop", lambda m, q: m[q]), ("step", lambda m, q: m[q + 1])])
def test_step_stone_is_one_step_of_the_walk(stones, name, x):
    """Cell 0 holds a node q of the list (cell 2 the node before it, 0 at the head); the target keeps q
    where the stone's x equals v and moves to next(q) otherwise, and writes q into cell 2; cells 0-2
    are scored. Both outcomes occur."""
    fn = stones.STONES[name][0]
    stays = 0
    for n in range(1, 7):
        mem, target, mask = fn(n, 15, np.random.default_rng(n), 40)
        for m, t, k in zip(mem.tolist(), target.tolist(), mask.tolist()):
            q, before = m[0], m[2]
            assert 3 <= q < 15 and (before == 0 or m[before] == q)
            assert k[:3] == [True] * 3 and not any(k[3:])
            stays += x(m, q) == m[1]
            assert (t[0], t[1], t[2]) == (q if x(m, q) == m[1] else m[q], m[1], q)
    assert 60 < stays < 180                                  # v equals x about half the time


@pytest.mark.parametrize("wiring", [(LISTSEARCH_SEQUENCE.R, LISTSEARCH_SEQUENCE.rules, LISTSEARCH_SEQUENCE.gates),
                                    CONST], ids=["sequence", "const"])
def test_a_listsearch_circuit_is_exact_on_the_step_stone(stones, monkeypatch, wiring):
    """The step stone is consistent with ListSearch: a circuit that solves ListSearch (checked here
    too) gets every scored cell of it right in one step, fuzzy and discrete."""
    R, rules, gates = wiring
    model = wired(R, gates, rules)
    monkeypatch.setitem(tasks.TASKS, "step", tasks.Task("step", stones.STONES["step"][0], lambda n: 1, 1))
    for name, T in (("step", "1"), ("listsearch", "2*n+3")):
        b = make_batch(name, 15, np.arange(1, 7).repeat(20), np.random.default_rng(5), T)
        for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
            assert torch.equal(pred[b.mask], b.target[b.mask])


@pytest.mark.parametrize("count", [2, 3, 4])
def test_multi_step_stone_is_that_many_steps_of_the_walk(stones, monkeypatch, count):
    """stepK: K steps of the walk from a node of the list, v found within them about half the time; the
    targets (cells 0 and 2) are a plain walk's, and the ListSearch circuit is exact on them with T = K."""
    name = f"step{count}"
    fn = stones.STONES[name][0]
    found = 0
    for n in range(1, 7):
        mem, target, mask = fn(n, 15, np.random.default_rng(10 + n), 40)
        for m, t in zip(mem.tolist(), target.tolist()):
            p, examined = _walk(m, count)
            assert (t[0], t[2]) == (p, examined)
            found += p != 0 and m[p + 1] == m[1]
    assert 60 < found < 200
    monkeypatch.setitem(tasks.TASKS, name, tasks.Task(name, fn, lambda n: count, 1))
    model = wired(LISTSEARCH_SEQUENCE.R, LISTSEARCH_SEQUENCE.gates, LISTSEARCH_SEQUENCE.rules)
    b = make_batch(name, 15, np.arange(1, 7).repeat(20), np.random.default_rng(6), str(count))
    for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
        assert torch.equal(pred[b.mask], b.target[b.mask])


def test_export_writes_one_seed_as_a_run(stones, tmp_path, monkeypatch):
    """`stones.py --export SAVED INDEX NAME`: seed INDEX of a --save file, with its last stone's weights,
    becomes the nramctl run NAME (ListSearch, the script's settings, that seed's number), loadable as any run."""
    import argparse

    from nramctl.config import task_config
    from nramctl.experiment import load_model
    from nramctl.runs import RunStore
    from nramctl.train import Trainer
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(circuit="const", R=1, seeds=3, seed=70, set=["model.stop_bias=-10"])
    trainer = Trainer(task_config("listsearch", None, stones._settings(args)))
    weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    torch.save({"args": vars(args), "stones": {"step-pair": {}, "step": weights}}, tmp_path / "saved.pt")
    for index, name, says in ((3, "refused", "seed indices 0..2"), (2, "../out", "invalid run name")):
        with pytest.raises(SystemExit, match=says):                  # refused before any run is made
            stones.export(tmp_path / "saved.pt", index, name)
    with pytest.raises(SystemExit, match="not a stones.py --save file"):
        stones.export(tmp_path / "missing.pt", 0, "refused")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    stones.export(tmp_path / "saved.pt", 2, "exported")
    run, _ = RunStore().resolve("exported")
    cfg, model, _ = load_model(run)
    assert (cfg.task, cfg.model.R, cfg.model.controller, cfg.model.stop_bias) == ("listsearch", 1, "mlp", -10)
    assert [g for g in cfg.model.gates] == ["ONE", "TWO", "READ", "INC", "READ", "READ", "READ", "EQ", "ADD",
                                            "WRITE", "WRITE"]
    assert cfg.train.seed == 72 and run.load("best")["seeds"] == [72]
    for k, v in model.named_parameters():
        assert torch.equal(v[0], weights[k][2])


def _merge_state(m, n, merged_len, A, B):
    """The memory cells 0-2 and the output a plain merge of A and B leaves after `merged_len` elements
    (A's first on ties, as LE does); the output cells not yet written hold 0. At M 25 the output pointer
    wraps to cell 0 once the tenth element of a length-10 merge is written."""
    merged, i, j = [], 0, 0
    while len(merged) < merged_len:
        if j == len(B) or (i < len(A) and A[i] <= B[j]):
            merged, i = merged + [A[i]], i + 1
        else:
            merged, j = merged + [B[j]], j + 1
    return [3 + i, 4 + len(A) + j, (5 + n + merged_len) % 25], merged + [0] * (n - merged_len)


@pytest.mark.parametrize("name, count", [("merge1", 1), ("merge2", 2), ("merge4", 4), ("merge1a", 1), ("merge3b", 3)])
def test_merge_stone_is_that_many_steps_of_a_plain_merge(stones, monkeypatch, name, count):
    """mergeK: Merge's memory after a random number of merge steps (fewer than n), and the target after K
    more, both as a plain merge of A and B written here leaves them (cells 0-2 and the output; `a`/`b`:
    B/A empty), scored on cells 0-2 and the cells the K steps write; the phase-free Merge circuit is exact
    on them with T = K, fuzzy and discrete."""
    fn, only = stones.STONES[name][0], name[len(f"merge{count}"):] or None
    M = 25
    for n in range(1, 11):
        mem, target, mask = fn(n, M, np.random.default_rng(20 + n), 12)
        for m, t, k in zip(mem.tolist(), target.tolist(), mask.tolist()):
            n1 = m.index(M - 1, 3) - 3
            A, B = m[3:3 + n1], m[4 + n1:4 + n]
            assert len(B) == n - n1 and {"a": n1 == n, "b": n1 == 0, None: True}[only]
            done = m[2] - (5 + n)
            assert 0 <= done < n and [m[:3], m[5 + n:5 + 2 * n]] == list(_merge_state(m, n, done, A, B))
            assert [t[:3], t[5 + n:5 + 2 * n]] == list(_merge_state(m, n, min(done + count, n), A, B))
            written = {(5 + n + j) % M for j in range(done, min(done + count, n))}
            written |= {(5 + 2 * n) % M} if done + count > n else set()    # the end: G over and over
            assert {i for i in range(M) if k[i]} == {0, 1, 2} | written
    monkeypatch.setitem(tasks.TASKS, name, tasks.Task(name, fn, lambda n: 2 * n + 5, 1))
    model = wired(MERGE_FIXED.R, MERGE_FIXED.gates, MERGE_FIXED.rules)
    b = make_batch(name, M, np.arange(1, 11).repeat(6), np.random.default_rng(7), str(count))
    for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
        assert torch.equal(pred[b.mask], b.target[b.mask])
