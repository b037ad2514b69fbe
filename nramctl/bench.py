"""Throughput of full training steps (forward, backward, Adam) on random data, and of discrete steps.

Measures the same work as `shared/bench/nram_naive.py`: B examples of M cells, T timesteps, R registers,
all 14 gates, random memory and targets with every cell scored; `seeds` models train side by side and
their examples are all counted.
"""
import os
import resource
import time

import torch

from . import native
from .adam import Adam
from .gates import PAPER_GATES
from .machine import NRAM, Batch, fuzzy_run
from .runtime import freeze_long_lived_objects


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_batch(N, M, T, generator):
    memory = torch.randint(0, M, (N, M), generator=generator)
    target = torch.randint(0, M, (N, M), generator=generator)
    return Batch(memory, target, torch.ones(N, M, dtype=torch.bool), torch.full((N,), T),
                 torch.ones(N, dtype=torch.long))


def bench_train(batch=32, M=20, T=20, R=4, hidden=64, controller="lstm", seeds=1, steps=10,
                warmup=2, clip_activation=10.0, renormalize=True):
    """Seconds per training step and example-timesteps per second (summed over seeds)."""
    model = NRAM(R, PAPER_GATES, 1, controller, hidden, list(range(seeds)))
    opt = Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def one():
        b = random_batch(seeds * batch, M, T, g)
        loss = fuzzy_run(model, b, clip_activation, renormalize).loss.view(seeds, -1).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one()
    freeze_long_lived_objects()                   # as Trainer.run does
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    dt = (time.perf_counter() - t0) / steps
    return {"batch": batch, "M": M, "T": T, "R": R, "hidden": hidden, "controller": controller,
            "seeds": seeds, "gates": len(PAPER_GATES), "steps": steps, "threads": torch.get_num_threads(),
            "circuit": native.backend(), "cpu": native.cpu_summary(),
            "seconds_per_step": dt, "example_timesteps_per_s": seeds * batch * T / dt,
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def bench_grid(Ms, thread_counts, seed_counts, repeat=1, baseline=None, **sizes):
    """bench_train at every (M, threads, seeds), each the best of `repeat` timings; with a baseline
    script, the naive step at every (M, threads) too (best of `repeat`). -> {rows, best}: one row per
    timing, and per (M, seeds) the best over thread counts against the naive best over thread
    counts (the README's ratio). threads None: torch's setting."""
    import torch
    before, rows, best = torch.get_num_threads(), [], []
    try:
        for m in Ms:
            naive = {}
            for th in thread_counts:
                if th:
                    torch.set_num_threads(th)
                for s in seed_counts:
                    runs = [bench_train(M=m, seeds=s, **sizes) for _ in range(repeat)]
                    rows.append(max(runs, key=lambda r: r["example_timesteps_per_s"]))
                if baseline:
                    naive[th] = max(run_baseline(baseline, sizes["batch"], m, sizes["T"], sizes["R"],
                                                 sizes["hidden"], th or torch.get_num_threads(), sizes["steps"])
                                    for _ in range(repeat))
                    for r in rows[-len(seed_counts):]:
                        r["baseline_example_timesteps_per_s"] = naive[th]
                        r["speedup"] = r["example_timesteps_per_s"] / naive[th]
            for s in seed_counts:
                ours = max(r["example_timesteps_per_s"] for r in rows if r["M"] == m and r["seeds"] == s)
                entry = {"M": m, "seeds": s, "example_timesteps_per_s": ours}
                if naive:
                    entry.update(naive_example_timesteps_per_s=max(naive.values()), ratio=ours / max(naive.values()))
                best.append(entry)
    finally:
        torch.set_num_threads(before)
    return {"rows": rows, "best": best}


def run_baseline(script, batch, M, T, R, hidden, threads=None, steps=10):
    """example_timesteps_per_s of the naive baseline script, run in a subprocess with the same flags."""
    import json
    import subprocess
    import sys
    cmd = [sys.executable, str(script), "--batch", str(batch), "--M", str(M), "--T", str(T), "--R", str(R),
           "--hidden", str(hidden), "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
        return json.loads(out.strip().splitlines()[-1])["example_timesteps_per_s"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        from .config import ConfigError
        raise ConfigError(f"--baseline {script}: could not run it or read its JSON line") from None


STARTUP_COMMANDS = (["--help"], ["runs"], ["tasks"])
_MINIMAL_TYPER_APP = """
import typer
app = typer.Typer()
@app.command()
def a(x: int = 1):
    pass
@app.command()
def b(y: str = ""):
    pass
app()
"""


def bench_startup(repeats=7, runs_dir="runs"):
    """Wall seconds (median of `repeats` fresh processes) of the commands that compute nothing, beside
    two references: a process that only imports typer and rich, and a two-command typer app run with
    one option (what any Typer CLI pays to parse a command line). [{command, seconds, ratio (to the
    first reference), imports_torch}], references first."""
    import statistics
    import subprocess
    import sys
    cases = [("python -c 'import typer, rich'", "import typer, rich", []),
             ("minimal typer app, one command", _MINIMAL_TYPER_APP, ["a", "--x", "2"])]
    cases += [("nramctl " + " ".join(args), "from nramctl.cli import main\nmain()", args) for args in STARTUP_COMMANDS]
    env = dict(os.environ, NRAMCTL_RUNS_DIR=str(runs_dir), COLUMNS="100")
    rows = []
    for name, body, args in cases:
        # the body runs as a script with these arguments; at exit, say whether torch was imported
        code = (f"import atexit, sys\nsys.argv = {['nramctl', *args]!r}\n"
                "atexit.register(lambda: print('TORCH', 'torch' in sys.modules))\n" + body)
        times, torch_seen = [], False
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
            times.append(time.perf_counter() - t0)
            torch_seen = "TORCH True" in out
        rows.append({"command": name, "seconds": statistics.median(times), "imports_torch": torch_seen})
    for r in rows:
        r["ratio"] = r["seconds"] / rows[0]["seconds"]
    return rows


def bench_discrete(M, steps=20000, R=4, seed=0):
    """Seconds per executed timestep of the constant-time executor on an M-cell integer memory,
    running a random-weight MLP's lookup-table program with all 14 gates (reads and writes at
    data-dependent addresses). The memory's allocation is not timed."""
    import numpy as np

    from .executor import Program, execute
    model = NRAM(R, PAPER_GATES, 1, "mlp", 32, [seed])
    with torch.no_grad():
        model.controller.head.weight.mul_(8)
        model.controller.head.bias[0, 0, -1] = -1e3       # never halt: time all steps
    program = Program(model)
    rng = np.random.default_rng(seed)
    memory = rng.integers(0, M, size=M).tolist()
    t0 = time.perf_counter()
    done = execute(program, memory, M, steps) + 1
    dt = time.perf_counter() - t0
    return {"M": M, "steps": done, "seconds_per_step": dt / done, "steps_per_s": done / dt,
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def bench_eval_memory(M, n=100, ref="pretrained/copy"):
    """Peak memory of a fuzzy evaluation of `n` examples at the largest difficulty memory M holds,
    measured in a fresh process (peak RSS is per process): {M, difficulty, T, n, seconds, peak_rss_mb}."""
    import json
    import subprocess
    import sys
    code = f"from nramctl.bench import _eval_memory_child; _eval_memory_child({int(M)}, {int(n)}, {ref!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _eval_memory_child(M, n, ref):
    import json

    import numpy as np

    from .evaluate import evaluate
    from .experiment import load_model
    from .runs import RunStore
    from .tasks import task
    run, seed = RunStore().resolve(ref)
    cfg, model, _ = load_model(run, seed)
    d = task(cfg.task).max_difficulty(M)
    t0 = time.perf_counter()
    res = evaluate(model, cfg, M, np.full(n, d), np.random.default_rng(0))
    print(json.dumps({"M": M, "difficulty": d, "T": cfg.T_of(d), "n": n, "error": float(res["error"][0]),
                      "seconds": time.perf_counter() - t0, "peak_rss_mb": round(peak_rss_mb(), 1)}))
