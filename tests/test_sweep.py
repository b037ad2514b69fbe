"""Sweeps: the grid and random-search parser, a local sweep end to end, resuming after the driver was
killed, no oversubscription, and the same sweep on a real local Ray cluster."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from nramctl.cli import app
from nramctl.sweep import parse_set, settings, split_top

from test_cli import one_line_error

FAST = ["--set", "train.batch=16", "--set", "model.hidden=16", "--set", "train.eval_examples=60",
        "--set", "train.eval_every=20"]


def test_split_on_top_level_commas_only():
    assert split_top("0.01,0.003") == ["0.01", "0.003"]
    assert split_top("[READ,INC],[READ,WRITE]") == ["[READ,INC]", "[READ,WRITE]"]
    assert split_top("{a: 1, b: 2},'x,y'") == ["{a: 1, b: 2}", "'x,y'"]
    assert parse_set("model.gates=[READ,INC]") == ("model.gates", ("values", ["[READ,INC]"]))


def test_grid_is_the_product_of_comma_valued_sets():
    grid = settings(["train.lr=0.01,0.003", "model.hidden=16,32,64"])
    assert len(grid) == 6 and grid[0] == ["train.lr=0.01", "model.hidden=16"]
    assert {tuple(g) for g in grid} == {(f"train.lr={a}", f"model.hidden={b}")
                                        for a in ("0.01", "0.003") for b in (16, 32, 64)}


def test_random_search_draws_from_the_distributions_reproducibly():
    sets = ["train.lr=loguniform(0.0001,0.1)", "train.noise.eta=uniform(0,1)", "model.controller=choice(mlp,lstm)",
            "model.hidden=32,64"]
    a, b = settings(sets, 200, 5), settings(sets, 200, 5)
    assert a == b and settings(sets, 200, 6) != a
    lrs = [float(s[0].split("=")[1]) for s in a]
    assert all(1e-4 <= x <= 0.1 for x in lrs)
    logs = [math.log10(x) for x in lrs]                           # log-uniform: about half below 10^-2.5
    assert 0.35 < sum(x < -2.5 for x in logs) / len(logs) < 0.65
    assert {s[2] for s in a} == {"model.controller=mlp", "model.controller=lstm"}
    assert {s[3] for s in a} == {"model.hidden=32", "model.hidden=64"}


@pytest.mark.parametrize("bad, needle", [
    ("train.lr=loguniform(0,1)", "0 < a < b"), ("train.lr=uniform(a,b)", "two numbers"),
    ("train.lr=[1,2", "unbalanced"), ("train.lr", "expected KEY="),
])
def test_bad_sweep_sets(bad, needle, tmp_path):
    r = CliRunner().invoke(app, ["sweep", "access", "--set", bad, "--samples", "2", "--runs-dir", str(tmp_path)])
    one_line_error(r, needle)


def sweep(root, *args):
    return CliRunner().invoke(app, ["sweep", *map(str, args), "--runs-dir", str(root)])


def test_a_local_sweep_trains_ordinary_runs_and_summarizes_them(tmp_path):
    root = tmp_path / "runs"
    r = sweep(root, "access", "--set", "train.lr=0.003,0.01", "--seeds", 3, "--seeds-per-run", 2, "--workers", 1,
              *FAST, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["sweep"] == "sweep-1" and len(out["rows"]) == 2
    m = yaml.safe_load((root / "sweep-1" / "sweep.yaml").read_text())
    assert [row["overrides"][0] for row in m["settings"]] == ["train.lr=0.003", "train.lr=0.01"]
    assert [(run["seed"], run["seeds"]) for run in m["settings"][0]["runs"]] == [(0, 2), (2, 1)]
    for row in out["rows"]:
        assert row["seeds_tried"] == 3 and row["finished_runs"] == 2
        assert row["share"] == row["seeds_solved"] / 3 and row["share_low"] <= row["share"] <= row["share_high"]
        assert set(row) >= {"config", "runs", "median_solved_step", "best_error"}
    env = json.loads((root / "sweep-1-000-1" / "environment.json").read_text())
    assert env["sweep"] == "sweep-1/setting-0"
    runs = json.loads(CliRunner().invoke(app, ["runs", "--json", "--runs-dir", str(root)]).output)
    assert sorted(x["name"] for x in runs) == ["sweep-1-000-0", "sweep-1-000-1", "sweep-1-001-0", "sweep-1-001-1"]
    ev = CliRunner().invoke(app, ["eval", "sweep-1-001-0", "--n", 10, "--runs-dir", str(root), "--json"])
    assert ev.exit_code == 0, ev.output
    again = json.loads(sweep(root, "show", "sweep-1", "--json").stdout)
    assert again["rows"] == out["rows"]
    pic = CliRunner().invoke(app, ["plot", "sweep-1", "--runs-dir", str(root), "--json"])
    assert pic.exit_code == 0, pic.output
    assert (root / "sweep-1" / "plots" / "shares.png").stat().st_size > 5000
    plan = json.loads(sweep(root, "access", "--set", "train.lr=0.1,0.2,0.3", "--seeds", 2, "--dry-run", "--json").stdout)
    assert len(plan["settings"]) == 3 and not (root / "sweep-2").exists()
    named = sweep(root, "access", "--name", "lr-scan", "--seeds", 1, "--workers", 1, *FAST, "--json")
    assert named.exit_code == 0 and json.loads(named.stdout)["sweep"] == "lr-scan"
    assert (root / "lr-scan-000-0" / "status.json").is_file()
    one_line_error(sweep(root, "access", "--name", "lr-scan"), "already exists")


def test_no_oversubscription(tmp_path):
    from nramctl.sweep import default_workers
    cores = os.cpu_count()
    assert default_workers(1) == cores and default_workers(2) * 2 <= cores and default_workers(cores + 5) == 1
    one_line_error(sweep(tmp_path, "access", "--workers", cores, "--threads", 2), "cores")


def test_resume_after_the_driver_is_killed(tmp_path):
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from nramctl.cli import main; main()", "sweep", "copy", "--set",
           "train.lr=0.003,0.01", "--seeds", 2, "--workers", 1, "--set", "M=9", "--set", "difficulty=3",
           "--set", "train.steps=150", "--set", "train.checkpoint_every=10", *FAST, "--runs-dir", root]
    proc = subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    first = root / "sweep-1-000-0" / "status.json"
    while time.time() < deadline and not (first.exists() and json.loads(first.read_text())["state"] in ("solved", "budget")):
        time.sleep(0.1)
    second = root / "sweep-1-000-1" / "metrics.jsonl"
    while time.time() < deadline and not (second.exists() and len(second.read_text().splitlines()) >= 2):
        time.sleep(0.05)                                               # the second run is under way
    os.killpg(proc.pid, signal.SIGKILL)                                # the driver and its workers
    proc.wait()
    from nramctl.runs import RunStore
    from nramctl.sweep import run_status
    while time.time() < deadline and run_status(RunStore(root), "sweep-1-000-1")[0] == "running":
        time.sleep(0.05)                               # its worker too is gone (a loaded machine is slow)
    done_before = (root / "sweep-1-000-0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    r = sweep(root, "--resume", "sweep-1", "--workers", 1, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert all(row["finished_runs"] == 2 and row["seeds_tried"] == 2 for row in rows), [(r["finished_runs"], r["seeds_tried"], r["runs"]) for r in rows]
    assert (root / "sweep-1-000-0" / "checkpoints" / "last.pt").stat().st_mtime_ns == done_before
    env = json.loads((root / "sweep-1-000-1" / "environment.json").read_text())
    assert len(env["sessions"]) == 2 and "--resume" in env["sessions"][1]["command"]   # resumed, not redone


EVERY10 = [x if x != "train.eval_every=20" else "train.eval_every=10" for x in FAST]


def _best_up_to(root, name, step):
    """A run's best checked error up to `step`, read from its metrics (what the summary does not use)."""
    errs = [r["eval_error"] for r in map(json.loads, (root / name / "metrics.jsonl").read_text().splitlines())
            if "eval_error" in r and r["step"] <= step]
    return min(errs)


def test_resume_leaves_a_run_that_a_live_process_trains_and_says_so(tmp_path):
    import socket
    root = tmp_path / "runs"
    r = sweep(root, "access", "--set", "train.lr=0.003,0.01", "--seeds", 1, "--workers", 1, "--set",
              "train.steps=20", *FAST, "--json")
    assert r.exit_code == 0, r.output
    run = root / "sweep-1-001-0"
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running", "pid": os.getpid(),
                                                 "host": socket.gethostname()}))   # as if this process trained it
    r = sweep(root, "--resume", "sweep-1", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["busy_runs"] == {"sweep-1-001-0": os.getpid()}
    assert f"left to the process training them (e.g. sweep-1-001-0: process {os.getpid()}" in r.output
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before     # not touched
    (run / "status.json").write_text(json.dumps(status))                      # once it ends
    assert sweep(root, "--resume", "sweep-1").exit_code == 0


def test_successive_halving_resumes_the_best_settings_with_a_larger_budget(tmp_path):
    root = tmp_path / "runs"
    lrs = ["0.0001", "0.0003", "0.001", "0.003"]
    r = sweep(root, "access", "--set", "M=10", "--set", "difficulty=8", "--set", f"train.lr={','.join(lrs)}",
              "--set", "train.steps=20", "--seeds", 1, "--workers", 1, "--halving", 2, *EVERY10,
              "--json")
    assert r.exit_code == 0, r.output
    h = yaml.safe_load((root / "sweep-1" / "sweep.yaml").read_text())["halving"]
    assert h["rung"] == 2 and [x["rung"] for x in h["history"]] == [0, 1]
    runs = {i: f"sweep-1-{i:03d}-0" for i in range(4)}
    # rung 0: all four at 20 steps; the two with the lowest error up to step 20 (ties: the earlier
    # setting, as the stable sort keeps it) go on to 40 steps, the better of those two to 80
    first = sorted(range(4), key=lambda i: _best_up_to(root, runs[i], 20))
    assert h["history"][0]["promoted"] == sorted(first[:2])
    second = sorted(first[:2], key=lambda i: _best_up_to(root, runs[i], 40))
    assert h["history"][1]["promoted"] == [second[0]]
    want = {i: 20 for i in range(4)} | {i: 40 for i in first[:2]} | {second[0]: 80}
    for i, name in runs.items():
        st = json.loads((root / name / "status.json").read_text())
        steps = [json.loads(x)["step"] for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert st["step"] == want[i] and steps == list(range(10, want[i] + 1, 10)), (i, st["step"], steps)
        env = json.loads((root / name / "environment.json").read_text())
        assert len(env["sessions"]) == {20: 1, 40: 2, 80: 3}[want[i]]          # resumed, never retrained
    rows = {row["setting"]: row for row in json.loads(r.stdout)["rows"]}
    assert {i: (rows[i]["rung"], rows[i]["budget"]) for i in range(4)} == \
        {i: ({20: 0, 40: 1, 80: 2}[s], s) for i, s in want.items()}
    assert json.loads(r.stdout)["rows"][0]["setting"] == second[0]
    # the same sweep resumed has nothing left to train
    again = sweep(root, "--resume", "sweep-1", "--workers", 1)
    assert again.exit_code == 0 and "rung 2: 0 run(s) to train" in again.output, again.output
    assert "every setting: M=10 difficulty=8" in again.output                # the overrides all four share
    assert f"rung 0 (20 steps): 4 setting(s), went on: {', '.join(map(str, sorted(first[:2])))}" in again.output
    assert json.loads(r.stdout)["halving"]["history"] == h["history"]
    one_line_error(sweep(root, "--resume", "sweep-1", "--halving", 3), "cannot change on --resume")


@pytest.mark.parametrize("args, needle", [
    (["--halving", 1], "ETA >= 2"), (["--rungs", 2], "--rungs needs --halving"),
    (["--halving", 2, "--ship"], "drop --ship"), (["--halving", 2, "--rungs", 0], "between 1 and"),
])
def test_bad_halving_options(tmp_path, args, needle):
    one_line_error(sweep(tmp_path, "access", "--set", "train.lr=0.01,0.003", *args), needle)


def test_rungs_cap_the_halving(tmp_path):
    root = tmp_path / "runs"
    r = sweep(root, "access", "--set", "M=10", "--set", "difficulty=8", "--set", "train.lr=0.0001,0.0003,0.001",
              "--set", "train.steps=10", "--seeds", 1, "--workers", 1, "--halving", 2, "--rungs", 2, *EVERY10,
              "--json")
    assert r.exit_code == 0, r.output
    h = yaml.safe_load((root / "sweep-1" / "sweep.yaml").read_text())["halving"]
    assert h["rung"] == 1 and len(h["history"]) == 1 and len(h["history"][0]["promoted"]) == 1
    assert sorted(row["budget"] for row in json.loads(r.stdout)["rows"]) == [10, 10, 20]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={tmp}"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    yield "auto"
    subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("ship", [False, True])
def test_a_sweep_on_a_local_ray_cluster(tmp_path, ray_cluster, ship):
    root = tmp_path / "runs"
    r = sweep(root, "access", "--set", "train.lr=0.003,0.01", "--seeds", 2, "--threads", 1, "--address",
              ray_cluster, *(["--ship"] if ship else []), *FAST, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["rows"]) == 2 and all(row["seeds_tried"] == 2 and row["finished_runs"] == 2 for row in out["rows"])
    for name in ("sweep-1-000-0", "sweep-1-000-1", "sweep-1-001-0", "sweep-1-001-1"):
        st = json.loads((root / name / "status.json").read_text())
        assert st["state"] in ("solved", "budget") and (root / name / "checkpoints" / "best.pt").is_file()
