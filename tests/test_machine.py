"""The machine: memory gates, a full step under gradcheck, halting, the loss, and hand-wired circuits."""
import numpy as np
import pytest
import torch
from torch import nn

from nramctl.circuits import (CIRCUITS, GATES, LISTSEARCH_HALT, LISTSEARCH_HALT_WALK, LISTSEARCH_HALT_WALK_ONLY,
                              LISTSEARCH_SEQUENCE, LISTSEARCH_UNIFORM, LISTSEARCH_WALK, LISTSEARCH_WALK_ONLY,
                              MERGE_FIXED, MERGE_LT, PERMUTATION_FIXED, PERMUTATION_UNIFORM, VARIANTS)
from nramctl.config import task_config
from nramctl.data import make_batch
from nramctl.discrete import discrete_run
from nramctl.machine import NRAM, State, clip, fuzzy_run, halting, step
from nramctl.program import wired
from nramctl.tasks import task


def dists(rng, *shape):
    x = rng.random(shape) ** 2
    return torch.tensor(x / x.sum(-1, keepdims=True))


def one_gate_model(gate_names, R=2):
    return NRAM(R, gate_names, controller="mlp", hidden=5).double()


@pytest.mark.parametrize("M", [5, 8, 64])
def test_read_and_write_match_their_formulas(M, backend):
    """READ(p)[c] = sum_i p_i mem[i, c];  WRITE(p, a): mem[i] = (1 - p_i) mem[i] + p_i a."""
    rng = np.random.default_rng(M)
    model = one_gate_model(["READ", "WRITE"])
    regs, mem = dists(rng, 3, 2, M), dists(rng, 3, M, M)
    state = State(regs, mem, (), 0)
    with torch.no_grad():
        new, out = step(model, state, renorm=False, trace=True)
    (A, _), (P, V) = out.inputs
    read = np.einsum("ni,nic->nc", A.numpy(), mem.numpy())
    np.testing.assert_allclose(out.outputs[0].numpy(), read, atol=1e-12)
    written = mem.numpy() * (1 - P.numpy())[:, :, None] + P.numpy()[:, :, None] * V.numpy()[:, None, :]
    np.testing.assert_allclose(new.memory.numpy(), written, atol=1e-12)
    # gate inputs are the controller's mixtures of registers (and, for WRITE, READ's output)
    assert torch.allclose(A.sum(-1), torch.ones(3, dtype=torch.float64))


def test_registers_update_simultaneously_from_old_values(backend):
    """r_i' is a mixture of the *old* registers and this step's gate outputs."""
    rng = np.random.default_rng(0)
    model = one_gate_model(["INC", "DEC"], R=3)
    regs, mem = dists(rng, 2, 3, 6), dists(rng, 2, 6, 6)
    new, out = step(model, State(regs, mem, (), 0), renorm=False, trace=True)
    ch, _ = model.choose(regs[:, :, 0], ())
    w = torch.softmax(ch.regs, -1)
    sources = torch.cat([regs, torch.stack(out.outputs, 1)], 1)
    assert torch.allclose(new.registers, torch.einsum("nrk,nkm->nrm", w, sources))


class OneStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, regs, mem):
        new, out = step(self.model, State(regs, mem, self.model.controller.initial_state(1, 2, regs), 0),
                        renorm=False)
        return new.registers, new.memory, out.stop


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_gradcheck_one_full_machine_step(kind, backend):
    """All 14 gates, gradients w.r.t. registers, memory and a controller weight, in float64."""
    rng = np.random.default_rng(3)
    model = NRAM(2, GATES, controller=kind, hidden=4).double()
    wrapper = OneStep(model)
    regs, mem = dists(rng, 2, 2, 5).requires_grad_(), dists(rng, 2, 5, 5).requires_grad_()
    name = "l1" if kind == "mlp" else "inp"                 # the first layer: every path runs through it
    w = getattr(model.controller, name).weight.detach().clone().requires_grad_()
    key = f"model.controller.{name}.weight"
    f = lambda w, r, m: torch.func.functional_call(wrapper, {key: w}, (r, m))
    assert torch.autograd.gradcheck(f, (w, regs, mem))


def test_renormalized_step_hands_on_distributions(backend):
    """Registers and memory rows sum to 1 after a renormalized step, even from unnormalized ones."""
    rng = np.random.default_rng(4)
    model = NRAM(2, GATES, controller="mlp", hidden=4)
    regs, mem = 1.3 * dists(rng, 3, 2, 6).float(), 0.7 * dists(rng, 3, 6, 6).float()
    new, _ = step(model, State(regs, mem, (), 0), renorm=True)
    assert torch.allclose(new.registers.sum(-1), torch.ones(3, 2))
    assert torch.allclose(new.memory.sum(-1), torch.ones(3, 6))


def test_activation_gradient_clip_clamps_each_coordinate():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (clip(x, 0.5) * torch.tensor([3.0, -0.2])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.5, -0.2]))


@pytest.mark.parametrize("seed", range(5))
def test_halting_probabilities_sum_to_one(seed):
    rng = np.random.default_rng(seed)
    T = torch.tensor(rng.integers(1, 9, size=6))
    f = torch.tensor(rng.random((8, 6)))
    f[0, 0], f[2, 1] = 1.0, 0.0
    p = halting(f, T)
    assert (p >= 0).all()
    assert torch.allclose(p.sum(0), torch.ones(6, dtype=torch.float64))
    for n in range(6):                                   # nothing after each example's last step
        assert (p[T[n]:, n] == 0).all()
        assert torch.isclose(p[0, n], f[0, n] if T[n] > 1 else torch.tensor(1.0, dtype=torch.float64))


def test_loss_is_halting_weighted_log_likelihood_of_scored_cells():
    torch.manual_seed(0)
    model = NRAM(3, GATES, controller="lstm", hidden=8)
    b = make_batch("copy", 9, [1, 2, 3, 4], np.random.default_rng(0), "2*n+1")
    out = fuzzy_run(model, b, renorm=False, trace=True)
    f = torch.stack([s[1].stop for s in out.trace])
    p = halting(f, b.T)
    expect = torch.zeros(4)
    for t, (_, _, after) in enumerate(out.trace):
        for n in range(4):
            for i in np.flatnonzero(b.mask[n]):
                q = after.memory[n, i, b.target[n, i]].clamp_min(1e-6)
                expect[n] -= p[t, n] * torch.log(q)
    assert torch.allclose(out.loss, expect, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_keep_bias_makes_each_register_keep_its_value_at_first(kind):
    R, Q = 3, len(GATES)
    plain = NRAM(R, GATES, controller=kind, hidden=8, seed_values=[0, 1])
    biased = NRAM(R, GATES, controller=kind, hidden=8, seed_values=[0, 1], keep_bias=4.0)
    moved = (plain.controller.head.bias != biased.controller.head.bias).nonzero()[:, 2].unique()
    # register r's update is logits [2QK + rK, 2QK + (r+1)K); its own old value is source r
    K = R + Q
    assert moved.tolist() == [2 * Q * K + r * K + r for r in range(R)]
    for p, q in zip(plain.parameters(), biased.parameters()):
        assert p.shape == q.shape and (p is plain.controller.head.bias or torch.equal(p, q))
    state = biased.controller.initial_state(2, 3, torch.zeros(6, 9, 9))
    with torch.no_grad():
        ch, _ = biased.choose(torch.rand(6, R), state)
    w = ch.regs.softmax(-1)                                             # [N, R, K]
    own = w[:, torch.arange(R), torch.arange(R)]
    assert own.min() > 0.5 and (w.argmax(-1) == torch.arange(R)).all()


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_stop_bias_moves_the_initial_halting_mass_to_the_last_step(kind):
    b = make_batch("copy", 9, [4, 4, 4, 4], np.random.default_rng(0), "2*n+1")     # T = 9 each
    plain = NRAM(3, GATES, controller=kind, hidden=8, seed_values=[0, 1])
    biased = NRAM(3, GATES, controller=kind, hidden=8, seed_values=[0, 1], stop_bias=-6.0)
    same = [(n, p) for (n, p), q in zip(plain.named_parameters(), biased.parameters()) if not torch.equal(p, q)]
    assert [n for n, _ in same] == ["controller.head.bias"]          # only the stop logit's bias moved
    assert (same[0][1][:, :, :-1] == biased.controller.head.bias[:, :, :-1]).all()
    for model, last in ((plain, (0, 0.05)), (biased, (0.9, 1))):
        with torch.no_grad():
            out = fuzzy_run(model, b, renorm=False, trace=True)
        p = halting(torch.stack([s[1].stop for s in out.trace]), b.T)   # [T, N]
        assert last[0] <= p[-1].min() and p[-1].max() <= last[1]   # plain: f about 1/2, so about 2^-8


def test_head_scale_sharpens_the_first_choices_and_changes_nothing_else():
    """model.head_scale multiplies the head's initial draws but the stop logit's, and no other
    weight; the controller's first softmaxes are sharper (lower entropy) for it."""
    b = make_batch("copy", 9, [4, 4, 4, 4], np.random.default_rng(0), "2*n+1")
    plain = NRAM(3, GATES, controller="lstm", hidden=8, seed_values=[0, 1])
    sharp = NRAM(3, GATES, controller="lstm", hidden=8, seed_values=[0, 1], head_scale=4.0)
    moved = [n for (n, p), q in zip(plain.named_parameters(), sharp.parameters()) if not torch.equal(p, q)]
    assert moved == ["controller.head.weight", "controller.head.bias"]
    assert torch.allclose(sharp.controller.head.weight[:, :, :-1], 4 * plain.controller.head.weight[:, :, :-1])
    assert torch.equal(sharp.controller.head.weight[:, :, -1], plain.controller.head.weight[:, :, -1])
    with torch.no_grad():
        ents = [fuzzy_run(m, b, trace=True, entropy_bonus=True).entropy for m in (plain, sharp)]
    assert (ents[1] < ents[0]).all()


@pytest.mark.parametrize("M", [9, 16, 64])
@pytest.mark.parametrize("name", sorted(CIRCUITS))
def test_hand_wired_circuits_solve_the_task(name, M, backend):
    """Fixed controller outputs, no learning: fuzzy and discrete both give every scored cell. The hard
    tasks' circuits get the steps and registers tasks.yaml trains with: a solution fits in them (this
    circuit, or a phase-free variant of it where tasks.yaml trains with fewer registers: ListSearch's R 1,
    whose circuit tests/test_stones.py checks on tasks.yaml's gates)."""
    R, rules = CIRCUITS[name]
    model = wired(R, GATES, rules)
    t = task(name)
    rules_T = {"access": "3", "increment": "n+2", "copy": "2*n+1"}
    if name not in rules_T:
        cfg = task_config(name)
        assert cfg.model.R >= R or any(c.R <= cfg.model.R for (t, _), c in VARIANTS.items() if t == name)
    d = np.arange(t.min_difficulty, t.max_difficulty(M) + 1).repeat(3)
    b = make_batch(name, M, d, np.random.default_rng(M), rules_T.get(name) or cfg.T)
    fuzzy = fuzzy_run(model, b).pred
    disc, halt, _ = discrete_run(model, b.memory, b.T)
    assert torch.equal(fuzzy[b.mask], b.target[b.mask])
    assert torch.equal(disc[b.mask], b.target[b.mask])
    if any(rule.get("stop") for _, rule in rules):
        assert (halt < b.T).all()


@pytest.mark.parametrize("M, wrong", [(13, True), (14, False), (20, False)])
def test_phase_free_permutation_circuit_needs_room_to_run_on(M, wrong):
    """One circuit repeated every step (three READs a step) solves Permutation at tasks.yaml's T(n),
    fuzzy and discrete, once M leaves room for the writes after the n-th step (M >= 14 at lengths to
    6); at M = 13 they wrap around onto P[0] at length 6 only."""
    R, repeat, _, rules, gates = PERMUTATION_UNIFORM
    model = wired(R, gates, rules, repeat=repeat)
    d = np.arange(1, 7).repeat(4)
    b = make_batch("permutation", M, d, np.random.default_rng(M), task_config("permutation").T)
    fuzzy = fuzzy_run(model, b).pred
    disc, _, _ = discrete_run(model, b.memory, b.T)
    for pred in (fuzzy, disc):
        ok = (pred == b.target) | ~b.mask
        per_length = ok.all(1).view(6, 4).all(1)
        assert per_length[:5].all()                       # lengths 1-5 always fit
        assert bool(per_length[5]) != wrong


@pytest.mark.parametrize("T", ["2*n+2", "2*n+4", "4*n+4"])
def test_phase_free_permutation_circuit_with_min_is_a_fixed_point(T):
    """With MIN the phase-free Permutation circuit stops at the end of P: at M = 13 (no free cell) it is
    exact with tasks.yaml's steps, two more, and twice as many, where the circuit without MIN is wrong at
    length 6 with two more steps at M = 14 (its writes wrap round onto P)."""
    for (R, repeat, _, rules, gates), M, wrong in ((PERMUTATION_FIXED, 13, False),
                                                    (PERMUTATION_UNIFORM, 14, T != "2*n+2")):
        model = wired(R, gates, rules, repeat=repeat)
        b = make_batch("permutation", M, np.arange(1, 7).repeat(6), np.random.default_rng(M), T)
        for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
            ok = ((pred == b.target) | ~b.mask).all(1)
            assert bool(ok.all()) != wrong


@pytest.mark.parametrize("M", [15, 31])
@pytest.mark.parametrize("T", ["2*n+3", "n+1", "6*n+20"])
@pytest.mark.parametrize("wiring", [LISTSEARCH_UNIFORM, LISTSEARCH_SEQUENCE, LISTSEARCH_HALT],
                         ids=["uniform", "sequence", "halt"])
def test_phase_free_listsearch_circuit_stops_its_walk_at_the_first_match(M, T, wiring):
    """One circuit repeated every step (READ, INC, EQ, ADD, WRITE five times, or its eleven gates once
    in the order it uses them; no phase, no zero flag) solves ListSearch, fuzzy and discrete, at any M:
    its walk needs n + 1 steps at most and then stands on the first node whose value is v, so three
    times tasks.yaml's steps and more give the same answer. The halting circuit walks on regardless and
    halts the step after its zero flag sees the match, by step n. Where v occurs more than once in a
    list, the first occurrence must win: a plain walk finds it."""
    R, repeat, _, rules, gates = wiring
    model = wired(R, gates, rules, repeat=repeat)
    n = (M - 3) // 2
    b = make_batch("listsearch", M, np.arange(1, n + 1).repeat(12), np.random.default_rng(M), T)
    repeated, walks = 0, []
    for mem, target in zip(b.memory.tolist(), b.target[:, 2].tolist()):
        node, hits = mem[0], []
        walks.append([])
        while node:                                     # the list from its head to NULL
            hits += [node] if mem[node + 1] == mem[1] else []
            walks[-1].append(node)
            node = mem[node]
        assert hits[0] == target
        repeated += len(hits) > 1
    assert repeated >= 5
    fuzzy = fuzzy_run(model, b)
    disc, halt, _ = discrete_run(model, b.memory, b.T)
    for pred in (fuzzy.pred, disc):
        assert torch.equal(pred[b.mask], b.target[b.mask])
    if wiring is LISTSEARCH_HALT:                       # halts the step after the match: at its index + 1
        index = [walk.index(t) for walk, t in zip(walks, b.target[:, 2].tolist())]
        assert fuzzy.halt.tolist() == halt.tolist() == [i + 1 for i in index]


@pytest.mark.parametrize("M", [25, 31])
@pytest.mark.parametrize("T", ["2*n+3", "n", "3*n+7"])
@pytest.mark.parametrize("wiring", [MERGE_FIXED, MERGE_LT], ids=["fixed", "lt"])
def test_phase_free_merge_circuit_is_a_fixed_point(M, T, wiring):
    """One circuit repeated every step (twenty gates, R = 1) merges A and B, fuzzy and discrete, at the
    task's M and at a larger one: n steps suffice (one element a step), and once both heads are the
    guardian nothing moves, so tasks.yaml's steps and more give the same answer. The oracle is a plain
    merge of the two sorted runs read back from the memory, checked against the task's targets first.
    MERGE_LT moves B's pointer by its own comparison instead of with SUB."""
    R, repeat, _, rules, gates = wiring
    model = wired(R, gates, rules, repeat=repeat)
    n = (M - 5) // 2
    b = make_batch("merge", M, np.arange(1, n + 1).repeat(8), np.random.default_rng(M), T)
    for mem, target, mask in zip(b.memory.tolist(), b.target.tolist(), b.mask.tolist()):
        runs = []
        for start in (mem[0], mem[1]):                  # each run from its pointer up to the guardian
            end = mem.index(M - 1, start)
            runs.append(mem[start:end])
        merged, (a, bb) = [], runs
        while a or bb:                                  # the first run wins ties
            merged.append(a.pop(0) if a and (not bb or a[0] <= bb[0]) else bb.pop(0))
        assert [t for t, m in zip(target, mask) if m] == merged
    for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
        assert torch.equal(pred[b.mask], b.target[b.mask])


@pytest.mark.parametrize("T, answer", [("n", "tail"), ("2*n+3", "null")])
@pytest.mark.parametrize("wiring", [LISTSEARCH_WALK, LISTSEARCH_WALK_ONLY, LISTSEARCH_HALT_WALK,
                                    LISTSEARCH_HALT_WALK_ONLY], ids=["walk", "walk-only", "halt-walk", "halt-walk-only"])
def test_listsearch_walk_stepping_stone_never_stops(T, answer, wiring):
    """basin's stepping stones: the sequence circuit with the walk's write always to cell 0, and the
    halting circuit's walk that never halts. Each stands on the list's last node after n steps and has
    run off the end (NULL) after T(n), whatever v is: a plain walk from the head is the oracle."""
    R, repeat, _, rules, gates = wiring
    model = wired(R, gates, rules, repeat=repeat)
    b = make_batch("listsearch", 15, np.arange(1, 7).repeat(6), np.random.default_rng(3), T)
    tails = []
    for mem in b.memory.tolist():
        node = mem[0]
        while mem[node]:
            node = mem[node]
        tails.append(node)
    want = torch.tensor(tails) if answer == "tail" else torch.zeros(len(tails), dtype=torch.long)
    assert (want != b.target[:, 2]).sum() > 10                     # mostly not ListSearch's answer
    for pred in (fuzzy_run(model, b).pred, discrete_run(model, b.memory, b.T)[0]):
        assert torch.equal(pred[:, 2], want)
