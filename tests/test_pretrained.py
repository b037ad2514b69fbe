"""Every shipped model loads and gets every scored cell right over its whole training range, fuzzy and
discretized (no training); those trained to survive extra steps are exact 2 steps and T steps beyond
their rule (Permutation: discretized); each says how it was trained."""
import dataclasses
import json

import numpy as np
import pytest

from nramctl.config import task_config
from nramctl.data import extended_rule
from nramctl.evaluate import compare
from nramctl.experiment import load_model
from nramctl.runs import PRETRAINED, RunStore
from nramctl.tasks import task

SHIPPED = sorted(p.name for p in PRETRAINED.iterdir() if p.is_dir()) if PRETRAINED.is_dir() else []
# exact beyond their rule (measured: docs/RESULTS.md); the others still rely on being handed T(n) steps
HOLD_EXTRA = {2: {"access", "copy", "increment", "reverse", "swap", "listk", "walkbst"},
              "T": {"access", "copy", "increment", "reverse", "swap", "listk", "walkbst"}}
# discretized exact beyond their rule, the fuzzy machine within half a percent of cells (Permutation: 0.03-0.2%
# at lengths 4-6 on 500 examples each)
HOLD_EXTRA_DISCRETIZED = {2: {"permutation"}, "T": {"permutation"}}


def _model(name):
    run, seed = RunStore().resolve(f"pretrained/{name}")
    return load_model(run, seed)[:2]


def test_the_easy_tasks_ship_a_model():
    assert {"access", "increment", "copy", "reverse", "swap"} <= set(SHIPPED), SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_exact_over_its_training_range(name):
    cfg, model = _model(name)
    t = task(cfg.task)
    d = np.arange(t.min_difficulty, cfg.difficulty + 1).repeat(4)
    res = compare(model, cfg, cfg.M, d, np.random.default_rng(0))
    assert res["error"][0] == 0 and res["discrete_error"][0] == 0 and res["discrete_agrees"][0] == 1


EXTRA_CASES = ([(k, n, False) for k, names in HOLD_EXTRA.items() for n in sorted(names)]
               + [(k, n, True) for k, names in HOLD_EXTRA_DISCRETIZED.items() for n in sorted(names)])


@pytest.mark.parametrize("extra, name, discretized_only", EXTRA_CASES)
def test_shipped_model_survives_extra_steps(name, extra, discretized_only):
    cfg, model = _model(name)
    cfg = dataclasses.replace(cfg, T=extended_rule(cfg.T, extra))
    t = task(cfg.task)
    d = np.arange(t.min_difficulty, cfg.difficulty + 1).repeat(20 if discretized_only else 3)
    res = compare(model, cfg, cfg.M, d, np.random.default_rng(1))
    assert res["discrete_error"][0] == 0 and res["error"][0] <= (0.005 if discretized_only else 0)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_says_how_it_was_trained(name):
    info = json.loads((PRETRAINED / name / "training.json").read_text())
    cfg = RunStore().resolve(f"pretrained/{name}")[0].config()           # its config.yaml
    assert info["task"] == cfg.task and info["seed"] == cfg.train.seed
    assert info["circuit"] in ("fused", "compiled", "torch") and info["seeds_trained_together"] >= 1
    assert cfg.train.steps >= info["kept_step"]
    assert task_config(cfg.task).train.steps >= info["kept_step"]        # tasks.yaml as shipped reaches it
