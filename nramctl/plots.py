"""Pictures of runs: learning curves, one execution's memory over time, error against difficulty, and
the gates' attention. Each kind has a data function (plain numbers, tested against known values) and a
drawing function; matplotlib (the `plot` extra) is imported by the drawing functions only, with the
Agg backend, so the rest of nramctl never pays for it."""
import numpy as np
import torch

from .config import ConfigError
from .program import source_names
from .traces import traced_run

KINDS = ("learning", "execution", "generalization", "gates")


class PlotError(ConfigError):
    """matplotlib missing, or nothing to draw; the message says what to do (a usage error: one line)."""


# ---- data ----------------------------------------------------------------------------------
def learning_data(records):
    """metrics.jsonl records -> {seed: {step, loss, error, level, eval_step, eval_error, solved_step}}."""
    seeds = {}
    for r in records:
        if "event" in r:                     # restarts and exploit/explore copies
            continue
        s = seeds.setdefault(r["seed"], {k: [] for k in ("step", "loss", "error", "level", "eval_step",
                                                          "eval_error")} | {"solved_step": None})
        s["step"].append(r["step"])
        s["loss"].append(r["loss"])
        s["error"].append(r["error"])
        s["level"].append(r["level"])
        if "eval_error" in r:
            s["eval_step"].append(r["step"])
            s["eval_error"].append(r["eval_error"])
        if r.get("solved_step") is not None:
            s["solved_step"] = r["solved_step"]
    return seeds


def execution_data(model, cfg, M, difficulty, example=0, seed=0):
    """One example through the fuzzy machine. memory[t][i] (t = 0 is the input) is cell i's most likely
    value after step t and p[t][i] its probability; reads[t] / writes[t] list the addresses (and
    written values) of step t + 1's READ / WRITE gates; registers[t] likewise; stop[t] = f."""
    batch, out = traced_run(model, cfg, M, difficulty, example, seed)
    first = out.trace[0][0]
    p0, v0 = first.memory[0].max(-1)
    memory, prob = [v0.tolist()], [p0.tolist()]
    regs = [first.registers[0].argmax(-1).tolist()]
    reads, writes, stop = [], [], []
    for before, so, after in out.trace:
        p, v = after.memory[0].max(-1)
        memory.append(v.tolist())
        prob.append(p.tolist())
        regs.append(after.registers[0].argmax(-1).tolist())
        stop.append(float(so.stop[0]))
        r, w = [], []
        for g, (a, b) in zip(model.gates, so.inputs):
            if g.memory == "read":
                r.append(int(a[0].argmax()))
            elif g.memory == "write":
                w.append((int(a[0].argmax()), int(b[0].argmax())))
        reads.append(r)
        writes.append(w)
    return {"task": cfg.task, "M": M, "difficulty": difficulty, "example": example, "T": int(batch.T[0]),
            "memory": memory, "p": prob, "registers": regs, "reads": reads, "writes": writes, "stop": stop,
            "halt": int(out.halt[0]) + 1, "target": batch.target[0].tolist(), "mask": batch.mask[0].tolist()}


def gates_data(model, cfg, M, difficulty, example=0, seed=0, step=None):
    """Attention of each gate input over the sources and of each register over the sources, at one step
    (1-based) or averaged over the example's steps: {"sources", "inputs", "args" [rows][K],
    "register_rows", "regs" [R][K], "step"}."""
    batch, out = traced_run(model, cfg, M, difficulty, example, seed)
    steps = out.trace[:int(batch.T[0])]
    if step is not None:
        if not 1 <= step <= len(steps):
            raise PlotError(f"--step must be between 1 and {len(steps)}, got {step}")
        steps = [steps[step - 1]]
    args = torch.stack([so.weights[0][0] for _, so, _ in steps]).mean(0)       # [Q, 2, K]
    regs = torch.stack([so.weights[1][0] for _, so, _ in steps]).mean(0)       # [R, K]
    names = source_names(model)
    rows, arg_rows = [], []
    for q, g in enumerate(model.gates):
        for j in range(g.arity):
            rows.append(f"{names[model.R + q]}.{'ab'[j]}")
            arg_rows.append(args[q, j].tolist())
    return {"sources": names, "inputs": rows, "args": arg_rows, "register_rows": names[:model.R],
            "regs": regs.tolist(), "step": step}


# ---- drawing -------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'nramctl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, plt):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def draw_learning(data, title, path):
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    panels = [("loss", "loss", "step", True), ("train error", "error", "step", False),
              ("eval error", "eval_error", "eval_step", False), ("curriculum level", "level", "step", False)]
    for ax, (label, key, xkey, log) in zip(axes, panels):
        for seed, d in sorted(data.items()):
            if not d[key]:
                continue
            line, = ax.plot(d[xkey], d[key], lw=1, label=f"seed {seed}", marker="o" if key == "eval_error" else None,
                            ms=3)
            if d["solved_step"] is not None and d["solved_step"] in d[xkey]:
                i = d[xkey].index(d["solved_step"])
                ax.plot([d[xkey][i]], [d[key][i]], marker="*", ms=12, color=line.get_color(), mec="black")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    if len(data) <= 10:
        axes[0].legend(fontsize=7, ncol=min(len(data), 5))
    fig.suptitle(f"{title} (* = solved)")
    fig.tight_layout()
    return _save(fig, path, plt)


def draw_execution(data, title, path):
    """Memory as cells x timesteps coloured by value (pale where uncertain), each value printed; READ
    addresses ringed, WRITE addresses marked; registers and the stop probability beside it."""
    plt = _pyplot()
    mem, p = np.array(data["memory"]), np.array(data["p"])                     # [T+1, M]
    steps, M = mem.shape
    R = len(data["registers"][0])
    w = min(24, max(6, 2 + 0.35 * steps))
    h = min(18, 2.5 + 0.3 * (M + R) + 1.5)
    fig, (ax, ar, ast) = plt.subplots(3, 1, figsize=(w, h), sharex=True,
                                      gridspec_kw={"height_ratios": [M, max(R, 1), 1.5]})
    cmap = plt.get_cmap("viridis")
    rgb = cmap(mem.T / max(M - 1, 1))
    rgb[..., :3] = 1 - p.T[..., None] * (1 - rgb[..., :3])                     # fade toward white when unsure
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    if steps * M <= 4000:
        for t in range(steps):
            for i in range(M):
                lum = rgb[i, t, :3] @ [0.3, 0.6, 0.1]
                ax.text(t, i, str(mem[t, i]), ha="center", va="center", fontsize=7,
                        color="black" if lum > 0.5 else "white")
    for t, (reads, writes) in enumerate(zip(data["reads"], data["writes"]), start=1):
        for a in reads:
            ax.add_patch(plt.Rectangle((t - 0.5, a - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        for a, _ in writes:
            ax.plot([t + 0.3], [a - 0.3], marker="v", color="orange", ms=6, mec="black")
    for i in np.flatnonzero(data["mask"]):
        ax.plot([-0.7], [i], marker=">", color="black", ms=4, clip_on=False)
    ax.set_ylabel("memory cell")
    ax.set_title(f"{title}, difficulty {data['difficulty']}, M={M}: halts after step {data['halt']}\n"
                 "red box = READ address, orange = WRITE address, > = scored cell", fontsize=9)
    regs = np.array(data["registers"]).T                                         # [R, T+1]
    ar.imshow(regs, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=max(M - 1, 1))
    if steps * R <= 4000:
        for t in range(steps):
            for r in range(R):
                ar.text(t, r, str(regs[r, t]), ha="center", va="center", fontsize=7, color="white")
    ar.set_yticks(range(R), [f"r{r}" for r in range(R)])
    ast.bar(range(1, steps), data["stop"], color="gray")
    ast.axhline(0.5, color="red", lw=0.8, ls="--")
    ast.set_ylim(0, 1)
    ast.set_ylabel("stop f")
    ast.set_xlabel("timestep (0 = input)")
    fig.tight_layout()
    return _save(fig, path, plt)


def draw_generalization(data, title, path):
    plt = _pyplot()
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(8, 4))
    d = [r["difficulty"] for r in rows]
    if any(r.get("error") is not None for r in rows):
        ax.plot(d, [100 * r["error"] for r in rows], marker="o", ms=3, label="fuzzy")
    ax.plot(d, [100 * r["discrete_error"] for r in rows], marker="s", ms=3, label="discretized")
    ax.set_xlabel("difficulty")
    ax.set_ylabel("error (%)")
    ax.set_title(f"{title}: generalization at M={data['M']}, {data['n']} examples per difficulty")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, plt)


def draw_gates(data, title, path):
    plt = _pyplot()
    args, regs = np.array(data["args"]), np.array(data["regs"])
    K = len(data["sources"])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.45 * K + 2), 2 + 0.3 * (len(args) + len(regs))),
                                 gridspec_kw={"height_ratios": [max(len(args), 1), max(len(regs), 1)]})
    for ax, m, rows, what in ((a1, args, data["inputs"], "gate inputs"), (a2, regs, data["register_rows"],
                                                                             "registers")):
        ax.imshow(m, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(K), data["sources"], rotation=60, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(what, fontsize=9)
        for i, j in zip(*np.nonzero(m >= 0.1)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > 0.6 else "black")
    when = f"step {data['step']}" if data["step"] else "averaged over the example's steps"
    fig.suptitle(f"{title}: attention over sources, {when}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def draw_sweep(summary, path):
    """Share of seeds solved per setting with its 95% Wilson interval, best first."""
    plt = _pyplot()
    rows = [r for r in summary["rows"] if r["share"] is not None]
    if not rows:
        raise PlotError(f"{summary['sweep']} has no finished runs to draw yet")
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.4 * len(rows)))
    y = np.arange(len(rows))[::-1]
    share = np.array([100 * r["share"] for r in rows])
    lo = share - np.array([100 * r["share_low"] for r in rows])
    hi = np.array([100 * r["share_high"] for r in rows]) - share
    ax.barh(y, share, xerr=[lo, hi], color="tab:blue", alpha=0.8, capsize=3)
    labels = [f"{' '.join(r['config']) or '(defaults)'}  ({r['seeds_solved']}/{r['seeds_tried']})" for r in rows]
    ax.set_yticks(y, [x if len(x) <= 60 else x[:57] + "..." for x in labels], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("seeds solved (%), with 95% Wilson interval")
    ax.set_title(f"{summary['sweep']}: {summary['task']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)
