"""Sweeps over settings and seeds: a grid or a random search, each setting trained as ordinary runs.

A sweep is planned once and written as a manifest, `runs/sweep-N/sweep.yaml`: every setting (its
`--set` overrides) and the runs that train it, named `sweep-N-SSS-R` (setting SSS, run R; each run
trains `seeds_per_run` seeds batched, as `train --seeds` does, with `until: all` and the time budget).
Runs are ordinary runs in the runs directory; each records its sweep in environment.json. Running a
sweep (again) keeps finished runs, resumes interrupted ones and starts the rest, so a killed driver
loses no finished run. The runs go to W local worker processes of T torch threads each, or to a Ray
cluster (`address`), one Ray task of T CPUs per run; the summary reads the runs' status files.

Successive halving (`halving: {eta: E, ...}` in the manifest): every setting first trains for the base
budget (rung 0: the time budget, or the setting's step budget); when every run of a rung has finished,
the best 1/E of its settings (by share of seeds solved, then the median solved step, then the best
error) go on to the next rung, whose budget is E times larger, by resuming their runs: no step is
trained twice. It ends when one setting is left or after the manifest's `rungs`. Each rung's ranking is
kept in the manifest, so the promotions can be checked afterwards.
"""
import concurrent.futures
import itertools
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import yaml

from .config import ConfigError, parse_yaml, task_config
from .shares import tally, wilson
from .runs import RunError, RunStore, atomic_write
from .tasks import task

DISTRIBUTIONS = ("loguniform", "uniform", "choice")
SWEEP = re.compile(r"^sweep-\d+$")


# ---- parsing and planning ----------------------------------------------------------------------
def split_top(text):
    """Split on the commas that are not inside [], {}, () or quotes: 'a,[b,c]' -> ['a', '[b,c]']."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if depth != 0 or quote:
        raise ConfigError(f"--set {text!r}: unbalanced brackets or quotes")
    return parts + [cur]


def parse_set(item):
    """'KEY=V1,V2' -> (key, ('values', [V1, V2])); 'KEY=loguniform(a,b)' -> (key, ('loguniform', [a, b]))."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=V1,V2,... or KEY=loguniform(a,b)")
    key, raw = (x.strip() for x in item.split("=", 1))
    m = re.fullmatch(r"(\w+)\((.*)\)", raw)
    if m and m.group(1) in DISTRIBUTIONS:
        args = [a.strip() for a in split_top(m.group(2))]
        if m.group(1) != "choice":
            try:
                lo, hi = (float(a) for a in args)
            except ValueError:
                raise ConfigError(f"--set {key}: {m.group(1)} takes two numbers, got {raw!r}") from None
            if not lo < hi or (m.group(1) == "loguniform" and lo <= 0):
                raise ConfigError(f"--set {key}: {raw!r} needs 0 < a < b (uniform: a < b)")
            args = [lo, hi]
        elif not args or args == [""]:
            raise ConfigError(f"--set {key}: choice() needs at least one value")
        return key, (m.group(1), args)
    values = [v.strip() for v in split_top(raw)]
    if any(v == "" for v in values):
        raise ConfigError(f"--set {key}: an empty value in {raw!r}")
    return key, ("values", values)


def settings(sets, samples=None, sample_seed=0):
    """The settings of a sweep, each a list of 'key=value' overrides. Without `samples`: the product of
    every comma-valued --set. With it: `samples` random draws (lists become a uniform choice)."""
    parsed = [parse_set(s) for s in sets]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise ConfigError("--set: a key is given twice")
    if samples is None:
        if any(kind != "values" for _, (kind, _) in parsed):
            raise ConfigError("loguniform/uniform/choice need --samples N (random search)")
        grid = itertools.product(*[[f"{k}={v}" for v in vals] for k, (_, vals) in parsed])
        return [list(g) for g in grid] or [[]]
    rng = np.random.default_rng(sample_seed)
    out = []
    for _ in range(samples):
        one = []
        for k, (kind, args) in parsed:
            if kind == "loguniform":
                v = f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.6g}"
            elif kind == "uniform":
                v = f"{rng.uniform(args[0], args[1]):.6g}"
            else:
                v = args[int(rng.integers(len(args)))]
            one.append(f"{k}={v}")
        out.append(one)
    return out


def plan(name, task_name, sets, samples, sample_seed, seeds, per_run, budget_minutes, first_seed=0,
         config=None, halving=None, rungs=None):
    """The manifest of a new sweep; every setting's config is validated here, before anything runs.
    With `halving` (E >= 2): successive halving, at most `rungs` rungs (None: until one setting is left)."""
    rows = []
    for i, overrides in enumerate(settings(sets, samples, sample_seed)):
        runs = []
        for j, lo in enumerate(range(0, seeds, per_run)):
            k = min(per_run, seeds - lo)
            runs.append({"name": f"{name}-{i:03d}-{j}", "seed": first_seed + lo, "seeds": k})
            cfg = task_config(task_name, config, run_sets(runs[-1], overrides, budget_minutes))
        rows.append({"setting": i, "overrides": overrides, "runs": runs})
        if halving:
            rows[-1].update(rung=0, steps=cfg.train.steps)
    manifest = {"sweep": name, "id": uuid.uuid4().hex, "task": task(task_name).name, "sets": list(sets),
                "samples": samples,
                "sample_seed": sample_seed, "seeds": seeds, "seeds_per_run": per_run,
                "budget_minutes": budget_minutes, "config": str(config) if config else None, "settings": rows}
    if halving:
        manifest["halving"] = {"eta": halving, "rungs": rungs, "rung": 0, "history": []}
    return manifest


# ---- successive halving ---------------------------------------------------------------------------
def rank_key(row):
    """How a summary row ranks: more of its seeds solved, then solved in fewer steps, then a lower best
    error (the order among settings that solved none)."""
    inf = math.inf
    return (-(row["share"] or 0), row["median_solved_step"] if row["median_solved_step"] is not None else inf,
            row["best_error"] if row["best_error"] is not None else inf)


def rung_budget(manifest, row):
    """('minutes', x) or ('steps', n): the budget of a setting's runs at the rung it has reached."""
    h = manifest.get("halving")
    factor = h["eta"] ** row["rung"] if h else 1
    if manifest["budget_minutes"]:
        return "minutes", manifest["budget_minutes"] * factor
    return "steps", row["steps"] * factor if h else None


def _budget_flags(store, manifest, row, name):
    """The --minutes/--steps that take run `name` to its setting's rung budget ([] where it is there)."""
    h = manifest.get("halving")
    if not h or row["rung"] == 0:
        return []
    kind, budget = rung_budget(manifest, row)
    run, _ = store.resolve(name)
    train = run.config().train
    have = train.max_minutes if kind == "minutes" else train.steps
    return [] if have is not None and have >= budget else [f"--{kind}", f"{budget:g}" if kind == "minutes" else str(budget)]


def _left(store, manifest, row, name):
    """(state, the --minutes or --steps it still needs to reach its setting's rung: [] where none,
    its status.json)."""
    state, status = run_status(store, name)
    if state in ("missing", "running") or status.get("state") == "solved":
        return state, [], status
    return state, _budget_flags(store, manifest, row, name), status


def promote(store, manifest):
    """Once every run of the current rung has finished: the best 1/eta of its settings (at least one)
    move to the next rung and the ranking is recorded. -> the settings promoted ([] when the sweep is
    over, or the rung not finished)."""
    h = manifest.get("halving")
    if not h:
        return []
    at = [row for row in manifest["settings"] if row["rung"] == h["rung"]]
    last = h["rungs"] is not None and h["rung"] + 1 >= h["rungs"]
    if len(at) <= 1 or last or any(_left(store, manifest, row, r["name"])[:2] != ("done", [])
                                   for row in at for r in row["runs"]):
        return []
    ranked = sorted(summary(store, {**manifest, "settings": at})["rows"], key=rank_key)
    keep = {r["setting"] for r in ranked[:max(1, len(at) // h["eta"])]}
    h["history"].append({"rung": h["rung"], "budget": list(rung_budget(manifest, at[0])),
                         "ranked": [{k: r[k] for k in ("setting", "seeds_solved", "seeds_tried", "median_solved_step",
                                                       "best_error")} for r in ranked],
                         "promoted": sorted(keep)})
    for row in at:
        if row["setting"] in keep:
            row["rung"] += 1
    h["rung"] += 1
    save(store, manifest)
    return sorted(keep)


def run_sets(run, overrides, budget_minutes, steps=None):
    """A run's --set items: with a time budget the step budget is lifted (unless the setting gives
    train.steps); then the setting; then the run's seeds, `until: all` and the budget (`steps`: a step
    budget that replaces the setting's, for a run that starts at a later rung of successive halving)."""
    lift = budget_minutes and not any(o.startswith("train.steps=") for o in overrides)
    return ((["train.steps=100000000"] if lift else []) + list(overrides)
            + [f"train.seed={run['seed']}", f"train.seeds={run['seeds']}", "train.until=all"]
            + ([f"train.max_minutes={budget_minutes:g}"] if budget_minutes else [])
            + ([f"train.steps={steps}"] if steps else []))


# ---- the manifest on disk -----------------------------------------------------------------------
def create(store, manifest_fn, name=None):
    """Claim runs/NAME, or runs/sweep-N (next free), and write its manifest from manifest_fn(name)."""
    store.root.mkdir(parents=True, exist_ok=True)
    if name is not None:
        store.check_new_name(name)
        try:
            (store.root / name).mkdir()
        except FileExistsError:
            raise RunError(f"{name!r} already exists in {store.root}") from None
    else:
        n = 1 + max((int(p.name[6:]) for p in store.root.glob("sweep-*") if SWEEP.match(p.name)), default=0)
        while True:
            try:
                (store.root / f"sweep-{n}").mkdir()
                break
            except FileExistsError:
                n += 1
        name = f"sweep-{n}"
    try:
        manifest = manifest_fn(name)
        save(store, manifest)
    except BaseException:
        shutil.rmtree(store.root / name, ignore_errors=True)
        raise
    return manifest


def save(store, manifest):
    atomic_write(store.root / manifest["sweep"] / "sweep.yaml", yaml.safe_dump(manifest, sort_keys=False))


def load(store, name):
    store.check_name(str(name))
    path = store.root / name / "sweep.yaml"
    try:
        manifest = parse_yaml(path.read_text())
        assert isinstance(manifest, dict) and manifest.get("settings") is not None
    except (OSError, yaml.YAMLError, AssertionError):
        raise RunError(f"no sweep {name!r} in {store.root} (or its sweep.yaml is unreadable)") from None
    return manifest


# ---- running --------------------------------------------------------------------------------------
def run_status(store, name):
    """(state, status.json) of a sweep's run: state 'done' (solved or budget), 'interrupted',
    'running' (its process is alive) or 'missing' (with an empty status)."""
    try:
        run, _ = store.resolve(name)
    except RunError:
        return "missing", {}
    st = run.status()
    state = st.get("state")
    return ("done" if state in ("solved", "budget") else "running" if state == "running" else "interrupted"), st


def commands(store, manifest, threads):
    """(todo, busy): (run name, argv, env) for every run that still has to train, and (run name,
    status) for every run a live process is training now (another driver, or a worker not yet gone),
    which is left to it. With successive halving, only the settings at the current rung."""
    todo, busy = [], []
    base = [sys.executable, "-c", "from nramctl.cli import main; main()", "train"]
    h = manifest.get("halving")
    for row, r in [(row, r) for row in manifest["settings"] if not (h and row["rung"] < h["rung"])
                   for r in row["runs"]]:
        state, more, status = _left(store, manifest, row, r["name"])
        if state == "running":
            busy.append((r["name"], status))
        if state == "running" or (state == "done" and not more):
            continue
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "NRAMCTL_SWEEP": f"{manifest['sweep']}/setting-{row['setting']}"}
        if state != "missing":
            argv = [*base, "--resume", r["name"], *more]
        else:
            kind, budget = rung_budget(manifest, row)
            sets = run_sets(r, row["overrides"], budget if kind == "minutes" else None,
                            budget if kind == "steps" and h and row["rung"] else None)
            argv = [*base, manifest["task"], "--name", r["name"], *itertools.chain(*(["--set", s] for s in sets))]
            if manifest.get("config"):
                argv += ["--config", manifest["config"]]
        todo.append((r["name"], argv, env))
    return todo, busy


def _train(argv, env, runs_dir):
    """Run one `nramctl train` command into runs_dir: (exit code, its last error line or [])."""
    p = subprocess.run([*argv, "--runs-dir", str(runs_dir), "--json"], env=env, capture_output=True, text=True)
    return p.returncode, p.stderr.strip().splitlines()[-1:] if p.returncode else []


def run_local(store, todo, workers, on_done=None):
    """Each command as a subprocess, at most `workers` at a time. Returns {name: (exit code, error)}."""
    def one(item):
        name, argv, env = item
        return (name, *_train(argv, env, store.root))

    codes = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for name, rc, err in pool.map(one, todo):
            codes[name] = (rc, err)
            if on_done:
                on_done(name, rc)
    return codes


def run_ray(store, manifest, todo, threads, address, on_done=None, ship=False):
    """Each command as a Ray task of `threads` CPUs. A task whose node sees this sweep's manifest under
    the same path (shared storage, or the driver's own machine) trains in the runs directory; elsewhere,
    or with `ship`, it trains in a scratch directory and ships the finished run back as a tar archive,
    which the driver unpacks into the runs directory."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--address needs Ray: pip install 'nramctl[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}} if
             os.environ.get("PYTHONPATH") else None)
    task_fn = ray.remote(num_cpus=threads, max_retries=0)(_ray_train)
    root = str(store.root.resolve())
    marker = (manifest["sweep"], manifest.get("id"), ship)
    codes = {}
    try:
        pending = [task_fn.remote(argv, env, root, name, marker) for name, argv, env in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name, rc, err, archive = ray.get(done[0])
            if archive:
                _unpack(store, name, archive)
            codes[name] = (rc, err)
            if on_done:
                on_done(name, rc)
    finally:
        ray.shutdown()
    return codes


def _ray_train(argv, env, root, name, marker):
    """On a Ray worker: train one run; returns (name, exit code, last error line, archive or None)."""
    import io
    import tarfile
    import tempfile
    sweep_name, sweep_id, ship = marker
    try:
        shared = not ship and parse_yaml((Path(root) / sweep_name / "sweep.yaml").read_text())["id"] == sweep_id
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        shared = False
    if not shared and "--resume" in argv:
        return name, 2, [f"error: {name} is resumed, which needs this node to see the runs directory "
                         f"{root} (shared storage)"], None
    where = root if shared else tempfile.mkdtemp(prefix="nramctl-")
    rc, err = _train(argv, {**os.environ, **env}, where)
    archive = None
    if not shared:
        if (Path(where) / name).is_dir():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(Path(where) / name, arcname=name)
            archive = buf.getvalue()
        shutil.rmtree(where, ignore_errors=True)             # the scratch copy is shipped: not kept
    return name, rc, err, archive


def _unpack(store, name, archive):
    """A run shipped back from another node, unpacked under a hidden name and renamed into place."""
    import io
    import tarfile
    staged = store.stage()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(staged.path, filter="data")
    staged.path = staged.path / name
    store.commit(staged, name)


# ---- the summary ----------------------------------------------------------------------------------
def summary(store, manifest):
    """One row per setting, sorted by share (then fewer steps): seeds tried and solved, share with its
    95% Wilson interval, median solved step, best error."""
    rows = []
    for row in manifest["settings"]:
        tried = solved = 0
        steps, best, states = [], None, []
        for r in row["runs"]:
            state, status = run_status(store, r["name"])
            states.append(state)
            seeds, done = tally(status.get("seeds", []))
            tried, solved = tried + len(seeds), solved + len(done)
            steps += [s["solved_step"] for s in done]
            for s in seeds:
                if s.get("best_error") is not None:
                    best = s["best_error"] if best is None else min(best, s["best_error"])
        low, high = wilson(solved, tried)
        rung = {}
        if "rung" in row:                              # successive halving: the rung reached, its budget
            unit, budget = rung_budget(manifest, row)
            rung = {"rung": row["rung"], "budget_unit": unit, "budget": budget}
        rows.append({"setting": row["setting"], "config": row["overrides"], "runs": [r["name"] for r in row["runs"]],
                     "finished_runs": states.count("done"), "seeds_tried": tried, "seeds_solved": solved,
                     "share": solved / tried if tried else None, "share_low": low, "share_high": high,
                     "median_solved_step": statistics.median(steps) if steps else None, "best_error": best,
                     **rung})
    rows.sort(key=rank_key)
    return {"sweep": manifest["sweep"], "path": str(store.root / manifest["sweep"]), "task": manifest["task"],
            "rows": rows, **({"halving": manifest["halving"]} if manifest.get("halving") else {})}


def is_sweep(store, name):
    return bool(name) and "/" not in str(name) and (store.root / str(name) / "sweep.yaml").is_file()


def default_workers(threads):
    return max(1, (os.cpu_count() or 1) // threads)

