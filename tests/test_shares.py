"""One share of seeds solved pooled over runs (`nramctl runs share`), against counts made by hand."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from nramctl.cli import app
from nramctl.config import task_config, to_dict
from nramctl.shares import PoolError, pool, wilson


def seed(n, solved_step=None, steps=100):
    return {"seed": n, "solved_step": solved_step, "steps": steps, "best_error": 0.0 if solved_step else 0.5}


def run(name, seeds, *overrides, cpu=None, task="listk"):
    return {"name": name, "config": to_dict(task_config(task, overrides=list(overrides))), "seeds": seeds,
            "cpu_minutes": cpu}


def test_pooled_share_counts_every_tried_seed_once():
    # run-1: seeds 0-3, two solved, seed 3 refilled at the last check (no step: not tried);
    # run-2: seeds 4-7 on another budget, one solved. By hand: 3 solved of 7 tried.
    a = run("run-1", [seed(0, 400), seed(1), seed(2, 900), seed(3, steps=0)], "train.seeds=4", cpu=10.0)
    b = run("run-2", [seed(4), seed(5), seed(6, 1700), seed(7)], "train.seed=4", "train.seeds=4",
            "train.max_minutes=12", cpu=12.0)
    out = pool([a, b])
    assert (out["seeds_tried"], out["seeds_solved"]) == (7, 3)
    assert out["share"] == pytest.approx(3 / 7)
    assert (out["share_low"], out["share_high"]) == pytest.approx(wilson(3, 7))
    assert [(s["run"], s["seed"], s["step"]) for s in out["solved"]] == \
        [("run-1", 0, 400), ("run-1", 2, 900), ("run-2", 6, 1700)]
    assert [r["seeds"] for r in out["runs"]] == ["0-2", "4-7"]
    assert out["cpu_minutes"] == 22.0 and out["solved_per_cpu_minute"] == pytest.approx(3 / 22)


def test_rate_per_cpu_minute_only_when_every_run_has_its_minutes():
    out = pool([run("run-1", [seed(0, 100)], cpu=5.0), run("run-2", [seed(1)], "train.seed=1")])
    assert out["cpu_minutes"] is None and out["solved_per_cpu_minute"] is None


def test_a_seed_in_two_runs_is_refused():
    # restarts number fresh seeds on from the run's last: run-1's seed 16 is run-2's first
    a = run("run-1", [seed(0), seed(16, 300)])
    b = run("run-2", [seed(16, 300), seed(17)], "train.seed=16")
    with pytest.raises(PoolError, match="seeds? 16 trained in both run-1 and run-2"):
        pool([a, b])


@pytest.mark.parametrize("keys", [["train.lr=0.01"], ["train.population.mode=restart", "train.population.patience=500"],
                                  ["M=30"], ["train.eval_every=50"]])
def test_runs_of_different_settings_are_refused(keys):
    with pytest.raises(PoolError, match=keys[0].split("=")[0].replace(".", r"\.")):
        pool([run("run-1", [seed(0)]), run("run-2", [seed(1)], "train.seed=1", *keys)])


def test_runs_of_different_tasks_are_refused():
    with pytest.raises(PoolError, match="walkbst"):
        pool([run("run-1", [seed(0)]), run("run-2", [seed(1)], task="walkbst")])


def write_run(root, r):
    path = root / r["name"]
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(r["config"], sort_keys=False))
    (path / "status.json").write_text(json.dumps({"state": "budget", "seeds": r["seeds"]}))
    if r["cpu_minutes"] is not None:
        (path / "reproduce.json").write_text(json.dumps({"cpu_minutes": r["cpu_minutes"]}))


def test_runs_share_command(tmp_path):
    root = tmp_path / "runs"
    write_run(root, run("run-1", [seed(0, 400), seed(1)], "train.seeds=2", cpu=4.0))
    write_run(root, run("run-2", [seed(2), seed(3, 800)], "train.seed=2", "train.seeds=2", cpu=4.0))
    write_run(root, run("run-3", [seed(3), seed(4)], "train.seed=3", "train.seeds=2"))
    invoke = lambda *a: CliRunner().invoke(app, ["runs", "share", *a, "--runs-dir", str(root)])
    r = invoke("run-1", "run-2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["seeds_tried"], out["seeds_solved"], out["solved_per_cpu_minute"]) == (4, 2, 0.25)
    assert [x["state"] for x in out["runs"]] == ["budget", "budget"]
    r = invoke("run-1", "run-2")
    assert r.exit_code == 0 and "2/4 = 50%" in r.output and "0.25 solved seeds per CPU-minute" in r.output
    for args, needle in [(["run-2", "run-3"], "seed 3 trained in both"), (["run-1/seed-0"], "whole run"),
                         (["run-1", "run-1"], "given twice"), (["run-9"], "no run"), (["../x"], "invalid run name")]:
        r = invoke(*args)
        lines = [x for x in r.output.strip().splitlines() if x.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in r.output, (args, r.output)
