"""All Rich output. Library code returns plain data; these functions only draw it."""
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def _one_line(msg):
    """A message as one printable line: control characters (a newline in a YAML key) are escaped."""
    return escape("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg)))


def error(msg):
    errors.print(f"[bold red]error:[/] {_one_line(msg)}", soft_wrap=True)


def warning(msg):
    errors.print(f"[bold yellow]warning:[/] {_one_line(msg)}", soft_wrap=True)


def emit_json(data):
    print(json.dumps(data, indent=1))


def emit_csv(rows):
    import csv
    import sys
    if not rows:
        return
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


def run_show(r, top=20):
    where = f"{r['state']} at step {r['step']}" if r["step"] is not None else "a shipped model"
    console.print(f"[bold]{escape(r['run'])}[/] ({escape(r['path'])}): {where}")
    env = r["environment"] or {}
    t = Table(title="environment", show_header=False, title_justify="left")
    t.add_column("")
    t.add_column("")
    for k in ("nramctl", "git_commit", "python", "torch", "numpy", "threads", "circuit", "cpu", "host",
              "command", "started", "ended"):
        if k in env:
            t.add_row(k, escape(str(env[k])))
    for i, sess in enumerate(env.get("sessions", [])[1:], start=2):
        t.add_row(f"session {i}", escape(f"{sess.get('command')} ({sess.get('started')} - {sess.get('ended')})"))
    if env:
        console.print(t)
    if r.get("training"):                                   # a shipped model: how it was trained
        console.print("training: " + escape(", ".join(f"{k} {v}" for k, v in r["training"].items()
                                                      if v is not None and k != "note")))
    cfg = r["config"]
    repeat = f" x {cfg['model']['repeat']}" if cfg["model"].get("repeat", 1) > 1 else ""
    console.print(f"config: {cfg['task']}, M={cfg['M']}, T={cfg['T']}, difficulty {cfg['difficulty']}, "
                  f"{cfg['model']['controller']} H={cfg['model']['hidden']} R={cfg['model']['R']}, "
                  f"{len(cfg['model']['gates'])} gates{repeat}, lr {cfg['train']['lr']}, batch {cfg['train']['batch']}, "
                  f"steps {cfg['train']['steps']}")
    seeds = r["seeds"]
    if len(seeds) > 1:
        console.print(population_line(seeds))
    title = "seeds"
    if top and len(seeds) > top:           # a long search: its best seeds, not hundreds of rows
        seeds = sorted(seeds, key=lambda x: (x.get("best_error") is None, x.get("best_error") or 0))[:top]
        title = f"seeds: the {top} lowest best errors of {len(r['seeds'])} (--top 0: every seed)"
    s = Table(title=title, title_justify="left")
    with_stones = any("stones" in x for x in seeds)
    for c in ("seed", "best error", "at step", "reached 0 at", "level", "own steps", "NaN/Inf steps") \
            + ("stones exact", "training on") * with_stones:
        s.add_column(c, justify="right")
    for x in seeds:                         # level: the seed's curriculum level; own steps: since its start
        s.add_row(str(x["seed"]), pct(x.get("best_error")), str(x.get("best_step")), str(x.get("solved_step") or "-"),
                  str(x.get("level") or "-"), str(x.get("steps", "-")), str(x.get("nonfinite_steps", 0)),
                  *stone_cells(x) * with_stones)
    console.print(s)
    f = Table(title="files", title_justify="left")
    f.add_column("path")
    f.add_column("bytes", justify="right")
    for x in r["files"]:
        f.add_row(escape(x["path"]), f"{x['bytes']:,}")
    console.print(f)


def stone_cells(seed):
    """A seed's stepping stones in two cells: the stones it left exact (of those it left), and what it
    trains on now (a stone, or the task)."""
    left = seed.get("stones") or []
    exact = sum(1 for x in left if x[3] == "exact")
    return f"{exact}/{len(left)}", escape(str(seed.get("stage", "-")))


def population_line(seeds):
    """One line on a run's seeds: how many were tried and solved (counted as `reproduce` and `runs
    share` count them, with the 95% Wilson interval) and where their best errors lie."""
    from .shares import tally, wilson
    tried, solved = tally(seeds)
    if not tried:
        return f"{len(seeds)} seeds, none has trained a step yet"
    lo, hi = wilson(len(solved), len(tried))
    errors = sorted(x["best_error"] for x in seeds if x.get("best_error") is not None)
    spread = (f"; best error lowest {pct(errors[0])}, median {pct(errors[len(errors) // 2])}, "
              f"highest {pct(errors[-1])}") if errors else ""
    return (f"{len(tried)} seeds tried, {len(solved)} solved = "
            f"{share_pct({'share': len(solved) / len(tried), 'share_low': lo, 'share_high': hi})}{spread}")


def pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


class TrainProgress:
    """A progress bar over the step budget showing loss, error and curriculum level of each seed.

    Where the output is not a terminal (`nohup nramctl reproduce ... > log &`) a bar cannot be drawn:
    then a plain line goes out every `every` seconds and whenever another seed solves, so that a log
    of a long run can be followed while it runs. With `stderr` (the commands' --json, whose standard
    output is the JSON alone) the bar or the lines go to standard error."""

    def __init__(self, run_name, total, start=0, every=60.0, stderr=False, seeds=()):
        import time
        self.name, self.total, self.every = run_name, total, every
        self.console = errors if stderr else console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.lines = not self.console.is_terminal
        self.progress = Progress(         # off a terminal the plain lines replace the bar, even at the end
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, disable=self.lines)
        self.task = self.progress.add_task(run_name, total=total, completed=start, info="")
        self.clock = time.monotonic
        self.t0 = self.last = self.clock()
        # every seed met and those solved, over the whole run: a seed that solved and left the batch
        # (until: all) is in no later record; `seeds` (trainer.all_seeds()) counts those of a resumed run
        self.seen = {r["seed"] for r in seeds}
        self.solved_seeds = {r["seed"] for r in seeds if r.get("solved_step") is not None}
        self.printed_solved = len(self.solved_seeds)   # the count the last line printed showed
        self.pending = None               # the latest line not yet printed (off a terminal)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.pending:                  # the last step's line, so that a log ends where the run did
            self._line(*self.pending)
        return self.progress.__exit__(*exc)

    def _line(self, step, info, now):
        self.last, self.pending = now, None
        of = f"/{self.total:,}" if self.total else ""
        self.console.print(f"{escape(self.name)}: step {step:,}{of}  {info}  {_clock(now - self.t0)}",
                           soft_wrap=True)

    def update(self, records):
        records = [r for r in records if "event" not in r]          # population events: metrics only
        if not records:
            return
        best = min(records, key=lambda r: r.get("eval_error", r["error"]))
        self.seen.update(r["seed"] for r in records)
        self.solved_seeds.update(r["seed"] for r in records if "solved_step" in r)
        solved = len(self.solved_seeds)
        info = f"loss {best['loss']:.3f}  err {pct(best['error'])}  level {best['level']}"
        stoned = sum(1 for r in records if "stone" in r)
        if stoned:                        # seeds still on stepping stones: their errors are the stones'
            info += f"  on stones {stoned}/{len(records)}"
        if "eval_error" in best:
            info += f"  eval {pct(best['eval_error'])}"
        if len(self.seen) > 1:
            info += f"  solved {solved}/{len(self.seen)}"
        info += f"  {best['examples_per_s']:.0f} ex/s"
        step = records[0]["step"]
        self.progress.update(self.task, completed=step, info=info)
        now = self.clock()
        if not self.lines:
            return
        self.pending = (step, info, now)
        if now - self.last >= self.every or solved > self.printed_solved:
            self.printed_solved = solved
            self._line(step, info, now)


def _clock(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def train_summary(summary):
    t = Table(title=f"{summary['run']}: {summary['result']} after {summary['steps']} steps "
                    f"({summary['seconds']:.1f} s)")
    with_stones = any("stones" in s for s in summary["seeds"])
    for col in ("seed", "best error", "at step", "reached 0 at") + ("stones exact", "training on") * with_stones:
        t.add_column(col, justify="right")
    for s in summary["seeds"]:
        t.add_row(str(s["seed"]), pct(s["best_error"]), str(s["best_step"] or "-"),
                  str(s["solved_step"] or "-"), *stone_cells(s) * with_stones)
    console.print(t)
    console.print(f"saved in {summary['path']}")


def eval_result(r):
    mode = "discretized" if r["discrete"] else "fuzzy"
    t = Table(title=f"{r['run']} ({mode}), M={r['M']}, difficulty {r['difficulty']}, {r['n']} examples")
    t.add_column("error", justify="right")
    t.add_column("example error", justify="right")
    t.add_row(pct(r["error"]), pct(r["example_error"]))
    console.print(t)
    if r.get("cells"):
        c = Table(title="error by output cell")
        for col in ("cell", "scored", "wrong", "error"):
            c.add_column(col, justify="right")
        for row in r["cells"]:
            c.add_row(str(row["cell"]), f"{row['scored']:,}", f"{row['wrong']:,}", pct(row["error"]),
                      style="green" if row["wrong"] == 0 else None)
        console.print(c)


def generalization(r):
    mode = "discrete executor" if r.get("discrete_only") else "fuzzy and discretized"
    t = Table(title=f"{r['run']}: generalization at M={r['M']:,}, {mode} ({r['n']} examples per difficulty)")
    cols = ["difficulty", "T"]
    cols += ["discrete error", "example error", "steps/s"] if r.get("discrete_only") else \
        ["fuzzy error", "discrete error", "discrete = fuzzy"]
    for col in cols:
        t.add_column(col, justify="right")
    for row in r["rows"]:
        if r.get("discrete_only"):
            cells = [pct(row["discrete_error"]), pct(row["discrete_example_error"]),
                     f"{row['steps_per_s']:,.0f}" if row["steps_per_s"] else "-"]
            ok = row["discrete_error"] == 0
        else:
            cells = [pct(row["error"]), pct(row["discrete_error"]), pct(row["discrete_agrees"])]
            ok = row["error"] == 0 and row["discrete_error"] == 0
        t.add_row(f"{row['difficulty']:,}", f"{row['T']:,}", *cells, style="green" if ok else None)
    console.print(t)
    if r.get("saved"):
        console.print(f"saved in {r['saved']}")


def runs_table(rows):
    t = Table(title="runs")
    for col in ("name", "task", "M", "steps", "best error", "state"):
        t.add_column(col, justify="right" if col in ("M", "steps", "best error") else "left")
    for r in rows:
        t.add_row(r["name"], r["task"], str(r["M"]), str(r["steps"]), pct(r["best_error"]), r["state"])
    console.print(t)


def tasks_table(rows):
    t = Table(title="tasks (defaults from tasks.yaml)")
    for col in ("task", "M", "train difficulty", "T rule", "R", "controller", "gates", "stepping stones"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["task"], str(r["M"]), str(r["difficulty"]), r["T"], str(r["R"]), r["controller"],
                  str(r["gates"]), str(len(r.get("stones") or [])) if r.get("stones") else "-")
    console.print(t)
    if any(r.get("stones") for r in rows):    # a stone's examples: nramctl tasks sample TASK:STONE
        console.print("stepping stones (train.stones): " + "; ".join(
            f"{r['task']}: {', '.join(r['stones'])}" for r in rows if r.get("stones")))


def samples(r):
    M = r["M"]
    t = Table(title=f"{r['task']}: difficulty {r['difficulty']}, M={M}")
    t.add_column("", style="bold")
    for c in range(M):
        t.add_column(str(c), justify="right")
    for i, ex in enumerate(r["examples"]):
        t.add_row(f"#{i} in", *map(str, ex["memory"]))
        t.add_row("out", *[str(v) if m else "·" for v, m in zip(ex["target"], ex["mask"])],
                  end_section=True)
    console.print(t)


def _cell(v):
    return f"{v['value']}" if v["p"] > 0.995 else f"{v['value']} ({v['p']:.2f})"


def inspect_step(tr, s):
    st = tr["steps"][s - 1]
    head = f"{tr['run']}: example {tr['example']}, step {s}/{len(tr['steps'])}, stop p={st['stop']:.3f}"
    g = Table(title=head)
    for col in ("gate", "input a", "input b", "output"):
        g.add_column(col)
    for gate in st["gates"]:
        ins = [f"{i['source']} ({i['weight']:.2f})" if i["weight"] < 0.995 else i["source"]
               for i in gate["inputs"]] + ["", ""]
        g.add_row(gate["name"], ins[0], ins[1], _cell(gate["output"]))
    console.print(g)
    r = Table(title="registers")
    r.add_column("")
    for i in range(len(st["registers_before"])):
        r.add_column(f"r{i}", justify="right")
    r.add_row("before", *map(_cell, st["registers_before"]))
    r.add_row("after", *map(_cell, st["registers_after"]))
    console.print(r)
    if st["memory_changes"]:
        m = Table(title="memory cells that changed")
        for col in ("cell", "before", "after", "p"):
            m.add_column(col, justify="right")
        for c in st["memory_changes"]:
            m.add_row(str(c["cell"]), str(c["before"]), str(c["after"]), f"{c['p']:.3f}")
        console.print(m)
    else:
        console.print("no memory cell changed")


def inspect_overview(tr):
    t = Table(title=f"{tr['run']}: example {tr['example']} (difficulty {tr['difficulty']}, M={tr['M']}), "
                    f"halts at step {tr['halt']}, {'correct' if tr['correct'] else 'WRONG'}")
    R = len(tr["steps"][0]["registers_before"])
    t.add_column("step", justify="right")
    for i in range(R):
        t.add_column(f"r{i}", justify="right")
    for col in ("READ", "WRITE", "memory changes", "stop"):
        t.add_column(col)
    for st in tr["steps"]:
        gates = {g["name"]: g for g in st["gates"]}
        read = gates.get("READ")
        write = gates.get("WRITE")
        rd = f"p:{read['inputs'][0]['source']}={_cell(read['output'])}" if read else ""
        wr = ""
        if write:
            wr = f"p:{write['inputs'][0]['source']} a:{write['inputs'][1]['source']}"
        ch = ", ".join(f"[{c['cell']}] {c['before']}->{c['after']}" for c in st["memory_changes"])
        style = "bold" if st["step"] == tr["halt"] else None
        t.add_row(str(st["step"]), *map(_cell, st["registers_before"]), rd, wr, ch, f"{st['stop']:.2f}",
                  style=style)
    console.print(t)
    console.print(f"input  {tr['memory']}")
    console.print(f"output {[v if m else '·' for v, m in zip(tr['output'], tr['mask'])]}")
    console.print(f"target {[v if m else '·' for v, m in zip(tr['target'], tr['mask'])]}")


def bench_table(out):
    rows = out["rows"]
    r0 = rows[0]
    t = Table(title=f"training step: batch {r0['batch']} per seed, T={r0['T']}, R={r0['R']}, H={r0['hidden']}, "
                    f"{r0['controller']}, {r0['gates']} gates, {r0['circuit']} step"
                    + (f"; {r0['cpu']}" if r0.get("cpu") else ""))
    cols = ["M", "threads", "seeds", "example-timesteps/s", "s/step", "peak RSS MB"]
    if "speedup" in r0:
        cols += ["naive ex-ts/s", "speedup"]
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        cells = [str(r["M"]), str(r["threads"]), str(r["seeds"]), f"{r['example_timesteps_per_s']:,.0f}",
                 f"{r['seconds_per_step']:.4f}", f"{r['peak_rss_mb']:.0f}"]
        if "speedup" in r:
            cells += [f"{r['baseline_example_timesteps_per_s']:,.0f}", f"{r['speedup']:.2f}x"]
        t.add_row(*cells)
    console.print(t)
    if len({r["threads"] for r in rows}) > 1 and "speedup" in r0:
        for b in out["best"]:
            console.print(f"M={b['M']}, {b['seeds']} seed(s): best {b['example_timesteps_per_s']:,.0f} against the "
                          f"naive best {b['naive_example_timesteps_per_s']:,.0f}: [bold]{b['ratio']:.2f}x[/]")


def program(r):
    console.print(f"[bold]{r['run']}[/]: {r['task']} as a program ({r['controller']}; registers update at "
                  f"once; seen on examples of difficulty {r['difficulty']} at M={r['M']})")
    for c in r["circuits"]:
        when = "; ".join(c["when"][:4]) + (" ..." if len(c["when"]) > 4 else "")
        t = Table(title=f"circuit {c['circuit']}: steps {c['steps']}", title_justify="left", show_header=False)
        t.add_column("")
        for line in c["lines"]:
            t.add_row(line)
        console.print(t)
        console.print(f"  used when {when}")


def bench_eval_memory_table(rows):
    t = Table(title=f"fuzzy evaluation of pretrained/copy: {rows[0]['n']} examples at the largest difficulty "
                    "each M holds, one process per M")
    for c in ("M", "difficulty", "T", "error", "seconds", "peak RSS MB"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["M"]), str(r["difficulty"]), str(r["T"]), pct(r["error"]), f"{r['seconds']:.1f}",
                  f"{r['peak_rss_mb']:.0f}")
    console.print(t)


def bench_startup_table(rows):
    t = Table(title="start-up: wall time from process start to exit (median of fresh processes)")
    for c in ("command", "seconds", "x import typer, rich", "imports torch"):
        t.add_column(c, justify="left" if c == "command" else "right")
    for r in rows:
        t.add_row(r["command"], f"{r['seconds']:.3f}", f"{r['ratio']:.2f}", "yes" if r["imports_torch"] else "no")
    console.print(t)


def bench_discrete_table(out):
    t = Table(title="discrete executor: time per executed timestep (14 gates, lookup-table controller)")
    for c in ("M", "steps", "µs/step", "steps/s", "peak RSS MB"):
        t.add_column(c, justify="right")
    for r in out["rows"]:
        t.add_row(f"{r['M']:,}", f"{r['steps']:,}", f"{1e6 * r['seconds_per_step']:.2f}",
                  f"{r['steps_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}")
    console.print(t)
    console.print(f"slowest / fastest: {out['slowest_over_fastest']:.2f}x")


def _span(r, key, perfect_key):
    if r[key] == 0:
        return f"perfect to {r['rows'][-1]['difficulty']}"
    return f"0 to {r[perfect_key]}, worst {pct(r[key])}"


def _gen(r):
    return (f"fuzzy {_span(r, 'generalization_max_error', 'generalization_perfect_up_to')}; "
            f"discrete {_span(r, 'discrete_max_error', 'discrete_perfect_up_to')}")


def share_pct(r):
    """'31% [14-56%]': a share and its interval in whole percents, but never a share of a few seeds in
    a thousand shown as 0 (two digits under 10%)."""
    def p(x):
        x = 100 * x
        return f"{x:.0f}" if x == 0 or x >= 10 or x == round(x) else f"{x:.2g}"
    return f"{p(r['share'])}% [{p(r['share_low'])}-{p(r['share_high'])}%]"


def share(r):
    """'5/16 = 31% [14-56%]': seeds solved of seeds tried, with the 95% Wilson interval; where
    exploit/explore copies made some of the solved seeds, how many initializations they descend from."""
    text = f"{r['seeds_solved']}/{r['seeds_tried']} = {share_pct(r)}"
    lineages = r.get("solved_lineages")
    if lineages is not None and lineages < r["seeds_solved"]:
        text += f", copies of {lineages} initialization{'s' if lineages != 1 else ''}"
    return text


def reproduce_row(r):
    first = "-" if r["first_solved_seconds"] is None else f"{r['first_solved_seconds']:.0f} s"
    console.print(f"{r['task']}: {r['result']}, seeds solved {share(r)} in {r['measure_seconds']:.0f} s "
                  f"(first at {first}); kept seed {r['seed']} ({r['run']}); "
                  f"generalization {_gen(r)}; discrete = fuzzy on {pct(r['discrete_agrees'])}")
    if r.get("stones"):                   # seeds that left each stone exact, and how many reached the task
        *stones, (task_name, reached) = r["stones"].items()
        console.print("stones (seeds exact / moved on without): " + ", ".join(
            f"{name} {c['exact']}/{c['advanced']}" for name, c in stones) + f"; {reached['reached']} reached {task_name}")


def reproduce_table(results):
    t = Table(title="Table 1, paper | nramctl (test at the M difficulty 50 needs, T scaled)")
    for c in ("task", "train error", "generalization", "discretization", "seeds solved [95% CI]",
              "first solved", "steps", "train s"):
        t.add_column(c, justify="right")
    for r in results:
        p = r["paper"]
        disc = "perfect" if r["discrete_agrees"] == 1 else f"= fuzzy on {pct(r['discrete_agrees'])}"
        t.add_row(r["task"], f"{p['train']} | {pct(r['train_error'])}",
                  f"{p['generalization']} | {_gen(r)}", f"{p['discretization']} | {disc}",
                  share(r), "-" if r["first_solved_seconds"] is None else f"{r['first_solved_seconds']:.0f} s",
                  str(r["steps"]), f"{r['train_seconds']:.0f}")
    console.print(t)


def pooled_share(out):
    t = Table(title=f"{out['task']}: seeds solved over {len(out['runs'])} run(s) of one setting")
    for c in ("run", "state", "seeds", "solved / tried", "solved seeds", "CPU min"):
        t.add_column(c, justify="right" if c in ("solved / tried", "CPU min") else "left")
    for r in out["runs"]:
        t.add_row(r["run"], r["state"], r["seeds"], f"{r['seeds_solved']}/{r['seeds_tried']}",
                  ", ".join(map(str, r["solved"])) or "-", "-" if r["cpu_minutes"] is None else f"{r['cpu_minutes']:.1f}")
    console.print(t)
    if not out["seeds_tried"]:
        console.print("pooled: no seed has trained a step yet")
        return
    rate = out["solved_per_cpu_minute"]
    console.print(f"pooled: seeds solved {share(out)}"
                  + ("" if rate is None else f", {rate:.2f} solved seeds per CPU-minute"))


def sweep_plan(m):
    t = Table(title=f"{m['sweep']}: {m['task']}, {len(m['settings'])} setting(s) x {m['seeds']} seed(s), "
                    f"{m['seeds_per_run']} seed(s) per run, budget {m['budget_minutes'] or '-'} min per run"
                    + (f"; successive halving: the best 1/{m['halving']['eta']} go on with {m['halving']['eta']}x "
                       f"the budget" if m.get("halving") else ""))
    for c in ("setting", "overrides", "runs (seeds)"):
        t.add_column(c)
    for row in m["settings"]:
        runs = ", ".join(f"{r['name']} ({r['seed']}..{r['seed'] + r['seeds'] - 1})" for r in row["runs"])
        t.add_row(str(row["setting"]), escape(" ".join(row["overrides"]) or "(defaults)"), runs)
    console.print(t)


def _rung_budget(unit, budget):
    return f"{budget:g} {'min' if unit == 'minutes' else 'steps'}"


def sweep_table(out):
    halving = any("rung" in r for r in out["rows"])
    # the overrides every setting shares go under the table, so that the column shows what varies
    common = set.intersection(*(set(r["config"]) for r in out["rows"])) if len(out["rows"]) > 1 else set()
    shared = [c for c in out["rows"][0]["config"] if c in common] if common else []
    t = Table(title=f"{out['sweep']}: {out['task']}, settings by share of seeds solved, then best error "
                    f"({out['path']})", caption=escape("every setting: " + " ".join(shared)) if shared else None)
    rows = []
    for r in out["rows"]:
        sh = "-" if r["share"] is None else share_pct(r)
        rung = (f"{r['rung']} ({_rung_budget(r['budget_unit'], r['budget'])})",) if halving else ()
        rows.append((str(r["setting"]), escape("\n".join(c for c in r["config"] if c not in common) or "(defaults)"),
                     *rung, f"{r['finished_runs']}/{len(r['runs'])}", f"{r['seeds_solved']}/{r['seeds_tried']}", sh,
                     "-" if r["median_solved_step"] is None else f"{r['median_solved_step']:.0f}",
                     pct(r["best_error"])))
    heads = ("setting", "config", *(("rung (budget)",) if halving else ()), "runs done", "solved / tried",
             "share [95% CI]", "median solved step", "best error")
    def width(i, head):
        return max(len(head), *(len(line) for row in rows for line in row[i].split("\n")))
    # where the table would not fit, each figure column is no wider than its figures (its header
    # wraps), so that the overrides keep the room
    narrow = sum(width(i, c) + 3 for i, c in enumerate(heads)) + 1 > console.width
    for i, c in enumerate(heads):
        if c == "config":
            t.add_column(c, overflow="fold")     # one override a line; a long one folds, never cut
        else:
            fit = max(max(len(w) for w in c.split()), *(len(row[i]) for row in rows))
            t.add_column(c, justify="right", max_width=fit if narrow else None)
    for row in rows:
        t.add_row(*row)
    console.print(t)
    for h in out.get("halving", {}).get("history", []):
        console.print(f"rung {h['rung']} ({_rung_budget(*h['budget'])}): "
                      f"{len(h['ranked'])} setting(s), went on: {', '.join(map(str, h['promoted']))}")


class BasinProgress:
    """One bar over every amount's training steps (on standard error with --json)."""

    def __init__(self, total, stderr=False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("[bold]basin"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=errors if stderr else console)
        self.task = self.progress.add_task("basin", total=total, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, amount, step):
        self.progress.update(self.task, advance=1, info=f"amount {amount:g}, step {step:,}")


def basin_table(out):
    how = {"scale": "head x amount", "mix": "(1 - amount) solved + amount fresh"}[out["mode"]]
    which = "the hand-wired circuit" if out["circuit"] == "default" else f"the {out['circuit']} circuit"
    t = Table(title=f"{out['task']} (M {out['M']}): {which} distilled into an {out['controller'].upper()} "
                    f"(fuzzy error {pct(out['distilled_error'])}), started at {how}, {out['steps']:,} training steps")
    for c in ("amount", "start error (median)", "back at 0", "errors after", "levels"):
        t.add_column(c, justify="right")
    for r in out["rows"]:
        errs = sorted(r["final_errors"])
        t.add_row(f"{r['amount']:g}", pct(r["start_error"]), f"{r['recovered']}/{out['seeds']}",
                  f"{pct(errs[0])} - {pct(errs[-1])}", " ".join(map(str, r["levels"])))
    console.print(t)
