"""The training method: every technique does something when on, the curriculum's mixture, and learning."""
import numpy as np
import pytest
import torch

from nramctl.config import ConfigError, CurriculumConfig, task_config
from nramctl.data import Curriculum
from nramctl.evaluate import evaluate
from nramctl.train import Trainer

SMALL = ["train.batch=16", "model.hidden=16", "train.eval_examples=50"]


def grads_after_one_step(*overrides, seed=0):
    cfg = task_config("copy", overrides=[*SMALL, "M=9", "difficulty=3", *overrides])
    tr = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.train_step()
    return {k: v.grad.clone() for k, v in tr.model.named_parameters()}, before, tr


def differs(a, b):
    return any(not torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("switch", [
    "train.clip_activation=0.001", "train.clip_norm=0.01", "train.noise.enabled=true",
    "train.entropy.enabled=true", "train.logit_noise=1"])
def test_every_technique_changes_the_update(switch):
    base = ["train.clip_activation=null", "train.clip_norm=null", "train.noise.enabled=false",
            "train.entropy.enabled=false", "train.renormalize=false"]
    off, _, _ = grads_after_one_step(*base)
    key = switch.split("=")[0]
    on, _, _ = grads_after_one_step(*[b for b in base if not b.startswith(key + "=")], switch)
    assert differs(off, on), switch


def test_dropout_changes_the_update_of_an_lstm_only():
    base = ["model.controller=lstm", "train.clip_norm=null"]
    off, _, _ = grads_after_one_step(*base)
    on, _, _ = grads_after_one_step(*base, "train.dropout=0.5")
    assert differs(off, on)
    with pytest.raises(ConfigError, match="train.dropout"):
        task_config("copy", overrides=["train.dropout=0.5"])          # the MLP has no recurrent state


def test_late_entropy_term_and_learning_rate_decay_act_from_their_step():
    """Before train.entropy.start the run is plain training, bit for bit; from it on it differs. The
    decayed learning rate is lr * decay^step (Adam's own lr is what each update uses)."""
    def run(*overrides, steps):
        tr = Trainer(task_config("copy", overrides=[*SMALL, "M=9", "difficulty=3", *overrides]))
        for _ in range(steps):
            tr.train_step()
        return {k: v.detach().clone() for k, v in tr.model.named_parameters()}, tr
    late = ["train.entropy.enabled=true", "train.entropy.coef=-0.5", "train.entropy.start=3"]
    assert not differs(run(steps=3)[0], run(*late, steps=3)[0])
    assert differs(run(steps=4)[0], run(*late, steps=4)[0])
    _, tr = run("train.lr_decay=0.9", steps=5)
    assert tr.opt.lr == pytest.approx(tr.cfg.train.lr * 0.9 ** 4)     # set before the 5th update


def test_renormalization_rescales_drifted_state():
    """Float drift leaves distributions summing to slightly off 1; renormalization restores them."""
    from nramctl.machine import NRAM, State, step
    model = NRAM(2, ["READ", "INC", "WRITE"], hidden=4)
    regs = torch.full((3, 2, 5), 0.25)                       # sums to 1.25: drifted
    mem = torch.full((3, 5, 5), 0.21)
    on, _ = step(model, State(regs, mem, (), 0), renorm=True)
    off, _ = step(model, State(regs, mem, (), 0), renorm=False)
    assert torch.allclose(on.registers.sum(-1), torch.ones(3, 2))
    assert torch.allclose(on.memory.sum(-1), torch.ones(3, 5))
    assert not torch.allclose(off.registers.sum(-1), torch.ones(3, 2))


def test_norm_clip_bounds_each_seed_separately():
    g, _, tr = grads_after_one_step("train.clip_norm=0.5", "train.noise.enabled=false", "train.seeds=3")
    norms = torch.sqrt(sum(v.pow(2).flatten(1).sum(1) for v in g.values()))
    assert (norms <= 0.5 + 1e-4).all() and norms.shape == (3,)


def test_seeds_are_independent_models():
    """A seed's gradient depends only on its own weights and data; its initial weights only on its seed."""
    _, w3, _ = grads_after_one_step("train.seeds=3", "train.noise.enabled=false")
    _, w1, _ = grads_after_one_step("train.seed=2", "train.noise.enabled=false")
    assert all(torch.equal(w3[k][2], w1[k][0]) for k in w1)
    cfg = task_config("copy", overrides=[*SMALL, "M=9", "difficulty=3", "train.seeds=2"])
    tr = Trainer(cfg)
    b = tr.batch()
    from nramctl.machine import fuzzy_run
    fuzzy_run(tr.model, b).loss.view(2, -1)[0].sum().backward()
    assert all(p.grad[1].abs().max() == 0 for p in tr.model.parameters())
    assert any(p.grad[0].abs().max() > 0 for p in tr.model.parameters())


def test_curriculum_mixture_matches_the_formula():
    """At level D: 10% uniform on all, 25% uniform on [lo, D+e], 65% D+e, e ~ Geometric(1/2) - 1."""
    lo, hi, D = 1, 12, 4
    c = Curriculum(CurriculumConfig(), lo, hi)
    c.level = D
    d = c.sample(np.random.default_rng(0), 400_000)
    expect = np.zeros(hi + 1)
    for e in range(0, 60):
        pe = 0.5 ** (e + 1)
        top = min(D + e, hi)
        expect[top] += 0.65 * pe
        expect[lo:top + 1] += 0.25 * pe / (top - lo + 1)
    expect[lo:hi + 1] += 0.10 / (hi - lo + 1)
    got = np.bincount(d, minlength=hi + 1) / len(d)
    np.testing.assert_allclose(got, expect, atol=3e-3)


def test_curriculum_advances_only_after_a_good_window():
    c = Curriculum(CurriculumConfig(window=3, min_batches=5, threshold=0.01), 1, 5)
    assert [c.update(0.0) for _ in range(4)] == [False] * 4        # too soon
    assert c.update(0.0) and c.level == 2
    assert not any(c.update(0.5) for _ in range(10)) and c.level == 2
    c.update(0.0), c.update(0.0), c.update(0.0)
    assert c.level == 3


@pytest.mark.parametrize("start, level", [(None, 2), (4, 4), (1, 2), (99, 7)])
def test_curriculum_starts_at_its_start_level_clipped_to_the_range(start, level):
    c = Curriculum(CurriculumConfig(start=start), 2, 7)
    assert c.level == level
    assert Curriculum(CurriculumConfig(enabled=False, start=start), 2, 7).level == 7
    d = c.sample(np.random.default_rng(0), 10_000)       # 65% at level + e: most draws at or above it
    assert np.mean(d >= level) > 0.6 and d.min() >= 2 and d.max() <= 7


def test_learning_access_from_scratch_to_zero_error():
    """A small task learned from scratch with a fixed seed: 0 error on 1000 fresh examples.
    Seen needing about 250 steps; the budget is 3000."""
    torch.manual_seed(0)
    cfg = task_config("access", overrides=[
        "model.gates=[READ,ZERO,INC,LT,MIN,WRITE]", "train.steps=3000", "train.eval_every=20",
        "train.curriculum.min_batches=10", "train.curriculum.window=5", "train.seed=0"])
    tr = Trainer(cfg)
    assert tr.run() == "solved"
    from nramctl.train import build_model
    model = build_model(cfg)
    model.load_state_dict(tr.best_params)
    d = np.arange(1, 9).repeat(125)
    res = evaluate(model, cfg, 10, d, np.random.default_rng(99))
    assert res["error"][0] == 0.0


@pytest.mark.parametrize("noise", [[], ["train.logit_noise=1"]])
def test_one_seed_of_a_batched_run_trains_like_a_run_of_its_own(noise):
    """Seeds share only arithmetic: seed 2 of a 3-seed run, narrowed to itself after 10 steps,
    continues with exactly the losses of a single-seed run with seed 2 (its logit noise too is its own)."""
    common = [*SMALL, "M=9", "difficulty=3", "train.batch=8", "train.steps=30", *noise]
    a = Trainer(task_config("copy", overrides=[*common, "train.seeds=3"]))
    b = Trainer(task_config("copy", overrides=[*common, "train.seed=2"]))
    for _ in range(10):
        a.train_step()
        b.train_step()
    a.keep([2])
    for _ in range(5):
        assert torch.allclose(a.train_step()[0], b.train_step()[0], rtol=1e-5)
    assert a.S == 1 and a.seeds == [2]


def test_polishing_keeps_training_after_the_target_and_keeps_a_solution():
    cfg = task_config("access", overrides=[
        "model.gates=[READ,ZERO,INC,LT,MIN,WRITE]", "train.steps=3000", "train.eval_every=20",
        "train.curriculum.min_batches=10", "train.curriculum.window=5", "train.polish_steps=60"])
    tr = Trainer(cfg)
    assert tr.run() == "solved"
    assert tr.step == tr.solved_step[0] + 60 and tr.best_error[0] == 0.0
    assert tr.best_step[0] > tr.solved_step[0]          # a polished snapshot that still scores 0


def test_polishing_with_extra_steps_keeps_only_models_exact_with_them():
    """Solved without extra steps, then polished with up to 4: the kept model is a polished one, and
    it is exact on fresh examples given 2 and 4 steps beyond the rule (checked here by evaluate)."""
    import dataclasses
    from nramctl.data import extended_rule
    from nramctl.train import build_model
    cfg = task_config("access", overrides=[
        "M=10", "difficulty=8", "model.gates=[READ,ZERO,INC,LT,MIN,WRITE]", "train.steps=3000",
        "train.eval_every=20", "train.curriculum.min_batches=10", "train.curriculum.window=5",
        "train.extra_steps=0", "train.polish_steps=400", "train.polish_extra_steps=4"])
    tr = Trainer(cfg)
    assert tr._extra_steps(0) == 0
    assert tr.run() == "solved"
    assert tr._extra_steps(0) == 4 and tr.best_step[0] > tr.solved_step[0]
    model = build_model(cfg)
    model.load_state_dict(tr.best_params)
    d = np.arange(1, 9).repeat(125)
    for extra in (0, 2, 4):
        res = evaluate(model, dataclasses.replace(cfg, T=extended_rule(cfg.T, extra)), 10, d,
                       np.random.default_rng(7))
        assert res["error"][0] == 0.0, extra


def test_a_polishing_seed_is_judged_with_its_stage_of_extra_steps(monkeypatch):
    """With polish_extra_steps 5, a seed that solves polishes in stages of 2, 4, then 5 extra steps:
    it trains with its stage's and is judged with them and without, and each time its model is exact
    with both, that model is kept and the next stage begins; an unsolved seed is judged without."""
    tr = Trainer(task_config("copy", overrides=[*SMALL, "M=9", "difficulty=3", "train.seeds=2",
                                                "train.polish_steps=100", "train.polish_extra_steps=5"]))
    errors = {}
    monkeypatch.setattr(tr, "_errors", lambda extra, stream: np.array(errors[extra]))

    def check(at, step):
        errors.clear()
        errors.update(at)
        tr.step = step
        return list(tr.check())

    assert check({0: [0.0, 0.5]}, 10) == [0.0, 0.5]                      # seed 0 solves
    assert (tr.solved_step, tr.polish_stage, tr.exact_extra) == ([10, None], [2, 0], [0, None])
    assert (tr._extra_steps(0), tr._extra_steps(1)) == (2, 0)
    assert check({0: [0.0, 0.25], 2: [0.0, 0.75]}, 20) == [0.0, 0.25]     # exact with 2: stage 4
    assert (tr.polish_stage[0], tr.exact_extra[0], tr.best_step[0]) == (4, 2, 20)
    assert check({0: [0.0, 0.25], 4: [0.1, 0.75]}, 30) == [0.1, 0.25]     # not exact with 4: kept as is
    assert (tr.polish_stage[0], tr.exact_extra[0], tr.best_step[0]) == (4, 2, 20)
    assert check({0: [0.2, 0.25], 4: [0.0, 0.75]}, 35) == [0.2, 0.25]     # exact with 4, not without
    assert (tr.polish_stage[0], tr.exact_extra[0], tr.best_step[0]) == (4, 2, 20)
    check({0: [0.0, 0.25], 4: [0.0, 0.75]}, 40)                           # exact with both: stage 5 (the cap)
    assert (tr.polish_stage[0], tr.exact_extra[0], tr.best_step[0]) == (5, 4, 40)
    tr.solved_step[1], tr.polish_stage[1] = 40, 2                          # all polish, each at its stage
    assert check({0: [0.0, 0.0], 2: [0.9, 0.0], 5: [0.0, 0.9]}, 50) == [0.0, 0.0]
    assert (tr.polish_stage, tr.exact_extra, tr.best_step) == ([5, 4], [5, 2], [50, 50])
    assert [r["exact_extra_steps"] for r in tr.all_seeds()] == [5, 2]
    tr2 = Trainer.from_state(tr.cfg, tr.state_dict())
    assert (tr2.polish_stage, tr2.exact_extra) == ([5, 4], [5, 2])


def test_adam_matches_torch_optim_adam_bit_for_bit():
    """nramctl's Adam (no torch._dynamo import; the kernel's passes where it is built) against
    torch.optim.Adam: same parameters after 20 steps of random gradients, and a state_dict either one
    loads. One parameter is large enough for torch's vectorized loops and MKL's square root, whose
    last bits a correctly rounded square root does not match."""
    from nramctl.adam import Adam
    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g)),
            torch.nn.Parameter(torch.randn(8, 64, 301, generator=g))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a, b = Adam(ours, lr=3e-3), torch.optim.Adam(ref, lr=3e-3)
    for _ in range(20):
        for p, q in zip(ours, ref):
            p.grad = torch.randn(p.shape, generator=g) * 3
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)
    c = Adam(ours, lr=1.0)
    c.load_state_dict(b.state_dict())
    assert c.lr == 3e-3 and torch.equal(c.state[1]["exp_avg_sq"], b.state[ref[1]]["exp_avg_sq"])
    torch.optim.Adam(ref, lr=1.0).load_state_dict(a.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_with_a_rate_per_seed_is_the_same_in_the_kernel_and_in_torch(dtype, monkeypatch):
    """Per-seed learning rates (exploit/explore): the kernel's passes against the tensor operations
    (the kernel switched off), bit for bit, over seeds whose blocks do not fill whole vectors."""
    from nramctl import native
    from nramctl.adam import Adam
    g = torch.Generator().manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(6, 37, 29, generator=g, dtype=dtype))]
    ref = [torch.nn.Parameter(ours[0].detach().clone())]
    lr = torch.tensor([1e-3, 3e-3, 1e-2, 3e-2, 1e-4, 3e-3], dtype=torch.float64)
    a, b = Adam(ours, lr=lr), Adam(ref, lr=lr)
    usable = native.usable
    for _ in range(15):
        ours[0].grad = torch.randn(ours[0].shape, generator=g, dtype=dtype)
        ref[0].grad = ours[0].grad.clone()
        a.step()
        monkeypatch.setattr(native, "usable", lambda *t: False)
        b.step()
        monkeypatch.setattr(native, "usable", usable)
    assert torch.equal(ours[0], ref[0])
    assert torch.equal(a.state[0]["exp_avg"], b.state[0]["exp_avg"])
    assert torch.equal(a.state[0]["exp_avg_sq"], b.state[0]["exp_avg_sq"])
