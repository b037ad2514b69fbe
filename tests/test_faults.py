"""Faults and bad input: random bad values and files, torn files, kills at random moments, SIGTERM,
non-finite numbers, durable writes, a failing kernel build, reserved names."""
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from nramctl import native, runs as runs_module
from nramctl.cli import app
from nramctl.config import task_config
from nramctl.data import make_batch
from nramctl.machine import fuzzy_run
from nramctl.train import Trainer, build_model

from test_cli import FAST, cli, last_metrics, one_line_error, trained  # noqa: F401  (fixture)

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# What the test holds to be out of range for each field, written here independently of config.py.
NOT_A_NUMBER = st.one_of(st.text(max_size=12).filter(lambda x: x.strip() not in ("", "~", "null") and
                                                     not x.strip().lstrip("+-").replace(".", "").replace("e", "").isdigit()),
                         st.lists(st.integers(), max_size=2), st.just("{a: 1}"), st.just(".nan"), st.just(".inf"),
                         st.just("-.inf"))
NEGATIVE = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
NON_POSITIVE = st.one_of(NEGATIVE, st.just(0))
HUGE = st.integers(min_value=10**12, max_value=10**40)
BAD = {
    "M": st.one_of(st.integers(max_value=2), HUGE),
    "difficulty": st.one_of(st.integers(max_value=0), HUGE),
    "model.R": st.one_of(NON_POSITIVE, HUGE), "model.hidden": st.one_of(NON_POSITIVE, HUGE),
    "model.repeat": st.one_of(NON_POSITIVE, HUGE),
    "train.steps": st.one_of(NON_POSITIVE, HUGE), "train.batch": st.one_of(NON_POSITIVE, HUGE),
    "train.seeds": st.one_of(NON_POSITIVE, HUGE), "train.seed": st.one_of(NEGATIVE, HUGE),
    "train.lr": st.one_of(NON_POSITIVE, st.floats(min_value=1e3, max_value=1e300)),
    "train.clip_norm": NON_POSITIVE, "train.clip_activation": NON_POSITIVE,
    "train.log_eps": st.one_of(NON_POSITIVE, st.floats(min_value=1.0, max_value=1e9)),
    "train.target_error": st.one_of(NEGATIVE, st.floats(min_value=1.01, max_value=1e9)),
    "train.polish_steps": st.one_of(NEGATIVE, HUGE),
    "train.eval_every": NON_POSITIVE, "train.eval_examples": st.one_of(NON_POSITIVE, HUGE),
    "train.log_every": NON_POSITIVE, "train.checkpoint_every": NON_POSITIVE,
    "train.curriculum.threshold": st.one_of(NEGATIVE, st.floats(min_value=1.01, max_value=1e9)),
    "train.curriculum.window": NON_POSITIVE, "train.curriculum.min_batches": NEGATIVE,
    "train.curriculum.p_any": st.one_of(NEGATIVE, st.floats(min_value=1.01, max_value=9.0)),
    "train.noise.eta": st.one_of(NEGATIVE, st.floats(min_value=1e4, max_value=1e300)),
    "train.noise.gamma": NEGATIVE,
    "train.entropy.coef": st.one_of(st.floats(min_value=101, max_value=1e300), st.floats(max_value=-101, min_value=-1e300)),
    "train.entropy.start": st.one_of(NEGATIVE, HUGE),
    "train.lr_decay": st.one_of(NON_POSITIVE, st.floats(min_value=1.01, max_value=1e9)),
    "train.dropout": st.one_of(NEGATIVE, st.floats(min_value=0.91, max_value=1e9),
                               st.floats(min_value=0.01, max_value=0.9)),       # copy's controller is an MLP
    "train.population.deadlines": st.sampled_from(["[[100]]", "[[2.5, 0.1]]", "[[100, 1.5]]", "[[-3, 0.1]]", "[5]",
                                                   "[[1, .inf]]", "{a: [1, 2]}", "[[1, 0.1], [2]]", "[[x, 0.1]]"]),
    "train.init": st.sampled_from(["run-99", "../run-1", "pretrained/nope", "run-1/seed-x/y", "/etc", "pretrained/swap"]),
    "train.entropy.decay": st.one_of(NON_POSITIVE, st.floats(min_value=1.01, max_value=1e9)),
    "train.until": st.text(max_size=8).filter(lambda x: x.strip() not in ("first", "all")),
    "model.controller": st.sampled_from(["gru", "MLP ", "rnn", "1", "[mlp]"]),
    "model.gates": st.sampled_from(["[]", "[READ,MUL]", "READ", "[[READ]]", "{READ: 1}"]),
    "T": st.one_of(st.sampled_from(["n//0", "n*n*n*n*n*n*n*n*n*n", "n**2", "import os", "(" * 300 + "n",
                                    "n//(n-n)", "99999999*n", "2*n+", "lambda: 1", "__import__('os')"]),
                   st.integers(min_value=10**8, max_value=10**30).map(lambda k: f"{k}*n")),
}


def as_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def assert_refused(r, root):
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert not root.exists() or not any(root.iterdir()), list(root.iterdir())


@FUZZ
@given(key=st.sampled_from(sorted(BAD)), data=st.data())
def test_fuzz_bad_set_values_are_refused_in_one_line(tmp_path, key, data):
    value = as_text(data.draw(BAD[key]))
    root = tmp_path / "fuzz-runs"
    r = CliRunner().invoke(app, ["train", "copy", "--set", f"{key}={value}", "--runs-dir", str(root)])
    assert_refused(r, root)
    assert key.split(".")[-1] in r.output or "timestep rule" in r.output or "memory" in r.output, r.output


@FUZZ
@given(key=st.sampled_from(sorted(BAD)), data=st.data(),
       junk=st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=2))
def test_fuzz_bad_config_files_are_refused_in_one_line(tmp_path, key, data, junk):
    """A random YAML document with one bad value (and maybe unknown keys), in the task entry or in
    `defaults`, or as raw random text."""
    value = as_text(data.draw(BAD[key]))
    if key != "T":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass                                                        # stays a (bad) string
    nested = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    where = data.draw(st.sampled_from(["task", "defaults"]))
    doc = {"tasks": {"copy": {**junk, **nested} if where == "task" else dict(junk)}}
    if where == "defaults":
        doc["defaults"] = nested
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc) if data.draw(st.booleans()) else data.draw(st.text(max_size=200)))
    root = tmp_path / "fuzz-runs"
    r = CliRunner().invoke(app, ["train", "copy", "--config", str(path), "--runs-dir", str(root)])
    assert_refused(r, root)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "runs"
    r = CliRunner().invoke(app, ["train", "copy", "--M", "9", "--difficulty", "3", "--steps", "2",
                                 *FAST, "--runs-dir", str(root), "--json"])
    assert r.exit_code == 0, r.output
    return root


BAD_EVAL = {
    "--M": st.one_of(st.integers(max_value=6), st.integers(min_value=401, max_value=10**15)),
    "--n": st.one_of(st.integers(max_value=0), st.integers(min_value=10**6 + 1, max_value=10**15)),
    "--difficulty": st.one_of(st.integers(max_value=0), st.integers(min_value=5, max_value=10**12)),
}


@FUZZ
@given(command=st.sampled_from(["eval", "generalize", "inspect"]), flag=st.sampled_from(sorted(BAD_EVAL)),
       data=st.data())
def test_fuzz_bad_eval_generalize_inspect_options(small_run, command, flag, data):
    if command == "inspect" and flag == "--n":
        flag = "--example"
        value = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=10**6, max_value=10**15)))
    else:
        value = data.draw(BAD_EVAL[flag])
    if command == "generalize" and flag == "--difficulty" and 5 <= value:
        value += 10                       # generalize runs at --M 13 below: difficulty 6 still fits
    before = sorted(p.relative_to(small_run) for p in small_run.rglob("*"))
    extra = ["--M", "13"] if command == "generalize" and flag != "--M" else []
    r = CliRunner().invoke(app, [command, "run-1", flag, str(value), *extra, "--runs-dir", str(small_run)])
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert sorted(p.relative_to(small_run) for p in small_run.rglob("*")) == before


def test_a_config_without_defaults_section_gets_the_shipped_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("tasks:\n  copy: {M: 9, difficulty: 3}\n")
    mine, shipped = task_config("copy", path), task_config("copy")
    assert not mine.train.noise.enabled and not mine.train.entropy.enabled
    shipped.M, shipped.difficulty, shipped.train.polish_steps = 9, 3, 0
    assert mine == shipped


def test_memory_estimate_refuses_before_allocating(cli):
    one_line_error(cli("train", "copy", "--set", "train.batch=100000", "--set", "train.seeds=64"),
                   "would need about")
    assert not cli.root.exists() or not any(cli.root.iterdir())


def test_the_memory_limit_guards_training_not_reading(cli, monkeypatch):
    """A run trained where memory was plentiful can still be evaluated on a smaller machine; training
    it further there is refused."""
    trained(cli)
    monkeypatch.setenv("NRAMCTL_MAX_MEMORY", "1M")
    assert cli("eval", "run-1", "--n", 5).exit_code == 0
    one_line_error(cli("train", "--resume", "run-1", "--steps", 30), "would need about")


@pytest.mark.parametrize("name", ["latest", "pretrained"])
def test_reserved_run_names(cli, name):
    one_line_error(cli("train", "copy", "--M", 9, "--steps", 1, "--name", name), "reserved")


def test_resume_extends_steps_and_refuses_other_overrides(cli):
    trained(cli)
    one_line_error(cli("train", "--resume", "run-1", "--set", "train.lr=0.1"), "--set cannot change")
    one_line_error(cli("train", "--resume", "run-1", "--M", 12), "--M cannot change")
    one_line_error(cli("train", "--resume", "run-1", "--steps", 10), "already at step 20")
    r = cli("train", "--resume", "run-1", "--steps", 30, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 30
    assert yaml.safe_load((cli.root / "run-1" / "config.yaml").read_text())["train"]["steps"] == 30


def test_minutes_set_and_extend_a_time_budget(cli):
    trained(cli, "--minutes", 5)
    cfg = lambda: yaml.safe_load((cli.root / "run-1" / "config.yaml").read_text())["train"]
    assert cfg()["max_minutes"] == 5
    one_line_error(cli("train", "--resume", "run-1", "--minutes", 0), "positive")
    one_line_error(cli("train", "--resume", "run-1", "--minutes", 1e-6), "already trained")
    r = cli("train", "--resume", "run-1", "--minutes", 7, "--steps", 25, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 25 and cfg()["max_minutes"] == 7 and cfg()["steps"] == 25


def test_torn_last_metrics_line_is_dropped_with_a_warning(cli):
    trained(cli)
    metrics = cli.root / "run-1" / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"step": 22, "seed": 0, "lo')                     # a power cut mid-append
    r = cli("train", "--resume", "run-1", "--steps", 30, "--json")
    assert r.exit_code == 0, r.output
    assert "dropped a torn last line of metrics.jsonl" in r.output and "Traceback" not in r.output
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 30 and len(steps) == len(set(steps))
    lines = metrics.read_text().splitlines()
    lines.insert(1, "garbage")                                      # damage elsewhere is not a crash artefact
    metrics.write_text("\n".join(lines) + "\n")
    one_line_error(cli("train", "--resume", "run-1", "--steps", 40), "metrics.jsonl line 2 is corrupt")


def _launch(root, args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-c", "from nramctl.cli import main; main()", "train", *map(str, args),
           "--runs-dir", str(root), "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


SOAK = ["copy", "--M", 9, "--difficulty", 3, "--steps", 500, *FAST, "--set", "train.log_every=3",
        "--set", "train.checkpoint_every=7", "--set", "train.eval_every=20"]


def test_soak_random_kills_then_resume_end_bit_identical(tmp_path):
    """SIGKILL (and a few SIGTERM / SIGINT) at 12 random moments, each time resuming; the run that
    finally completes has exactly the metrics and weights of one that was never interrupted."""
    root = tmp_path / "runs"
    whole = _launch(root, [*SOAK, "--name", "whole"])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    rnd, kills, at = random.Random(7), 0, []
    metrics = root / "soak" / "metrics.jsonl"
    lines = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0
    while kills < 12:
        args = ["--resume", "soak"] if (root / "soak").is_dir() else [*SOAK, "--name", "soak"]
        seen = lines()
        proc = _launch(root, args)
        if rnd.random() < 0.3:                                          # any moment, start-up included
            time.sleep(rnd.uniform(0.2, 2.0))
        else:                                                           # while it trains
            deadline = time.time() + 60
            while lines() <= seen + 1 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.4))
        sig = rnd.choice([signal.SIGKILL] * 4 + [signal.SIGTERM, signal.SIGINT])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break                                                       # finished before the signal
        kills += 1
        assert b"Traceback" not in err, err
        if (root / "soak").is_dir():
            st = json.loads(CliRunner().invoke(app, ["runs", "--json", "--runs-dir", str(root)]).output)
            row = {r["name"]: r for r in st}["soak"]
            if row["state"] == "budget" and row["steps"] == 500:
                kills -= 1                      # it had ended, its record whole, as the signal landed
                break
            assert row["state"] == "interrupted"
            at.append((sig.name, row["steps"]))
    print("killed (signal, checkpointed step):", at)
    assert kills >= 10 and len({step for _, step in at if step}) >= 4     # kills landed all along the run
    final = _launch(root, ["--resume", "soak"])
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert json.loads(out)["steps"] == 500
    assert last_metrics(root, "soak") == last_metrics(root, "whole")
    a = torch.load(root / "soak/checkpoints/last.pt", weights_only=True)["trainer"]["model"]
    b = torch.load(root / "whole/checkpoints/last.pt", weights_only=True)["trainer"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(root.glob(".new-*")) and not list(root.rglob("*.tmp"))


def test_a_run_whose_process_died_shows_as_interrupted(cli):
    trained(cli)
    status = cli.root / "run-1" / "status.json"
    st = json.loads(status.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st.update(state="running", pid=dead.pid)
    status.write_text(json.dumps(st))
    rows = json.loads(cli("runs", "--json").stdout)
    assert rows[0]["state"] == "interrupted"
    st.update(pid=os.getpid())                                          # alive: a resume is refused
    status.write_text(json.dumps(st))
    assert json.loads(cli("runs", "--json").stdout)[0]["state"] == "running"
    one_line_error(cli("train", "--resume", "run-1", "--steps", 40), "is being trained by process")


def _cfg(**extra):
    sets = ["M=9", "difficulty=3", "train.batch=8", "model.hidden=16", "train.seeds=2",
            *[f"{k}={v}" for k, v in extra.items()]]
    return task_config("copy", None, sets)


def test_a_nonfinite_gradient_rolls_back_that_seed_only():
    ref, hit = Trainer(_cfg()), Trainer(_cfg())
    for _ in range(3):
        ref.train_step()
        hit.train_step()
    params = list(hit.model.parameters())
    before = [p.detach().clone() for p in params]
    moments = {i: {k: v.clone() for k, v in st.items()} for i, st in hit.opt.state.items()}
    handle = params[0].register_hook(lambda g: g.index_fill(0, torch.tensor([1]), float("nan")))
    _, _, bad = hit.train_step()
    handle.remove()
    ref.train_step()
    assert bad.tolist() == [False, True] and hit.nonfinite == [0, 1]
    for p, b, q in zip(params, before, ref.model.parameters()):
        assert torch.equal(p[1], b[1])                                  # seed 1 is where it was
        assert torch.equal(p[0], q[0])                                  # seed 0 trained as if nothing happened
    for i, st in hit.opt.state.items():
        assert torch.equal(st["exp_avg"][1], moments[i]["exp_avg"][1])
        assert torch.equal(st["exp_avg_sq"][1], moments[i]["exp_avg_sq"][1])
        assert torch.equal(st["exp_avg"][0], ref.opt.state[i]["exp_avg"][0])
    for _ in range(3):
        hit.train_step()
    assert all(torch.isfinite(p).all() for p in hit.model.parameters())


def test_a_rollback_is_recorded_in_the_metrics():
    tr = Trainer(_cfg(**{"train.steps": 6, "train.log_every": 2, "train.eval_every": 100}))
    nan_at_step_3 = lambda g: g.index_fill(0, torch.tensor([1]), float("nan")) if tr.step == 2 else g
    next(tr.model.parameters()).register_hook(nan_at_step_3)
    logged = []
    tr.run(on_log=logged.extend)
    marks = {(r["step"], r["seed"]): r.get("nonfinite_rolled_back") for r in logged}
    assert marks[(4, 1)] == 1 and marks[(4, 0)] is None and marks[(6, 1)] is None and marks[(2, 1)] is None
    assert tr.nonfinite == [0, 1]


def test_a_nonfinite_model_is_never_kept_as_best():
    tr = Trainer(_cfg(**{"train.eval_examples": 20}))
    tr.train_step()
    with torch.no_grad():
        next(tr.model.parameters())[1].fill_(float("nan"))
    kept = {k: v[1].clone() for k, v in tr.best_params.items()}
    tr.check()
    assert tr.best_error[1] == float("inf")
    assert all(torch.equal(tr.best_params[k][1], v) for k, v in kept.items())


def test_streamed_evaluation_equals_the_full_run():
    """Evaluation keeps one memory per example, not one per step: same predictions, halts and loss."""
    cfg = _cfg(**{"model.controller": "lstm"})
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    b = make_batch("copy", 9, rng.integers(1, 4, size=2 * 12), rng, cfg.T)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)                                                   # stops above 0.5 at varied steps
    full = fuzzy_run(model, b)                                          # grad on: every step kept
    with torch.no_grad():
        streamed = fuzzy_run(model, b)
        early = fuzzy_run(model, b, need_loss=False)
    assert torch.equal(full.pred, streamed.pred) and torch.equal(full.halt, streamed.halt)
    assert torch.equal(full.pred, early.pred)
    assert torch.allclose(full.loss.detach(), streamed.loss, rtol=1e-5)
    assert len(set(full.halt.tolist())) > 1


def test_files_and_their_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)
    monkeypatch.setattr(runs_module.os, "fsync", spy)
    runs_module.atomic_save({"x": torch.zeros(2)}, tmp_path / "a.pt")
    assert synced == [False, True]                                     # the file, then the directory
    synced.clear()
    runs_module.atomic_write(tmp_path / "s.json", "{}")
    assert synced == [False, True]


def _build_in_subprocess(cache, cxx):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "CXX": cxx, "NRAMCTL_NATIVE": "1"}
    code = "from nramctl import native; print(native.library() is not None)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    return p.stdout.strip(), p.stderr


def test_a_failed_kernel_build_warns_once_and_is_remembered(tmp_path):
    log = tmp_path / "calls"
    fake = tmp_path / "badcxx"
    fake.write_text(f"#!/bin/sh\necho called >> {log}\necho 'error: no such thing' >&2\nexit 1\n")
    fake.chmod(0o755)
    out, err = _build_in_subprocess(tmp_path / "cache", str(fake))
    assert out == "False"
    warnings = [x for x in err.splitlines() if x.strip()]
    assert len(warnings) == 1 and "did not build" in warnings[0], err
    calls = log.read_text().count("called")
    assert calls == 3                              # with -march=native and OpenMP, OpenMP only, neither
    out, err = _build_in_subprocess(tmp_path / "cache", str(fake))
    assert out == "False" and err.strip() == "" and log.read_text().count("called") == calls


@pytest.mark.skipif(not native.compiler(), reason="no C++ compiler")
def test_cxx_with_arguments_builds_the_kernel(tmp_path):
    cxx = native.compiler()[0]
    assert native.compiler() is not None
    out, err = _build_in_subprocess(tmp_path / "cache", f"{cxx} -DNRAMCTL_TEST=1")
    assert out == "True", err
