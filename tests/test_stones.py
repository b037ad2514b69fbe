"""Stepping stones (nramctl/stones.py, `train.stones`): the stones are steps of the hard tasks' circuits,
checked against plain walks and merges written here and against the hand-wired circuits; the Trainer
moves each seed from stone to stone by its own exactness, restarts seeds stuck on a stone, and resumes
mid-chain bit for bit."""
import numpy as np
import pytest
import torch

from nramctl import stones
from nramctl.basin import distill
from nramctl.circuits import MERGE_FIXED
from nramctl.config import ConfigError, task_config
from nramctl.data import make_batch
from nramctl.discrete import discrete_run
from nramctl.machine import fuzzy_run
from nramctl.program import wired
from nramctl.tasks import TaskError, task
from nramctl.train import Trainer

# LISTSEARCH_SEQUENCE on ListSearch's shipped gate list (tasks.yaml): the addresses 1 and 2 from constants
LS_GATES = ["ONE", "TWO", "READ", "INC", "READ", "READ", "READ", "EQ", "ADD", "WRITE", "WRITE"]
LS_RULES = [({}, {"READ": ["r0"], "INC": ["READ"], "READ#2": ["READ"], "READ#3": ["INC"], "READ#4": ["ONE"],
                  "EQ": ["READ#3", "READ#4"], "ADD": ["EQ", "EQ"], "WRITE": ["ADD", "READ#2"],
                  "WRITE#2": ["TWO", "READ"]})]
LS = [f"model.gates=[{','.join(LS_GATES)}]", "model.controller=mlp", "model.R=1", "model.repeat=1",
      "model.stop_bias=-10", "model.keep_bias=10", "train.batch=8", "train.eval_examples=60",
      "train.stones.polish=0", "train.population.mode=off", "train.population.deadlines=[]"]   # (not tasks.yaml's)


def _exact(model, name, M, difficulties, rule):
    b = make_batch(name, M, difficulties, np.random.default_rng(3), rule)
    for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
        assert torch.equal(pred[b.mask], b.target[b.mask]), name


def _walk(m, count):
    """A plain walk of `count` steps from the node in cell 0: a node whose value is v is kept, any other is
    left for its successor; cell 2 ends at the last node examined."""
    p, examined = m[0], m[2]
    for _ in range(count):
        examined = p
        if p and m[p + 1] != m[1]:
            p = m[p]
    return p, examined


@pytest.mark.parametrize("name, count", [("step", 1), ("step2", 2), ("step3", 3), ("step4", 4)])
def test_listsearch_stones_are_steps_of_a_plain_walk_and_the_circuit_is_exact_on_them(name, count):
    """Cells 0 and 2 (the only cells scored) hold what a plain walk leaves; the ListSearch circuit is exact
    on the stone with its own T, found through tasks.task('listsearch:NAME'), fuzzy and discrete."""
    st = stones.stone("listsearch", name)
    assert st.T == str(count) and task(f"listsearch:{name}") is st.task
    for n in range(1, 7):
        mem, target, mask = st.task.batch(n, 15, np.random.default_rng(n), 30)
        assert (mask[:, [0, 2]].all() and not mask[:, 1].any() and not mask[:, 3:].any())
        for m, t in zip(mem.tolist(), target.tolist()):
            assert (t[0], t[2]) == _walk(m, count)
    _exact(wired(1, LS_GATES, LS_RULES), f"listsearch:{name}", 15, np.arange(1, 7).repeat(10), st.T)
    _exact(wired(1, LS_GATES, LS_RULES), "listsearch", 15, np.arange(1, 7).repeat(10), "2*n+3")


def _plain_merge_step(m):
    """One step of a plain merge on a list memory: the smaller head (A's on a tie) is written at the output
    pointer and its pointer and the output's move on (modulo M, as the machine's addresses); nothing moves
    once both heads are the guardian."""
    M, m = len(m), list(m)
    G = M - 1
    a, b, o = m[0], m[1], m[2]
    x, y = m[a], m[b]
    m[o] = min(x, y)
    if min(x, y) < G:
        m[0], m[1], m[2] = ((a + 1) % M, b, (o + 1) % M) if x <= y else (a, (b + 1) % M, (o + 1) % M)
    return m


def test_merge_stones_against_a_plain_merge_step_and_the_circuit():
    """merge1: one plain merge step; merge1o scores only the written cell and cell 2, merge1m cells 0 and 1;
    merge1p compares the two pointers themselves, merge1pb A's head with B's pointer (the circuit with MIN
    and LE reading those is exact on each, MERGE_FIXED is not); merge1ab has A or B empty; MERGE_FIXED is
    exact on every deep stone."""
    one, out, shallow = (stones.stone("merge", s).task for s in ("merge1", "merge1o", "merge1p"))
    for n in range(1, 11):
        mem, target, mask = one.batch(n, 25, np.random.default_rng(n), 20)
        for m, t, k in zip(mem.tolist(), target.tolist(), mask.tolist()):
            want = _plain_merge_step(m)
            assert k[:3] == [True] * 3 and [t[i] for i in range(25) if k[i]] == [want[i] for i in range(25) if k[i]]
        mem, target, mask = out.batch(n, 25, np.random.default_rng(n), 20)
        assert not mask[:, :2].any() and mask[:, 2].all()
        mem, target, mask = stones.stone("merge", "merge1m").task.batch(n, 25, np.random.default_rng(n), 20)
        assert mask[:, :2].all() and not mask[:, 2:].any()
        mem, target, mask = shallow.batch(n, 25, np.random.default_rng(n), 20)
        for m, t, k in zip(mem.tolist(), target.tolist(), mask.tolist()):
            a, b, o = m[:3]
            assert 3 <= min(a, b, o) and max(a, b, o) <= 23 and sum(k) == 4 and k[o]
            assert (t[0], t[1], t[2], t[o]) == ((a + 1, b) if a <= b else (a, b + 1)) + (o + 1, min(a, b))
        mem, target, mask = stones.stone("merge", "merge1pb").task.batch(n, 25, np.random.default_rng(n), 20)
        for m, t in zip(mem.tolist(), target.tolist()):
            a, b, o = m[:3]
            assert (t[0], t[1], t[o]) == ((a + 1, b) if m[a] <= b else (a, b + 1)) + (min(m[a], b),)
        mem, target, mask = stones.stone("merge", "merge1ab").task.batch(n, 25, np.random.default_rng(n), 40)
        n1 = {m.index(24, 3) - 3 for m in mem.tolist()}               # A's run ends at the first guardian
        assert n1 == {0, n}                                           # A or B empty, both drawn
    deep = wired(MERGE_FIXED.R, MERGE_FIXED.gates, MERGE_FIXED.rules)
    for name in ("merge1", "merge1o", "merge1m", "merge2a", "merge3b", "merge1ab", "merge4"):
        st = stones.stone("merge", name)
        _exact(deep, st.task.name, 25, np.arange(1, 11).repeat(6), st.T)
    rules = [({}, {**MERGE_FIXED.rules[0][1], "MIN": ["READ", "READ#2"], "LE": ["READ", "READ#2"]})]
    _exact(wired(1, MERGE_FIXED.gates, rules), "merge:merge1p", 25, np.arange(1, 11).repeat(6), "1")
    rules = [({}, {**MERGE_FIXED.rules[0][1], "MIN": ["READ#4", "READ#2"], "LE": ["READ#4", "READ#2"]})]
    _exact(wired(1, MERGE_FIXED.gates, rules), "merge:merge1pb", 25, np.arange(1, 11).repeat(6), "1")
    b = make_batch("merge:merge1p", 25, np.arange(1, 11).repeat(6), np.random.default_rng(3), "1")
    assert not torch.equal(fuzzy_run(deep, b).pred[b.mask], b.target[b.mask])


def test_unknown_stones_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train.stones.names: listsearch has no stepping stone 'nope' "
                                          r"\(its stones: step-pair, .*step4\)"):
        task_config("listsearch", None, ["train.stones.names=[step,nope]"])
    with pytest.raises(ConfigError, match="copy has no stepping stone 'step2' \\(its stones: none\\)"):
        task_config("copy", None, ["train.stones.names=[step2]"])
    with pytest.raises(ConfigError, match="train.stones.stuck: 'later' must be advance or restart"):
        task_config("listsearch", None, ["train.stones.stuck=later"])
    with pytest.raises(TaskError, match="no stepping stone 'listsearch:merge:merge1'"):
        task("listsearch:merge:merge1")
    assert task_config("listsearch", None, ["train.stones.names=[listsearch:step2]"]).train.stones.names == ["step2"]


def _trainer(extra=()):
    """Two ListSearch seeds; seed position 0 is the hand-wired circuit, distilled, position 1 fresh."""
    cfg = task_config("listsearch", None, LS + ["train.seeds=2", "train.seed=40", "train.eval_every=50",
                                                "train.until=all", *extra])
    trainer = Trainer(cfg)
    fresh = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    distill(trainer.model, LS_RULES, steps=400, lr=0.03)
    with torch.no_grad():
        for k, p in trainer.model.named_parameters():
            p[1] = fresh[k][1]
    return trainer


def _train(trainer, until):
    """Train to step `until`, checking every 50 steps as `Trainer.run` does; the stone events."""
    events = []
    while trainer.step < until:
        trainer.train_step()
        if trainer.step % 50 == 0:
            trainer.check()
            events += trainer.after_stones()
    return events


def test_each_seed_moves_on_when_exact_on_its_stone_others_after_the_stone_steps():
    """The wired seed is exact on `step` and `step2` at the first checks and moves on at each (fresh Adam
    moments for it alone); the fresh seed trains each stone its full train.stones.steps, on the stone's
    own examples and T, and moves on all the same. Each stone left is logged and reported."""
    trainer = _trainer(["train.stones.names=[step,step2]", "train.stones.steps=100"])
    b = trainer.batch()
    assert (b.T == 1).all()                                       # both on `step` (T 1)
    events = []
    for _ in range(50):
        trainer.train_step()
    moments = {i: st["exp_avg"].clone() for i, st in trainer.opt.state.items()}
    trainer.check()
    events += trainer.after_stones()
    assert trainer.stage == [1, 0]
    for i, st in trainer.opt.state.items():                        # seed 0's moments afresh, seed 1's kept
        assert not st["exp_avg"][0].any() and torch.equal(st["exp_avg"][1], moments[i][1])
    assert trainer.adam_start == [50, 0]
    b = trainer.batch()
    assert (b.T[:8] == 2).all() and (b.T[8:] == 1).all()          # step2 (T 2) for seed 0, `step` for seed 1
    events += _train(trainer, 200)
    assert trainer.stage == [2, 2] and trainer.stone_of(0) is None
    moves = [(e["seed"], e["stone"], e["how"], e["step"]) for e in events]
    assert moves == [(40, "step", "exact", 50), (40, "step2", "exact", 100), (41, "step", "advanced", 100),
                     (41, "step2", "advanced", 200)]
    rows = trainer.all_seeds()
    assert rows[0]["stones"] == [["step", 50, 0.0, "exact"], ["step2", 50, 0.0, "exact"]]
    assert rows[0]["stage"] == "listsearch" and rows[0]["steps"] == 200
    b = trainer.batch()
    assert set(b.T.tolist()) <= {2 * n + 3 for n in range(1, 7)}  # both on ListSearch, its own T
    assert trainer.solved_step == [150, None]                     # at its first check on ListSearch


def test_a_seed_stuck_on_a_stone_makes_way_for_a_fresh_seed_from_the_first_stone():
    """stuck: restart. The fresh seed (a new number) starts at the first stone, is counted as tried, and
    the stuck seed retires with the stones it left; the seed exact on its stones is untouched."""
    trainer = _trainer(["train.stones.names=[step,step2]", "train.stones.steps=100", "train.stones.stuck=restart"])
    events = _train(trainer, 100)
    restart = [e for e in events if e["event"] == "stone-restart"]
    assert restart == [{"event": "stone-restart", "seed": 42, "replaces": 41, "stone": "step", "step": 100}]
    assert trainer.seeds == [40, 42] and trainer.stage == [2, 0] and trainer.stage_start[1] == 100
    rows = {r["seed"]: r for r in trainer.all_seeds()}
    assert rows[41]["active"] is False and rows[41]["stage"] == "step" and rows[41]["steps"] == 100
    assert rows[42]["steps"] == 0 and rows[40]["stones"][1][3] == "exact"
    trainer.train_step()
    assert trainer.all_seeds()[2]["steps"] == 1


def test_resume_in_the_middle_of_the_stones_is_bit_for_bit():
    """A trainer rebuilt from its state_dict between stones trains on exactly as the original."""
    extra = ["train.stones.names=[step-pair,step,step2]", "train.stones.steps=100"]
    a = _trainer(extra)
    _train(a, 150)
    b = Trainer.from_state(a.cfg, a.state_dict())
    assert b.stage == a.stage and b.stone_log == a.stone_log
    for t in (a, b):
        _train(t, 250)
    assert a.stage == b.stage and a.stone_log == b.stone_log
    for (k, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), k


def test_reproduce_counts_seeds_by_how_they_left_each_stone():
    """`reproduce`'s per-stone tally: exact and moved on without, in the stones' order, and the seeds that
    reached the task; None without stones."""
    from nramctl.reproduce import stone_counts
    rows = [{"stones": [["step", 50, 0.0, "exact"], ["step2", 100, 0.2, "advanced"]], "stage": "listsearch"},
            {"stones": [["step", 100, 0.3, "advanced"]], "stage": "step2"},
            {"stones": [], "stage": "step"}]
    assert stone_counts(["step", "step2"], "listsearch", rows) == {
        "step": {"exact": 1, "advanced": 1}, "step2": {"exact": 0, "advanced": 1}, "listsearch": {"reached": 1}}
    assert list(stone_counts(["step", "step2"], "listsearch", rows)) == ["step", "step2", "listsearch"]
    assert stone_counts([], "listsearch", rows) is None


def test_polish_keeps_an_exact_seed_on_its_stone_that_many_steps_more():
    """train.stones.polish 100: the wired seed, exact on `step` from the check at step 50, moves on at the
    first check 100 steps later; the fresh seed still moves on after train.stones.steps."""
    trainer = _trainer(["train.stones.names=[step,step2]", "train.stones.steps=200", "train.stones.polish=100"])
    events = _train(trainer, 200)
    assert [(e["seed"], e["stone"], e["how"], e["step"]) for e in events] == [
        (40, "step", "exact", 150), (41, "step", "advanced", 200)]
    assert trainer.stone_log[0] == [["step", 150, 0.0, "exact"]] and trainer.stone_exact[0] == 200  # on step2


def test_tasks_lists_the_stones_and_samples_one():
    """`nramctl tasks --json` gives each task's stones (tasks.yaml's chain for ListSearch, none for Copy);
    `tasks sample TASK:STONE` shows a stone's examples; an unknown stone is one line and exit 2 (bad input)."""
    import json

    from typer.testing import CliRunner

    from nramctl.cli import app
    runner = CliRunner()
    rows = {r["task"]: r for r in json.loads(runner.invoke(app, ["tasks", "--json"]).output)}
    assert rows["listsearch"]["stones"] == ["step-pair", "step-hop", "step-inc", "step", "step2", "step3", "step4"]
    assert rows["copy"]["stones"] == []
    out = json.loads(runner.invoke(app, ["tasks", "sample", "listsearch:step2", "--M", "15", "--json"]).output)
    assert out["task"] == "listsearch:step2" and all(sum(e["mask"]) == 2 for e in out["examples"])
    bad = runner.invoke(app, ["tasks", "sample", "listsearch:nope", "--M", "15"])
    assert bad.exit_code == 2 and "no stepping stone 'listsearch:nope'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
