"""The seed population: honest shares (Wilson interval), retiring solved seeds, restarts, and
exploit/explore copying exactly one seed's state onto another."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nramctl.config import task_config
from nramctl.population import subset
from nramctl.shares import wilson
from nramctl.train import Trainer

from test_cli import cli, one_line_error  # noqa: F401  (fixture)


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (8, 8, 0.6756, 1.0), (1, 16, 0.0111, 0.2833),
    (3, 16, 0.0659, 0.4302), (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval_against_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert abs(lo - low) < 5e-4 and abs(hi - high) < 5e-4


def test_wilson_interval_of_no_seeds_is_uninformative():
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("n", [1, 3, 8, 16, 273])
def test_wilson_interval_ends_exactly_at_zero_and_one(n):
    """All seeds solved gives an upper bound of exactly 1 (reports printed 0.9999999999999999)."""
    assert wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0


def test_reproduce_reports_solved_and_unsolved_seeds(cli):
    """Access with a 100-step cap: seeds 0, 1 and 2 reach 0 error (at steps 80, 100 and 100), the other
    three do not. share = solved / tried, and solved seeds leave the batch (no records after solving)."""
    r = cli("reproduce", "access", "--seeds", 6, "--budget-minutes", 5, "--n", 3, "--up-to", 6,
            "--set", "train.eval_every=20", "--set", "train.steps=100", "--set", "train.batch=16",
            "--set", "model.hidden=16", "--set", "M=10", "--set", "difficulty=8", "--set", "train.extra_steps=0",
            "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)[0]
    assert res["seeds_tried"] == 6 and res["seeds_solved"] == len(res["solved"]) == 3
    assert res["share"] == pytest.approx(3 / 6)
    assert (res["share_low"], res["share_high"]) == pytest.approx(wilson(3, 6))
    assert [(s["seed"], s["step"]) for s in res["solved"]] == [(0, 80), (1, 100), (2, 100)]
    assert res["first_solved_seconds"] == res["solved"][0]["seconds"] > 0
    metrics = [json.loads(x) for x in (cli.root / res["run"] / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics if m["seed"] == 0) == 80          # retired once solved
    assert max(m["step"] for m in metrics if m["seed"] == 3) == 100
    status = json.loads((cli.root / res["run"] / "status.json").read_text())
    assert [s["seed"] for s in status["seeds"]] == list(range(6))


def test_restarts_refill_the_slot_of_a_solved_seed(cli):
    """With restarts, a solved seed retires with its record and a fresh seed takes its slot, so the
    batch keeps training K seeds to the end of the budget: the Access run above, with restarts that
    no stuck seed triggers (patience 1,000), puts seeds 6, 7, 8 in the slots of 0, 1, 2. Seeds 7 and
    8 came at the last step and never trained, so they are not counted as tried."""
    r = cli("reproduce", "access", "--seeds", 6, "--budget-minutes", 5, "--n", 3, "--up-to", 6,
            "--set", "train.eval_every=20", "--set", "train.steps=100", "--set", "train.batch=16",
            "--set", "model.hidden=16", "--set", "M=10", "--set", "difficulty=8", "--set", "train.extra_steps=0",
            "--set", "train.population.mode=restart", "--set", "train.population.patience=1000", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)[0]
    assert [(s["seed"], s["step"]) for s in res["solved"]] == [(0, 80), (1, 100), (2, 100)]
    assert res["seeds_tried"] == 7 and res["share"] == pytest.approx(3 / 7)
    metrics = [json.loads(x) for x in (cli.root / res["run"] / "metrics.jsonl").read_text().splitlines()]
    refills = [(m["seed"], m["replaces"], m["step"]) for m in metrics if m.get("event") == "refill"]
    assert refills == [(6, 0, 80), (7, 1, 100), (8, 2, 100)]
    assert max(m["step"] for m in metrics if m.get("seed") == 6 and "loss" in m) == 100   # trained on


def _trainer(**sets):
    base = ["M=9", "difficulty=3", "train.batch=8", "model.hidden=16", "train.seeds=4"]
    return Trainer(task_config("copy", None, base + [f"{k}={v}" for k, v in sets.items()]))


def test_exploit_copies_exactly_one_seed_onto_another():
    tr = _trainer()
    for _ in range(4):
        tr.train_step()
    before = tr.state_dict()
    before = {"model": {k: v.clone() for k, v in before["model"].items()},
              "opt": {i: {k: v.clone() for k, v in st.items()} for i, st in before["optimizer"]["state"].items()},
              "level": [c.level for c in tr.curricula], "rng": [r.bit_generator.state for r in tr.data_rngs]}
    tr.curricula[2].level = 3
    tr.exploit(1, 2, factor=1.25)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v[1], before["model"][k][2])                    # dst = src
        for s in (0, 2, 3):
            assert torch.equal(v[s], before["model"][k][s])                # the rest untouched
    for i, st in tr.opt.state.items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[k][1], before["opt"][i][k][2])
            for s in (0, 2, 3):
                assert torch.equal(st[k][s], before["opt"][i][k][s])
    assert tr.curricula[1].level == 3 and tr.lrs == [0.003, 0.003 * 1.25, 0.003, 0.003]
    assert tr.data_rngs[1].bit_generator.state == before["rng"][1]         # its own data stream goes on
    assert tr.lineage[1] == [[4, 2]] and tr.lineage[0] == []
    loss0 = tr.train_step()[0]                                              # per-seed learning rates train
    assert torch.isfinite(loss0).all()


def test_restart_gives_a_fresh_seed_and_counts_the_attempt():
    tr = _trainer()
    for _ in range(3):
        tr.train_step()
    fresh = Trainer(tr.cfg, [4]).model.state_dict()
    keep = {k: v[0].clone() for k, v in tr.model.state_dict().items()}
    new = tr.restart(2)
    assert new == 4 and tr.seeds == [0, 1, 4, 3] and len(tr.all_seeds()) == 5
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v[2], fresh[k][0]) and torch.equal(v[0], keep[k])
    assert all(torch.count_nonzero(st["exp_avg"][2]) == 0 for st in tr.opt.state.values())


@pytest.mark.parametrize("kernel", [True, False])
def test_a_restarted_seed_trains_as_the_same_seed_started_alone(kernel, monkeypatch):
    """After a restart the new seed's update is a fresh Adam's (its bias corrections count from its
    own first step, not the run's): its weights after one step equal seed 4's trained alone, to
    float32 rounding (the per-seed path multiplies in another order: 1.5e-8 apart). With the run's
    step count (7 here) the update was half a fresh Adam's, 1.5e-3 apart; after a long run, 2.8 times.
    With the compiled kernel's Adam and with torch's tensor operations."""
    from nramctl import native
    if not kernel:
        monkeypatch.setattr(native, "_lib", False)
    elif native.library() is None:
        pytest.skip("no C++ compiler: the compiled kernel is unavailable")
    tr = _trainer()
    for _ in range(6):
        tr.train_step()
    tr.restart(2)
    alone = Trainer(tr.cfg, [4])
    tr.train_step()
    alone.train_step()
    for k, v in tr.model.state_dict().items():
        assert torch.allclose(v[2], alone.model.state_dict()[k][0], rtol=0, atol=1e-6), k
    assert tr.adam_start == [0, 0, 6, 0]
    tr.exploit(0, 2)                                   # the copy takes the moments' age with them
    assert tr.adam_start == [6, 0, 6, 0]


def test_stuck_seeds_restart_under_the_population_policy():
    tr = _trainer(**{"train.population.mode": "restart", "train.population.patience": 20,
                     "train.eval_every": 10, "train.steps": 60, "train.eval_examples": 20})
    events = []
    tr.run(on_log=lambda recs: events.extend(r for r in recs if "event" in r))
    assert events and all(e["event"] == "restart" for e in events)
    assert len(tr.all_seeds()) == 4 + len(events)


def test_a_deadline_judges_a_seed_by_its_own_age_and_best_error():
    from nramctl.population import Population
    tr = _trainer(**{"train.population.mode": "restart", "train.population.deadline": 50,
                     "train.population.deadline_error": 0.3})
    tr.step, tr.adam_start = 100, [0, 0, 70, 0]
    tr.best_error = [0.2, 0.6, 0.6, 0.6]              # below; above; above but 30 steps old; solved
    tr.last_improved = [0, 0, 0, 0]                    # no patience: long stagnation alone is fine
    tr.solved_step[3] = 90
    pop = Population(tr.cfg)
    assert [bool(pop.stuck(tr, s)) for s in range(4)] == [False, True, False, False]
    tr.step = 120                                      # seed 2 is 50 steps old now
    assert [bool(pop.stuck(tr, s)) for s in range(4)] == [False, True, True, False]


def test_a_deadline_restarts_every_seed_not_below_it_at_that_age():
    tr = _trainer(**{"train.population.mode": "restart", "train.population.deadline": 20,
                     "train.population.deadline_error": 0,
                     "train.eval_every": 10, "train.steps": 50, "train.eval_examples": 20})
    events = []
    tr.run(on_log=lambda recs: events.extend(r for r in recs if "event" in r))
    assert sorted((e["step"], e["replaces"]) for e in events) == \
        [(20, 0), (20, 1), (20, 2), (20, 3), (40, 4), (40, 5), (40, 6), (40, 7)]


def test_a_schedule_of_deadlines_holds_each_seed_to_every_rung_it_has_reached():
    from nramctl.population import Population
    tr = _trainer(**{"train.population.mode": "restart",
                     "train.population.deadlines": "[[1500, 0.45], [20000, 0.1]]"})
    pop = Population(tr.cfg)
    tr.last_improved = [0, 0, 0, 0]
    # (age, best error, stuck?) worked out by hand from the two rungs
    cases = [(1499, 0.9, False), (1500, 0.46, True), (1500, 0.45, False), (19999, 0.2, False),
             (20000, 0.2, True), (20000, 0.1, False), (30000, 0.5, True), (30000, 0.05, False)]
    for age, error, want in cases:
        tr.step, tr.adam_start, tr.best_error = 40000, [40000 - age] * 4, [error] * 4
        assert pop.stuck(tr, 0) is want, (age, error)


def test_the_single_deadline_and_the_schedule_combine():
    tr = _trainer(**{"train.population.mode": "restart", "train.population.deadline": 50,
                     "train.population.deadline_error": 0, "train.population.deadlines": "[[20, 0]]",
                     "train.eval_every": 10, "train.steps": 50, "train.eval_examples": 20})
    events = []
    tr.run(on_log=lambda recs: events.extend(r for r in recs if "event" in r))
    assert sorted((e["step"], e["replaces"]) for e in events) == \
        [(20, 0), (20, 1), (20, 2), (20, 3), (40, 4), (40, 5), (40, 6), (40, 7)]


@pytest.mark.parametrize("value", ["[[100]]", "[[1.5, 0.2]]", "[[100, 2]]", "[[0, 0.5]]", "[[100, 0.5, 3]]",
                                   "[1, 2]", "abc", "[[100, .nan]]", "[[100, -0.1]]", "[[true, 0.5]]"])
def test_a_bad_schedule_of_deadlines_is_refused_in_one_line(cli, value):
    r = cli("train", "copy", "--set", "train.population.mode=restart", "--set",
            f"train.population.deadlines={value}")
    one_line_error(r, "train.population.deadlines")


def test_restarts_need_a_patience_or_a_deadline():
    from nramctl.config import ConfigError
    with pytest.raises(ConfigError, match="train.population.deadline"):
        _trainer(**{"train.population.mode": "restart"})
    _trainer(**{"train.population.mode": "restart", "train.population.deadline": 100})
    _trainer(**{"train.population.mode": "restart", "train.population.deadlines": "[[100, 0.5]]"})


def test_restarts_of_a_fine_tuning_begin_from_its_model_and_not_from_scratch():
    """With train.init every attempt starts from that model: a restart too, also after a checkpoint
    round trip (before, a restart brought in a randomly initialized seed)."""
    src = _trainer()
    for _ in range(3):
        src.train_step()
    start = {k: v[:1].detach().clone() for k, v in src.model.named_parameters()}
    tr = _trainer(**{"train.population.mode": "restart", "train.population.patience": 10})
    tr.start_at(start)
    for _ in range(2):
        tr.train_step()

    def at_start(trainer, s):
        return all(torch.equal(p[s], start[k][0]) for k, p in trainer.model.named_parameters())
    assert not at_start(tr, 1)                         # trained away from it
    tr.restart(1)
    assert at_start(tr, 1) and not at_start(tr, 0)
    again = Trainer.from_state(tr.cfg, tr.state_dict())
    again.restart(2)
    assert at_start(again, 2) and all(torch.equal(again.best_params[k][2], start[k][0]) for k in start)
    plain = _trainer(**{"train.population.mode": "restart", "train.population.patience": 10})
    plain.restart(1)                                   # no train.init: a fresh seed's own initialization
    assert not at_start(plain, 1)
    assert torch.equal(plain.model.controller.head.weight[1],
                       Trainer(plain.cfg, [plain.seeds[1]]).model.controller.head.weight[0])


def test_mode_off_is_a_word_in_set_and_in_a_config_file(tmp_path):
    """YAML 1.1 reads off/on/yes/no as booleans; nramctl reads YAML 1.2's: `--set
    train.population.mode=off` (Permutation's tasks.yaml entry restarts; this turns that off)."""
    from nramctl.config import ConfigError
    assert task_config("permutation", None, ["train.population.mode=off"]).train.population.mode == "off"
    path = tmp_path / "mine.yaml"
    path.write_text("defaults: {train: {population: {mode: off}, curriculum: {enabled: false}}}\n"
                    "tasks: {copy: {M: 9, T: '2*n+1', difficulty: 3}}\n")
    cfg = task_config("copy", path)
    assert cfg.train.population.mode == "off" and cfg.train.curriculum.enabled is False
    with pytest.raises(ConfigError, match="expected bool"):
        task_config("copy", None, ["train.curriculum.enabled=no"])     # a word now, not a boolean


def test_retired_seeds_survive_a_checkpoint_round_trip():
    tr = _trainer(**{"train.until": "all"})
    for _ in range(3):
        tr.train_step()
    tr.solved_step[1], tr.best_error[1] = 3, 0.0
    tr.retire([1])
    assert tr.seeds == [0, 2, 3] and [r["seed"] for r in tr.all_seeds()] == [0, 1, 2, 3]
    again = Trainer.from_state(tr.cfg, tr.state_dict())
    for _ in range(2):
        assert torch.equal(tr.train_step()[0], again.train_step()[0])
    assert again.all_seeds()[1]["solved_step"] == 3 and again.all_best_params()["controller.l1.weight"].shape[0] == 4
    one = subset(tr.state_dict(), [2])
    assert one["seeds"] == [3] and one["model"]["controller.l1.weight"].shape[0] == 1


def test_exploit_explore_through_the_command_line_records_the_lineage(cli):
    r = cli("train", "copy", "--M", 9, "--difficulty", 3, "--steps", 80, "--seeds", 4, "--set", "train.batch=8",
            "--set", "model.hidden=16", "--set", "train.eval_every=10", "--set", "train.eval_examples=40",
            "--set", "train.population.mode=exploit", "--set", "train.population.patience=20",
            "--set", "train.population.top=0.5", "--tensorboard")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (cli.root / "run-1" / "metrics.jsonl").read_text().splitlines()]
    events = [x for x in lines if "event" in x]
    assert events and all(e["event"] == "exploit" and e["from"] != e["seed"] for e in events)
    show = json.loads(cli("runs", "show", "run-1", "--json").stdout)
    copied = {e["seed"] for e in events}
    assert all(s["lineage"] for s in show["seeds"] if s["seed"] in copied)
    assert cli("plot", "run-1").exit_code == 0


ACCESS_CAPPED = ["train.eval_every=20", "train.steps=100", "train.batch=16", "model.hidden=16", "M=10",
                 "difficulty=8", "train.extra_steps=0"]


def assert_resumed_as_whole(cli, run, whole, *args):
    """`reproduce ARGS` on `run` reports what the uninterrupted run `whole` did: the same seeds solved
    at the same steps, the same tests, and the same kept model."""
    r = cli("reproduce", *args)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)[0]
    same = ("seeds_tried", "seeds_solved", "seed", "steps", "train_error", "solved_step", "result", "rows")
    assert {k: got[k] for k in same} == {k: whole[k] for k in same}
    assert [(s["seed"], s["step"]) for s in got["solved"]] == [(s["seed"], s["step"]) for s in whole["solved"]]
    a = torch.load(run.path / "checkpoints/best.pt", weights_only=True)["model"]
    b = torch.load(cli.root / whole["run"] / "checkpoints/best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_interrupted_while_measuring_and_while_polishing_ends_as_if_never_stopped(cli):
    """The Access run above with 20 polish steps, once whole and once stopped at step 50 (measuring
    the share) and at step 110 (polishing seed 0, solved at 80): the resumed protocol reports the same
    seeds solved at the same steps, the same tests, and keeps the same model."""
    from nramctl.experiment import resume
    from nramctl.reproduce import Interrupted, plan_of, run_task, start_task
    from nramctl.runs import RunStore
    sets = [*ACCESS_CAPPED, "train.polish_steps=20"]
    args = ["--budget-minutes", 5, "--n", 3, "--up-to", 6, *[x for s in sets for x in ("--set", s)], "--json"]
    whole = cli("reproduce", "access", "--seeds", 6, *args)
    assert whole.exit_code == 0, whole.output
    whole = json.loads(whole.stdout)[0]
    assert whole["solved"][0]["seed"] == 0 and whole["steps"] == 120

    run, trainer, _ = start_task(RunStore(cli.root), task_config("access", None, ["train.seeds=6", *sets]), 300, 3, 6)
    for at, phase in ((50, "measure"), (110, "polish")):
        with pytest.raises(Interrupted):
            run_task(run, trainer, plan_of(run), should_stop=lambda: trainer.step >= at)
        status = json.loads((run.path / "status.json").read_text())
        assert (status["state"], status["step"], plan_of(run)["phase"]) == ("interrupted", at, phase)
        trainer = resume(run)
    assert_resumed_as_whole(cli, run, whole, "--resume", run.name, "--json")
    assert cli("reproduce", "--resume", run.name).exit_code == 2            # finished: refused


def test_a_finished_measurement_extended_ends_as_if_measured_with_the_longer_budget(cli):
    """The Access run above measured with a budget that ends after its first step, then extended
    (`reproduce --resume RUN --budget-minutes 5`): the same seeds solve at the same steps as in the
    run measured for 5 minutes from the start, with the same model; the short result is kept."""
    from nramctl.reproduce import RESULT, plan_of, run_task, start_task
    from nramctl.runs import RunStore
    args = ["--budget-minutes", 5, "--n", 3, "--up-to", 6, *[x for s in ACCESS_CAPPED for x in ("--set", s)], "--json"]
    whole = cli("reproduce", "access", "--seeds", 6, *args)
    assert whole.exit_code == 0, whole.output
    whole = json.loads(whole.stdout)[0]

    run, trainer, _ = start_task(RunStore(cli.root), task_config("access", None, ["train.seeds=6", *ACCESS_CAPPED]),
                                 1e-9, 3, 6)
    short = run_task(run, trainer, plan_of(run))
    run.write_json(RESULT, short)
    assert short["steps"] == 1 and short["seeds_solved"] == 0
    assert_resumed_as_whole(cli, run, whole, "--resume", run.name, "--budget-minutes", 5, "--json")
    kept = json.loads((run.path / "reproduce-0s.json").read_text())
    assert kept["steps"] == 1 and json.loads((run.path / RESULT).read_text())["steps"] == whole["steps"]
    for budget in (5, 1):                       # no longer than the budget measured: refused
        r = cli("reproduce", "--resume", run.name, "--budget-minutes", budget)
        assert r.exit_code == 2 and "longer --budget-minutes" in r.output, r.output


def test_a_measurement_whose_seed_was_polished_cannot_be_extended(cli):
    args = ["--budget-minutes", 5, "--n", 3, "--up-to", 6,
            *[x for s in [*ACCESS_CAPPED, "train.polish_steps=20"] for x in ("--set", s)], "--json"]
    r = cli("reproduce", "access", "--seeds", 6, *args)
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)[0]["run"]
    r = cli("reproduce", "--resume", run, "--budget-minutes", 10)
    assert r.exit_code == 2 and "polished" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_reproduce_stops_at_ctrl_c_with_a_resumable_run_and_refuses_other_changes(cli):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from nramctl.cli import main; main()", "reproduce", "permutation", "--seeds",
           "2", "--budget-minutes", "10", "--n", "2", "--up-to", "6", "--set", "train.log_every=2",
           "--runs-dir", str(cli.root)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    metrics = cli.root / "run-1" / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert b"nramctl reproduce --resume run-1" in err and b"Traceback" not in err
    step = json.loads((cli.root / "run-1" / "status.json").read_text())["step"]
    one_line_error(cli("reproduce", "--resume", "run-1", "--seeds", 3), "--seeds cannot change")
    one_line_error(cli("train", "--resume", "run-1"), "nramctl reproduce --resume run-1")
    one_line_error(cli("reproduce", "--resume", "run-1", "--budget-minutes", -1), "positive")
    # a budget already spent (a few steps before the signal take more than its 6 microseconds; 0.001
    # minutes was not always spent on a fast machine): tests at once, without another step
    r = cli("reproduce", "--resume", "run-1", "--budget-minutes", 1e-7, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)[0]
    assert (res["result"], res["steps"], res["seeds_tried"]) == ("budget", step, 2)
    assert res["budget_seconds"] == pytest.approx(6e-6)


def test_a_share_made_of_copies_says_how_many_initializations_it_comes_from():
    from nramctl.render import share
    row = {"seeds_solved": 10, "seeds_tried": 16, "share": 10 / 16, "share_low": 0.3864, "share_high": 0.8152}
    assert share(row) == "10/16 = 62% [39-82%]"
    assert share({**row, "solved_lineages": 10}) == "10/16 = 62% [39-82%]"
    assert share({**row, "solved_lineages": 2}) == "10/16 = 62% [39-82%], copies of 2 initializations"
    assert share({**row, "solved_lineages": 1}).endswith("copies of 1 initialization")
