"""Pictures, TensorBoard events and run records: the data behind each picture against known values,
PNGs that are not blank, events read back with TensorBoard's own reader, `runs show / --csv / rm`."""
import csv
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nramctl.circuits import CIRCUITS, GATES
from nramctl import plots
from nramctl.cli import app
from nramctl.config import task_config
from nramctl.program import wired

from test_cli import FAST, cli, one_line_error, trained  # noqa: F401  (fixture)

matplotlib = pytest.importorskip("matplotlib")


def png_size_and_ink(path):
    from PIL import Image
    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    return img.shape, float(img.std())


def test_execution_data_of_a_hand_wired_copy_circuit():
    """Copy by hand (nramctl/circuits.py): step 1 loads p = n + 1 and points r0 at cell 1; step k >= 2
    reads cell k - 1 and writes it to cell p + k - 2, which is the only cell that changes."""
    R, rules = CIRCUITS["copy"]
    model = wired(R, GATES, rules)
    cfg = task_config("copy", None, ["M=12", "difficulty=4"])
    n, M = 4, 12
    data = plots.execution_data(model, cfg, M, n, example=3, seed=0)
    mem = np.array(data["memory"])
    p = n + 1
    assert mem[0, 0] == p and data["T"] == 2 * n + 1 and len(mem) == data["T"] + 1
    assert data["reads"][0] == [0] and data["writes"][0] == [(0, p)]
    for k in range(2, n + 2):
        assert data["reads"][k - 1] == [k - 1]
        assert data["writes"][k - 1] == [(p + k - 2, mem[0, k - 1])]
        changed = np.flatnonzero(mem[k] != mem[k - 1]).tolist()
        assert changed == ([p + k - 2] if mem[0, k - 1] != 0 else [])
    assert (mem[-1][p:p + n] == mem[0][1:n + 1]).all()
    assert data["registers"][1][1] == p                                      # r1 = destination
    assert min(min(row) for row in data["p"]) > 0.99                         # sharp: every cell certain
    assert data["halt"] <= data["T"]


def test_gates_data_of_the_hand_wired_circuit():
    R, rules = CIRCUITS["copy"]
    model = wired(R, GATES, rules)
    cfg = task_config("copy", None, ["M=12", "difficulty=4"])
    g = plots.gates_data(model, cfg, 12, 4, step=3)
    rows = dict(zip(g["inputs"], g["args"]))
    src = g["sources"]
    assert rows["READ.a"][src.index("r0")] > 0.999                           # READ(r0) from step 2 on
    assert rows["WRITE.a"][src.index("r1")] > 0.999 and rows["WRITE.b"][src.index("READ")] > 0.999
    regs = dict(zip(g["register_rows"], g["regs"]))
    assert regs["r0"][src.index("INC")] > 0.999 and regs["r1"][src.index("ADD")] > 0.999
    avg = plots.gates_data(model, cfg, 12, 4)
    assert abs(sum(avg["args"][0]) - 1) < 1e-5 and avg["step"] is None


def test_learning_data_from_records():
    recs = [{"step": 10, "seed": 0, "loss": 2.0, "error": 0.5, "level": 1},
            {"step": 10, "seed": 1, "loss": 3.0, "error": 0.6, "level": 1},
            {"step": 20, "seed": 0, "loss": 1.0, "error": 0.0, "level": 2, "eval_error": 0.0, "solved_step": 20}]
    d = plots.learning_data(recs)
    assert d[0]["step"] == [10, 20] and d[0]["eval_step"] == [20] and d[0]["solved_step"] == 20
    assert d[1]["loss"] == [3.0] and d[1]["solved_step"] is None


@pytest.mark.parametrize("what", plots.KINDS)
def test_every_plot_kind_writes_a_png_that_is_not_blank(cli, what):
    trained(cli, "--seeds", 2)
    extra = ["--M", 11] if what == "generalization" else []
    r = cli("plot", "run-1", "--what", what, "--json", *extra)
    assert r.exit_code == 0, r.output
    path = cli.root / "run-1" / "plots" / f"{what}.png"
    assert json.loads(r.stdout)["path"] == str(path)
    (h, w), ink = png_size_and_ink(path)
    assert h >= 300 and w >= 500 and ink > 10, (h, w, ink)
    if what == "generalization":
        assert (cli.root / "run-1" / "generalize-M11.json").is_file()        # computed and saved


def test_plot_of_a_shipped_model_needs_an_output_file(cli, tmp_path):
    one_line_error(cli("plot", "pretrained/copy", "--what", "execution"), "read-only: give -o")
    out = tmp_path / "copy.png"
    r = cli("plot", "pretrained/copy", "--what", "execution", "--M", 12, "-o", out)
    assert r.exit_code == 0 and out.is_file(), r.output
    one_line_error(cli("plot", "pretrained/copy", "--what", "colours", "-o", out), "--what 'colours'")


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_logged_values_and_a_resume_repeats_no_step(cli):
    pytest.importorskip("tensorboard")
    out = trained(cli, "--tensorboard", "--seeds", 2)
    assert out["steps"] == 20
    recs = [json.loads(x) for x in (cli.root / "run-1" / "metrics.jsonl").read_text().splitlines()]
    for seed in (0, 1):
        ev = read_events(cli.root / "run-1" / "tensorboard" / f"seed-{seed}")
        mine = [r for r in recs if r["seed"] == seed]
        assert [s for s, _ in ev["loss"]] == [r["step"] for r in mine]
        assert np.allclose([v for _, v in ev["loss"]], [r["loss"] for r in mine])
        assert np.allclose([v for _, v in ev["level"]], [r["level"] for r in mine])
        assert [s for s, _ in ev["eval_error"]] == [r["step"] for r in mine if "eval_error" in r]
    # a run killed after its last checkpoint wrote events past it; resuming must not repeat them
    r = cli("train", "--resume", "run-1", "--steps", 35, "--json")
    assert r.exit_code == 0, r.output
    steps = [s for s, _ in read_events(cli.root / "run-1" / "tensorboard" / "seed-0")["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 35
    # export rebuilds the same events from metrics.jsonl
    assert cli("export", "run-1", "--tensorboard").exit_code == 0
    again = [s for s, _ in read_events(cli.root / "run-1" / "tensorboard" / "seed-0")["loss"]]
    assert again == steps


def test_runs_show_csv_filters_and_rm(cli):
    trained(cli)
    trained(cli, "--set", "train.steps=1")
    out = trained(cli, "--name", "other")
    show = json.loads(cli("runs", "show", "run-1", "--json").stdout)
    env = show["environment"]
    assert {"nramctl", "python", "torch", "threads", "command"} <= set(env)
    assert env["torch"] == torch.__version__ and env["command"] and env["ended"]   # (a real command line:
    assert env["threads"] == torch.get_num_threads()                                # test_cli's interrupt test)
    assert show["config"]["task"] == "copy" and show["seeds"][0]["seed"] == 0
    metrics = [json.loads(l) for l in (cli.root / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert show["seeds"][0]["level"] == [m for m in metrics if "level" in m][-1]["level"]   # the curriculum's
    assert {"config.yaml", "metrics.jsonl", "checkpoints/last.pt", "environment.json"} <= {f["path"] for f in show["files"]}
    rows = list(csv.DictReader(io.StringIO(cli("runs", "--csv").output)))
    assert [r["name"] for r in rows] == ["run-1", "run-2", "other"] and rows[0]["task"] == "copy"
    assert json.loads(cli("runs", "--task", "access", "--json").stdout) == []
    assert len(json.loads(cli("runs", "--state", "budget", "--json").stdout)) == 3
    one_line_error(cli("runs", "--task", "sort"), "unknown task")
    # a running run is refused; a finished one is deleted
    status = cli.root / "other" / "status.json"
    st = json.loads(status.read_text())
    st.update(state="running", pid=os.getpid())
    status.write_text(json.dumps(st))
    one_line_error(cli("runs", "rm", "other", "--yes"), "is being trained by process")
    assert (cli.root / "other").is_dir()
    r = cli("runs", "rm", "run-2", "--yes")
    assert r.exit_code == 0 and not (cli.root / "run-2").exists()
    one_line_error(cli("runs", "rm", "pretrained/copy", "--yes"), "only a whole run")
    assert out["run"] == "other"


def test_runs_show_sums_up_a_long_search_and_lists_its_best_seeds(cli):
    """A run of 30 seeds (restarts): one line with seeds tried and solved and the share's Wilson
    interval, then only the 20 lowest best errors, lowest first; --top 0 lists all 30."""
    trained(cli)
    status = cli.root / "run-1" / "status.json"
    st = json.loads(status.read_text())
    errors = [(7 * i % 30) / 30 for i in range(30)]            # 0, 7/30, 14/30, ... each of i/30 once
    st["seeds"] = [{"seed": 100 + i, "best_error": e, "best_step": 10 * i, "level": 1, "nonfinite_steps": 0,
                    "solved_step": 10 * i if e == 0 or i == 5 else None} for i, e in enumerate(errors)]
    status.write_text(json.dumps(st))
    text = " ".join(cli("runs", "show", "run-1").output.split())
    # Wilson 95% for 2 of 30: 1.85% to 21.32% (published tables)
    assert "30 seeds tried, 2 solved = 6.7% [1.8-21%]; best error lowest 0.00%, median 50.00%, highest 96.67%" in text
    listed = [int(m) for m in re.findall(r"│ (1[0-2][0-9]) │ +[0-9.]+% │", text)]
    want = [100 + i for i, _ in sorted(enumerate(errors), key=lambda x: x[1])][:20]
    assert listed == want and "the 20 lowest best errors of 30" in text
    every = " ".join(cli("runs", "show", "run-1", "--top", 0).output.split())
    assert [int(m) for m in re.findall(r"│ (1[0-2][0-9]) │ +[0-9.]+% │", every)] == list(range(100, 130))
    one_line_error(cli("runs", "show", "run-1", "--top", -1), "--top -1")
    # a slot refilled at the budget's last check never trained: not a seed tried (as `runs share` counts)
    from nramctl.render import population_line
    line = population_line([{"seed": 1, "steps": 0, "best_error": 0.9, "solved_step": None},
                            {"seed": 2, "steps": 40, "best_error": 0.0, "solved_step": 30}])
    assert line.startswith("1 seeds tried, 1 solved = 100% [21-100%]"), line


def test_resume_adds_a_session_to_the_environment(cli):
    trained(cli)
    assert cli("train", "--resume", "run-1", "--steps", 25).exit_code == 0
    env = json.loads(cli("runs", "show", "run-1", "--json").stdout)["environment"]
    assert len(env["sessions"]) == 2 and env["sessions"][1]["started"] >= env["sessions"][0]["ended"]
    assert env["sessions"][1]["ended"]


def test_shell_completion_of_tasks_and_runs(cli, monkeypatch):
    from nramctl.cli import complete_runs, complete_tasks
    trained(cli)
    monkeypatch.setenv("NRAMCTL_RUNS_DIR", str(cli.root))
    assert complete_tasks("li") == ["listk", "listsearch"]
    assert complete_runs("run") == ["run-1"] and "pretrained/copy" in complete_runs("pre")
    # Typer takes the shell from the process tree (shellingham), not from the argument: under a
    # non-interactive `sh` it says "Shell sh not supported" and exits 1, so the test names bash
    import typer.completion
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    r = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert r.exit_code == 0 and "complete" in r.output, (r.output, repr(r.exception))


def test_plot_without_matplotlib_says_how_to_install_it(cli, monkeypatch):
    import sys
    trained(cli)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(cli("plot", "run-1"), "pip install 'nramctl[plot]'")


def test_progress_off_a_terminal_is_plain_lines_on_a_clock_and_on_each_solve(monkeypatch, capsys):
    from nramctl import render
    monkeypatch.setattr(render.console, "_force_terminal", False)
    now = [0.0]
    bar = render.TrainProgress("run-9", 1000, every=60.0)
    bar.clock = lambda: now[0]
    bar.t0 = bar.last = 0.0
    rec = lambda step, solved: [{"step": step, "seed": s, "loss": 1.0, "error": 0.5, "level": 2,
                                 "examples_per_s": 100.0, **({"solved_step": step} if s < solved else {})}
                                for s in range(4)]
    with bar:
        for t, step, solved in [(10, 10, 0), (59, 20, 0), (61, 30, 0), (70, 40, 1), (80, 50, 1),
                                (3725, 60, 1), (3730, 70, 1)]:
            now[0] = t
            bar.update(rec(step, solved)[1:] if step >= 60 else rec(step, solved))   # seed 0 solved, left
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("run-9:")]
    # the last step's line comes at the end, off the clock; the bar itself is never drawn
    assert [l.split()[2] for l in lines] == ["30/1,000", "40/1,000", "60/1,000", "70/1,000"]
    assert "solved 1/4" in lines[1] and lines[0].endswith("0:01:01") and lines[2].endswith("1:02:05")
    assert "solved 1/4" in lines[3]           # a seed that solved and left the batch still counts
    assert "━" not in out and len(out.splitlines()) == 4


def test_progress_of_a_json_command_goes_to_stderr(monkeypatch, capsys):
    """--json keeps standard output for the JSON alone; the progress lines go to standard error."""
    from nramctl import render
    monkeypatch.setattr(render.errors, "_force_terminal", False)
    bar = render.TrainProgress("run-9", 100, every=60.0, stderr=True)
    with bar:
        bar.update([{"step": 10, "seed": 0, "loss": 1.0, "error": 0.0, "level": 1, "examples_per_s": 9.0,
                     "solved_step": 10}])
    out, err = capsys.readouterr()
    assert out == "" and "run-9: step 10/100" in err and "solved" not in out


def test_progress_of_a_resumed_run_counts_the_seeds_solved_before(monkeypatch, capsys):
    """A resumed run's retired seeds appear in no record; the trainer's list of seeds brings them in."""
    from nramctl import render
    monkeypatch.setattr(render.console, "_force_terminal", False)
    bar = render.TrainProgress("run-9", 100, seeds=[{"seed": 0, "solved_step": 300}, {"seed": 1, "solved_step": None},
                                                    {"seed": 2, "solved_step": None}])
    with bar:
        bar.update([{"step": 310, "seed": s, "loss": 1.0, "error": 0.5, "level": 1, "examples_per_s": 9.0}
                    for s in (1, 2)])
    assert "solved 1/3" in capsys.readouterr().out
