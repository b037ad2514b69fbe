"""The command line through typer's CliRunner, into a temporary runs directory."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
import torch
from typer.testing import CliRunner

from nramctl.cli import app

FAST = ["--set", "train.batch=8", "--set", "model.hidden=16", "--set", "train.eval_examples=40",
        "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10"]


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args] + ["--runs-dir", str(tmp_path / "runs")])
    invoke.root = tmp_path / "runs"
    return invoke


def trained(cli, *extra):
    r = cli("train", "copy", "--M", 9, "--difficulty", 3, "--steps", 20, "--json", *FAST, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_train_creates_a_complete_run(cli):
    out = trained(cli)
    assert set(out) >= {"run", "path", "steps", "error"} and out["run"] == "run-1" and out["steps"] == 20
    run = cli.root / "run-1"
    for f in ("config.yaml", "metrics.jsonl", "status.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(rec) >= {"step", "loss", "error", "level", "examples_per_s"}
    assert trained(cli)["run"] == "run-2"
    assert not [p for p in run.rglob("*.tmp")]


def test_eval_generalize_inspect_runs(cli):
    trained(cli)
    r = cli("eval", "run-1", "--n", 20, "--difficulty", 2, "--json")
    ev = json.loads(r.stdout)
    assert set(ev) >= {"run", "M", "difficulty", "n", "discrete", "error", "example_error"}
    assert ev["n"] == 20 and ev["difficulty"] == 2 and 0 <= ev["error"] <= 1
    r = cli("eval", "run-1", "--n", 20, "--discrete", "--json")
    assert json.loads(r.stdout)["discrete"] is True
    r = cli("generalize", "--M", 13, "--n", 5, "--json")             # latest run by default
    g = json.loads(r.stdout)
    assert g["run"] == "run-1" and g["M"] == 13
    assert [row["difficulty"] for row in g["rows"]] == list(range(1, 7))   # 2n+1 <= 13
    assert set(g["rows"][0]) >= {"difficulty", "T", "error", "discrete_error", "discrete_agrees"}
    assert [row["T"] for row in g["rows"]] == [2 * n + 1 for n in range(1, 7)]
    assert (cli.root / "run-1" / "generalize-M13.json").is_file()
    r = cli("inspect", "run-1", "--json")
    tr = json.loads(r.stdout)
    step = tr["steps"][0]
    assert set(tr) >= {"run", "example", "steps"} and len(tr["steps"]) == 7      # T = 2*3+1
    assert set(step) >= {"step", "gates", "registers_before", "registers_after", "memory_changes", "stop"}
    assert len(step["gates"]) == 14 and set(step["gates"][0]) >= {"name", "inputs", "output"}
    assert set(step["gates"][0]["inputs"][0]) == {"source", "weight"}
    r = cli("inspect", "run-1", "--step", 5)
    assert r.exit_code == 0 and "READ" in r.output and "registers" in r.output
    r = cli("runs", "--json")
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "run-1" and set(rows[0]) >= {"name", "task", "M", "steps", "best_error", "state"}


def test_by_output_cell_against_a_plain_count():
    from nramctl.evaluate import by_output_cell
    g = torch.Generator().manual_seed(3)
    S, E, M = 2, 7, 9
    mask = torch.rand(S, E, M, generator=g) < 0.5
    wrong = torch.rand(S, E, M, generator=g) < 0.4
    bad, scored = by_output_cell(wrong, mask)
    want_bad, want_scored = [[0] * M for _ in range(S)], [[0] * M for _ in range(S)]
    for s in range(S):
        for e in range(E):
            k = 0
            for c in range(M):
                if mask[s, e, c]:
                    want_scored[s][k] += 1
                    want_bad[s][k] += int(wrong[s, e, c])
                    k += 1
    assert bad.tolist() == want_bad and scored.tolist() == want_scored


def test_eval_by_output_cell(cli):
    r = cli("eval", "pretrained/copy", "--difficulty", 5, "--n", 30, "--cells", "--json")
    cells = json.loads(r.stdout)["cells"]
    assert [(c["cell"], c["scored"], c["wrong"]) for c in cells] == [(k, 30, 0) for k in range(5)]
    trained(cli)
    ev = json.loads(cli("eval", "run-1", "--n", 40, "--difficulty", 3, "--cells", "--json").stdout)
    assert [c["scored"] for c in ev["cells"]] == [40, 40, 40]
    assert sum(c["wrong"] for c in ev["cells"]) / 120 == pytest.approx(ev["error"])
    r = cli("eval", "run-1", "--n", 40, "--difficulty", 3, "--cells")
    assert r.exit_code == 0 and "error by output cell" in r.output


def test_tasks_list_and_sample(cli):
    r = CliRunner().invoke(app, ["tasks", "--json"])
    assert len(json.loads(r.stdout)) == 10
    r = CliRunner().invoke(app, ["tasks", "sample", "copy", "--difficulty", "3", "--M", "9", "--n", "2",
                                 "--json"])
    s = json.loads(r.stdout)
    assert s["task"] == "copy" and len(s["examples"]) == 2
    ex = s["examples"][0]
    assert len(ex["memory"]) == 9 and ex["mask"] == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert ex["target"][4:7] == ex["memory"][1:4]


def last_metrics(root, name):
    recs = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("examples_per_s")
    return recs


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_and_resume_match_an_uninterrupted_run(cli, sig, code):
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM leave a resumable checkpoint; the resumed run ends
    like an uninterrupted one."""
    args = ["copy", "--M", 9, "--difficulty", 3, "--steps", 60, *FAST, "--set", "train.log_every=2"]
    assert cli("train", *args, "--name", "whole").exit_code == 0
    # same thread count as this process (conftest): float sums are identical only then
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-c", "from nramctl.cli import main; main()", "train", *map(str, args),
           "--name", "cut", "--runs-dir", str(cli.root), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = cli.root / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert b"nramctl train --resume cut" in err and b"Traceback" not in err
    status = json.loads((cli.root / "cut" / "status.json").read_text())
    assert status["state"] == "interrupted" and 0 < status["step"] < 60
    env = json.loads((cli.root / "cut" / "environment.json").read_text())
    assert env["command"].endswith(" ".join(["train", *map(str, args), "--name", "cut", "--runs-dir", str(cli.root),
                                             "--json"]))
    r = cli("train", "--resume", "cut", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 60
    assert last_metrics(cli.root, "cut") == last_metrics(cli.root, "whole")
    a = torch.load(cli.root / "cut/checkpoints/last.pt", weights_only=True)["trainer"]["model"]
    b = torch.load(cli.root / "whole/checkpoints/last.pt", weights_only=True)["trainer"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert needle in r.output, r.output


def test_memory_flag_alone_caps_the_difficulty(cli):
    """`train copy --M 12` is the paper's worked example: lengths up to 5 (2n + 1 <= 12 cells)."""
    r = cli("train", "copy", "--M", "12", "--steps", "1", "--json")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((cli.root / "run-1" / "config.yaml").read_text())
    assert (cfg["M"], cfg["difficulty"]) == (12, 5)


@pytest.mark.parametrize("args, needle", [
    (["train", "sort"], "unknown task 'sort'"),
    (["train", "copy", "--set", "train.lr=abc"], "train.lr"),
    (["train", "copy", "--set", "train.colour=1"], "unknown key 'train.colour'"),
    (["train", "copy", "--set", "model.gates=[READ,MUL]"], "unknown gate 'MUL'"),
    (["train", "copy", "--set", "model.controller=gru"], "model.controller"),
    (["train", "copy", "--set", "train.curriculum.start=0"], "train.curriculum.start: 0 must be between 1 and"),
    (["train", "copy", "--set", "model.stop_bias=-500.0"], "model.stop_bias: -500.0 must be between -100 and 100"),
    (["train", "copy", "--set", "model.keep_bias=500.0"], "model.keep_bias: 500.0 must be between -100 and 100"),
    (["train", "copy", "--M", "5", "--difficulty", "5"], "M=5 is too small for difficulty 5"),
    (["train", "copy", "--M", "2"], "M=2 is too small"),
    (["train", "copy", "--set", "T=n**2"], "bad timestep rule"),
    (["train", "copy", "--name", "../evil"], "invalid run name"),
    (["eval", "run-9"], "no run 'run-9'"),
    (["eval", "../../etc"], "invalid run name"),
    (["eval", "pretrained/nothing"], "no pretrained model"),
    (["inspect"], "no runs"),
])
def test_bad_input_gets_one_line_and_exit_2(cli, args, needle):
    one_line_error(cli(*args), needle)
    assert not cli.root.exists() or not any(cli.root.iterdir())


def test_sample_with_too_small_memory():
    one_line_error(CliRunner().invoke(app, ["tasks", "sample", "copy", "--M", "6", "--difficulty", "3"]),
                   "too small")


def test_bad_yaml_config(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  copy: [unclosed\n")
    one_line_error(cli("train", "copy", "--config", bad), "invalid YAML")
    bad.write_text("tasks:\n  copy:\n    M: twelve\n")
    one_line_error(cli("train", "copy", "--config", bad), "M: expected int, got 'twelve'")


def test_numbers_with_an_exponent_and_no_dot_are_floats(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field takes it as the number it writes
    from nramctl.config import ConfigError, task_config
    cfg = task_config("copy", overrides=["train.lr=1e-4", "train.noise.eta=2.5E+1", "model.stop_bias=-.5e1"])
    assert (cfg.train.lr, cfg.train.noise.eta, cfg.model.stop_bias) == (1e-4, 25.0, -5.0)
    own = tmp_path / "own.yaml"
    own.write_text("tasks:\n  copy:\n    M: 12\n    T: '2*n+1'\n    difficulty: 5\n    train: {lr: 3e-3}\n")
    assert task_config("copy", own).train.lr == 3e-3
    for bad in ("train.lr=1e", "train.lr=e-4", "train.lr=1e-4x", "train.steps=1e3"):
        with pytest.raises(ConfigError, match="expected"):
            task_config("copy", overrides=[bad])


def test_corrupt_foreign_and_old_checkpoints(cli):
    trained(cli)
    best = cli.root / "run-1" / "checkpoints" / "best.pt"
    good = best.read_bytes()
    best.write_bytes(b"not a checkpoint")
    one_line_error(cli("eval", "run-1"), "corrupt")
    torch.save({"weights": torch.zeros(3)}, best)
    one_line_error(cli("eval", "run-1"), "not a nramctl checkpoint")
    ck = torch.load(__import__("io").BytesIO(good), weights_only=True)
    ck["version"] = 99
    torch.save(ck, best)
    one_line_error(cli("eval", "run-1"), "checkpoint version 99")
    best.write_bytes(good)
    one_line_error(cli("inspect", "run-1", "--step", 99), "--step must be between 1 and")
    one_line_error(cli("eval", "run-1/seed-4"), "not seed-4")


def test_program_export_discrete_generalize_and_multi_seed(cli, tmp_path):
    out = trained(cli, "--seeds", 2, "--set", "model.controller=mlp")
    assert len(out["seeds"]) == 2
    r = cli("eval", "run-1/seed-1", "--n", 10, "--json")
    assert json.loads(r.stdout)["run"] == "run-1/seed-1"
    r = cli("inspect", "run-1/seed-0", "--program", "--json")
    prog = json.loads(r.stdout)
    assert prog["controller"] == "lookup table" and prog["circuits"][0]["steps"].startswith("1")
    assert cli("inspect", "run-1", "--program").exit_code == 0
    path = tmp_path / "prog.py"
    assert cli("export", "run-1", "--python", path).exit_code == 0
    ns = {}
    exec(path.read_text(), ns)
    memory = [4, 5, 6, 7, 0, 0, 0, 0, 0]
    assert 0 <= ns["run"](memory, 7) < 7 and len(memory) == 9
    r = cli("generalize", "run-1", "--M", 2_000_001, "--discrete", "--difficulty", 1000, "--n", 1, "--json")
    g = json.loads(r.stdout)
    assert g["rows"][0]["difficulty"] == 1000 and g["rows"][0]["T"] == 2001
    one_line_error(cli("generalize", "run-1", "--M", 1000), "use --discrete")


def test_export_refuses_an_lstm(cli, tmp_path):
    trained(cli, "--set", "model.controller=lstm")
    one_line_error(cli("export", "run-1", "--python", tmp_path / "x.py"), "lstm")
    prog = json.loads(cli("inspect", "run-1", "--program", "--json").stdout)
    assert prog["controller"] == "lstm network" and prog["circuits"][0]["first_step"] == 1


def test_bench_prints_figures():
    r = CliRunner().invoke(app, ["bench", "--steps", "1", "--M", "6", "--T", "3", "--batch", "4", "--json"])
    b = json.loads(r.stdout)
    assert set(b) >= {"example_timesteps_per_s", "seconds_per_step", "peak_rss_mb", "M", "seeds", "cpu"}
    r = CliRunner().invoke(app, ["bench", "--discrete", "--M", "100,100000", "--json"])
    d = json.loads(r.stdout)
    assert [row["M"] for row in d["rows"]] == [100, 100000] and d["slowest_over_fastest"] >= 1


def test_simd_level_names_the_widest_extension():
    """Benchmark rows say which SIMD the kernel ran with: the widest of the CPU's flags, whatever order
    /proc/cpuinfo lists them in."""
    from nramctl.native import simd_level
    assert simd_level("fpu sse2 avx fma avx2 bmi2") == "AVX2"
    assert simd_level("avx512f avx2 sse2 avx512bw") == "AVX-512"
    assert simd_level("fp asimd evtstrm aes") == "NEON"
    assert simd_level("fpu sse sse2") == "SSE2" and simd_level("") == "no SIMD flags"
    assert simd_level("avx512vl avx2") == "AVX2"            # only avx512f means the 512-bit registers


def test_reproduce_runs_the_protocol(cli):
    r = cli("reproduce", "access", "--seeds", 2, "--budget-minutes", 0.05, "--n", 3, "--up-to", 6,
            "--set", "train.eval_every=5", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)[0]
    assert res["task"] == "access" and res["seeds_tried"] == 2
    assert [row["difficulty"] for row in res["rows"]] == list(range(1, 7))
    assert (cli.root / res["run"] / "checkpoints" / "best.pt").is_file()


def test_commands_that_compute_nothing_do_not_import_torch(tmp_path):
    """`--help`, `runs` and `tasks` start without torch (or numpy), `--help` without PyYAML or the
    Markdown and Traceback renderers (markdown-it, pygments) too; `bench --startup` measures them."""
    from nramctl.bench import STARTUP_COMMANDS
    for args in STARTUP_COMMANDS:
        heavy = {"torch", "numpy"} | ({"yaml", "markdown_it", "pygments"} if args == ["--help"] else set())
        code = ("import sys\nsys.argv = ['nramctl', *%r]\nfrom nramctl.cli import main\ntry:\n    main()\n"
                "except SystemExit as e:\n    assert not e.code, e.code\n"
                "print(sorted(%r & set(sys.modules)))" % (args, heavy))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, NRAMCTL_RUNS_DIR=str(tmp_path)))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]", (args, out.stdout[-300:])


def test_help_stand_ins_load_the_real_renderers_on_use():
    """The stand-ins `--help` imports Typer's formatter with: the help is the same as with the real
    renderers, and a stand-in used anyway (a call, a class attribute, isinstance) is the real class."""
    code = """
import sys
sys.argv = ['nramctl', '--help']
from nramctl import cli
cli._help_without_unused_renderers()
from typer import rich_utils
assert 'rich.markdown' not in sys.modules and 'rich.traceback' not in sys.modules
md = rich_utils.Markdown('# title')
from rich.markdown import Markdown
from rich.traceback import Traceback
assert type(md) is Markdown and isinstance(md, rich_utils.Markdown)
assert rich_utils.Traceback.from_exception == Traceback.from_exception
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-500:]
    help_text = lambda pre: subprocess.run(
        [sys.executable, "-c", pre + "import sys; sys.argv = ['nramctl', *sys.argv[1:]]\n"
         "from nramctl.cli import main\nmain()", "--help"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, COLUMNS="100")).stdout
    assert help_text("import rich.markdown, rich.traceback\n") == help_text("") != ""


def test_bench_grid_of_seeds_and_threads_keeps_the_best_of_repeats(monkeypatch):
    """One row per (M, threads, seeds), each the best of --repeat timings; the summary takes the best
    over thread counts against the naive best over thread counts."""
    from nramctl import bench
    calls = []

    def fake_train(M, seeds, **sizes):
        calls.append((M, seeds))
        return {"M": M, "seeds": seeds, "threads": torch.get_num_threads(), "example_timesteps_per_s":
                1000.0 * seeds + 10 * torch.get_num_threads() + len(calls)}
    monkeypatch.setattr(bench, "bench_train", fake_train)
    monkeypatch.setattr(bench, "run_baseline", lambda script, b, m, T, R, h, th, steps: 100.0 * th)
    out = bench.bench_grid([6], [1, 2], [1, 3], repeat=2, baseline="naive.py", batch=4, T=3, R=4, hidden=8,
                           controller="lstm", steps=1)
    assert len(calls) == 8 and [(r["threads"], r["seeds"]) for r in out["rows"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert [r["example_timesteps_per_s"] for r in out["rows"]] == [1012, 3014, 1026, 3028]   # the later repeat
    assert out["rows"][2]["speedup"] == 1026 / 200
    assert out["best"] == [{"M": 6, "seeds": 1, "example_timesteps_per_s": 1026, "naive_example_timesteps_per_s": 200,
                            "ratio": 1026 / 200},
                           {"M": 6, "seeds": 3, "example_timesteps_per_s": 3028, "naive_example_timesteps_per_s": 200,
                            "ratio": 3028 / 200}]
    r = CliRunner().invoke(app, ["bench", "--threads", "0"])
    assert r.exit_code == 2 and "every other size" in r.output


def test_a_run_can_start_from_a_trained_models_weights(cli):
    from nramctl.config import task_config
    from nramctl.experiment import new_run
    from nramctl.runs import RunStore
    trained(cli, "--seeds", 2)
    source = torch.load(cli.root / "run-1/checkpoints/best.pt", weights_only=True)["model"]
    cfg = task_config("copy", None, ["M=9", "difficulty=3", "model.hidden=16", "train.seeds=3",
                                    "train.init=run-1/seed-1"])
    run, trainer = new_run(RunStore(cli.root), cfg)
    for key, p in trainer.model.named_parameters():          # every seed holds seed 1's weights
        assert torch.equal(p.detach(), source[key][1:2].expand_as(p)), key
    saved = yaml.safe_load((cli.root / run.name / "config.yaml").read_text())
    assert saved["train"]["init"] == "run-1/seed-1"             # the run says where it started
    grown = task_config("copy", None, ["M=9", "difficulty=3", "model.hidden=16", "train.seeds=2", "model.repeat=2",
                                       "train.init=run-1/seed-1"])       # more gates: program.grow's test
    _, trainer = new_run(RunStore(cli.root), grown)
    assert trainer.model.Q == 2 * len(cfg.model.gates)
    assert torch.equal(trainer.model.controller.l2.weight.detach(), source["controller.l2.weight"][1:2].expand(2, -1, -1))
    runs_before = sorted(p.name for p in cli.root.iterdir())
    one_line_error(cli("train", "copy", "--M", 9, "--difficulty", 3, "--set", "train.init=run-1",
                       "--set", "model.hidden=32"), "model.hidden=16")
    one_line_error(cli("train", "copy", "--M", 9, "--set", "train.init=run-9"), "no run 'run-9'")
    assert sorted(p.name for p in cli.root.iterdir()) == runs_before   # nothing half-made left


def test_values_the_command_line_itself_refuses_get_one_line(monkeypatch, capsys, tmp_path):
    """`nramctl` as a user runs it (cli.main, not the test runner): an option that is not a number, an
    unknown option or command gets one line and exit 2 like nramctl's own errors; a good command exits 0."""
    from nramctl.cli import main
    monkeypatch.setenv("NRAMCTL_RUNS_DIR", str(tmp_path))
    cases = ((["eval", "run-1", "--n", "abc"], "'--n': 'abc' is not a valid int", 2),
             (["runs", "show", "run-1", "--top", "x"], "'--top': 'x'", 2),
             (["train", "copy", "--bogus"], "No such option: --bogus", 2),
             (["evaluate"], "No such command 'evaluate'", 2),
             (["tasks"], "listsearch", 0))
    for argv, needle, code in cases:
        monkeypatch.setattr(sys, "argv", ["nramctl", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr()
        assert e.value.code == code, (argv, out)
        lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
        assert needle in out.out + out.err and "Traceback" not in out.err, (argv, out)
        assert code == 0 or len(lines) == 1, (argv, out)
