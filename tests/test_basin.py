"""`nramctl basin`: a hand-wired circuit learned by an MLP or an LSTM, perturbed, and trained back."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nramctl.basin import basin_config, distill, measure, perturb
from nramctl.circuits import CIRCUITS, circuit
from nramctl.cli import app
from nramctl.config import ConfigError
from nramctl.evaluate import evaluate
from nramctl.machine import NRAM
from nramctl.program import grow, output_names
from nramctl.train import Trainer

SMALL = ["M=9", "difficulty=3", "train.batch=8", "train.eval_examples=40"]


@pytest.mark.parametrize("name, variant, M", [("access", None, 9), ("permutation", None, 9),
                                              ("permutation", "uniform", 14), ("listsearch", "uniform", 9),
                                              ("listsearch", "sequence", 9), ("listsearch", "halt", 9),
                                              ("merge", "fixed", 11)])
def test_the_distilled_mlp_solves_the_task_as_the_circuit_does(name, variant, M):
    cfg = basin_config(name, overrides=[f"M={M}", "difficulty=3"], seeds=2, variant=variant)
    model = Trainer(cfg).model
    rng = np.random.default_rng(0)
    d = np.repeat(np.arange(1, 4), 30)
    assert (evaluate(model, cfg, M, d, rng)["error"] > 0.3).all()       # a fresh MLP does not
    assert distill(model, circuit(name, variant)[3]) < 1e-3
    for discrete in (False, True):                                      # task targets are the oracle
        assert (evaluate(model, cfg, M, d, rng, discrete=discrete)["error"] == 0).all()


def test_perturbations_are_what_they_say():
    cfg = basin_config("copy", overrides=SMALL, seeds=2)
    a, b = Trainer(cfg).model, Trainer(cfg).model
    fresh = {k: v.detach().clone() for k, v in a.named_parameters()}
    solved = {k: torch.randn_like(v) for k, v in fresh.items()}
    perturb(a, solved, fresh, "mix", 1.0)                    # all the way back: the fresh model
    assert all(torch.equal(p, fresh[k]) for k, p in a.named_parameters())
    perturb(a, solved, fresh, "mix", 0.25)
    for k, p in a.named_parameters():
        assert torch.allclose(p, 0.75 * solved[k] + 0.25 * fresh[k])
    perturb(b, solved, fresh, "scale", 0.5)                  # the head alone, times the amount
    for k, p in b.named_parameters():
        assert torch.equal(p, solved[k] * (0.5 if k.startswith("controller.head.") else 1))


def test_an_unperturbed_start_stays_solved_and_a_fresh_one_is_plain_training():
    out = measure(basin_config("access", overrides=["M=9", "difficulty=6", "train.batch=8"], seeds=3),
                  "scale", [1.0], 20, per_difficulty=20)
    assert out["distilled_error"] == 0 and out["rows"][0]["recovered"] == 3
    out = measure(basin_config("access", overrides=["M=9", "difficulty=6", "train.batch=8"], seeds=3),
                  "mix", [1.0], 0, per_difficulty=20)
    assert out["rows"][0]["recovered"] == 0 and out["rows"][0]["start_error"] > 0.5


def test_basin_command_prints_json_and_refuses_bad_input():
    runner = CliRunner()
    r = runner.invoke(app, ["basin", "access", "--amounts", "1", "--steps", "5", "--seeds", "2", "--n", "10",
                            "--json", "--set", "M=9", "--set", "difficulty=6", "--set", "train.batch=8"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["task"] == "access" and out["controller"] == "mlp" and out["seeds"] == 2 and out["rows"][0]["recovered"] == 2
    for args, needle in ((["merge"], "no hand-wired circuit for merge (its phase-free circuits: --circuit fixed, lt)"),
                         (["walkbst"], "no hand-wired circuit for walkbst; basin knows"), (["copy", "--mode", "warp"], "--mode"),
                         (["copy", "--amounts", "a,b"], "--amounts"), (["copy", "--seeds", "0"], "--seeds"),
                         (["sort"], "unknown task 'sort'"), (["copy", "--set", "train.lr=x"], "train.lr"),
                         (["copy", "--mode", "mix", "--amounts", "1.5"], "between 0 and 1"),
                         (["copy", "--set", "model.R=2"], "--set model.R: basin uses the circuit"),
                         (["copy", "--circuit", "uniform"], "no such circuit for copy (its variants: none)"),
                         (["permutation", "--circuit", "uniform", "--set", "M=13"], "from M = 14 on (--set M=14); M is 13"),
                         (["copy", "--set", "train.population.mode=restart"], "without restarts")):
        r = runner.invoke(app, ["basin", *args])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output


def test_an_lstm_learns_the_circuit_whatever_its_state():
    cfg = basin_config("access", overrides=["M=9", "difficulty=6", "model.controller=lstm", "model.hidden=16"],
                       seeds=2)
    model = Trainer(cfg).model
    assert model.controller.recurrent
    distill(model, CIRCUITS["access"][1], steps=400, length=4)
    d = np.repeat(np.arange(1, 7), 30)
    for discrete in (False, True):
        assert (evaluate(model, cfg, 9, d, np.random.default_rng(0), discrete=discrete)["error"] == 0).all()


def test_measure_refuses_a_config_made_for_another_circuit():
    cfg = basin_config("permutation", overrides=["M=14"], seeds=1, variant="uniform")   # repeat 3
    with pytest.raises(ConfigError, match="the circuit default wants 4 and 1"):
        measure(cfg, "scale", [1.0], 0)


def test_a_model_grown_by_a_gate_keeps_its_program_and_its_solution():
    """The phase-free Permutation circuit learned into an MLP on READ, INC, ADD, WRITE (three times), then
    grown to READ, INC, ADD, MIN, WRITE: the grown model still solves the task, fuzzy and discretized (the
    task's targets are the oracle); every logit that names MIN keeps the fresh model's initialization."""
    cfg = basin_config("permutation", overrides=["M=14", "difficulty=4"], seeds=1, variant="uniform")
    gates = ["READ", "INC", "ADD", "WRITE"]
    small = NRAM(4, gates, 3, "mlp", cfg.model.hidden, [0])
    assert distill(small, circuit("permutation", "uniform").rules) < 1e-3
    fresh = NRAM(4, ["READ", "INC", "ADD", "MIN", "WRITE"], 3, "mlp", cfg.model.hidden, [7])
    grown = NRAM(4, ["READ", "INC", "ADD", "MIN", "WRITE"], 3, "mlp", cfg.model.hidden, [7])
    grown.load_state_dict(grow(small, grown))
    d, rng = np.repeat(np.arange(1, 5), 30), np.random.default_rng(3)
    for discrete in (False, True):
        assert (evaluate(grown, cfg, 14, d, rng, discrete=discrete)["error"] == 0).all()
        assert (evaluate(fresh, cfg, 14, d, rng, discrete=discrete)["error"] > 0.3).all()
    names = output_names(grown)
    new = torch.tensor(["MIN" in str(n) for n in names])
    assert 0 < int(new.sum()) < len(names)
    for p, q in ((grown.controller.head.weight, fresh.controller.head.weight),
                 (grown.controller.head.bias, fresh.controller.head.bias)):
        assert torch.equal(p[..., new], q[..., new]) and not torch.equal(p[..., ~new], q[..., ~new])
    assert torch.equal(grown.controller.l1.weight, small.controller.l1.weight)
