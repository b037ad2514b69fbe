"""Every shipped model loads and, at a small difficulty, gets every scored cell right (no training)."""
import numpy as np
import pytest

from nramctl.evaluate import compare
from nramctl.experiment import load_model
from nramctl.runs import PRETRAINED, RunStore
from nramctl.tasks import task

SHIPPED = sorted(p.name for p in PRETRAINED.iterdir() if p.is_dir()) if PRETRAINED.is_dir() else []


def test_the_easy_tasks_ship_a_model():
    assert {"access", "copy"} <= set(SHIPPED), SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_exact(name):
    run, seed = RunStore().resolve(f"pretrained/{name}")
    cfg, model, _ = load_model(run, seed)
    t = task(cfg.task)
    d = np.arange(t.min_difficulty, min(cfg.difficulty, 4) + 1).repeat(10)
    res = compare(model, cfg, cfg.M, d, np.random.default_rng(0))
    assert res["error"][0] == 0 and res["discrete_error"][0] == 0 and res["discrete_agrees"][0] == 1
