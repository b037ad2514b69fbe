"""A learned circuit as a program a person can read, and as standalone Python.

Gates are named by what feeds them (`r3 = INC(r3)`, `WRITE(ADD(r2, r3), READ(r3))`); a gate whose output
reaches no register and no WRITE never appears; a WRITE that stores a cell's own value back
(`WRITE(x, READ(x))`) is a no-op and is dropped. Registers update at once, from the old values.
"""
from .executor import Program, execute
from .program import source_names


def _expr(model, choice, k, names):
    if k < model.R:
        return f"r{k}"
    q = k - model.R
    g = model.gates[q]
    if g.arity == 0:
        return str(g.int_fn(0, 0, 10 ** 9))
    ins = [_expr(model, choice, i, names) for i in choice.args[q][:g.arity]]
    if g.name in ("MIN", "MAX") and ins[0] == ins[1]:
        return ins[0]                                   # MIN(x, x) = x
    return f"{names[k].split('#')[0]}({', '.join(ins)})"


def circuit_lines(model, choice):
    """One timestep's decisions as statements, in gate order, then the register updates."""
    names = source_names(model)
    lines = []
    for q, g in enumerate(model.gates):
        if g.memory != "write":
            continue
        p, a = (_expr(model, choice, i, names) for i in choice.args[q])
        if a != f"READ({p})":
            lines.append(f"WRITE({p}, {a})")
    for r, src in enumerate(choice.regs):
        if src != r:
            lines.append(f"r{r} = {_expr(model, choice, src, names)}")
    if choice.stop:
        lines.append("HALT")
    return lines or ["(nothing)"]


def _pattern_text(pattern, R):
    return ", ".join(f"r{r}{'=' if pattern >> r & 1 else '≠'}0" for r in range(R))


def _spans(steps):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    steps, out, i = sorted(steps), [], 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        out.append(str(steps[i]) if i == j else f"{steps[i]}-{steps[j]}")
        i = j + 1
    return ", ".join(out)


def describe(model, batch_memory, M, T):
    """Run the executor on examples and collect the distinct circuits, with the steps (1-based) and
    zero patterns that use them. batch_memory: list of integer lists; T: list of step counts."""
    program = Program(model)
    seen = {}
    for mem, steps in zip(batch_memory, T):
        trace = []
        execute(program, list(mem), M, steps, trace)
        for t, (pattern, choice) in enumerate(trace):
            entry = seen.setdefault(choice, {"steps": set(), "patterns": set()})
            entry["steps"].add(t + 1)
            entry["patterns"].add(pattern)
    circuits = sorted(seen.items(), key=lambda kv: min(kv[1]["steps"]))
    out = []
    for i, (choice, e) in enumerate(circuits):
        out.append({"circuit": i + 1, "steps": _spans(e["steps"]), "first_step": min(e["steps"]),
                    "when": [_pattern_text(p, model.R) for p in sorted(e["patterns"])],
                    "lines": circuit_lines(model, choice), "halts": choice.stop})
    return {"controller": "lookup table" if program.table is not None else "lstm network",
            "circuits": out}


def export_python(model, task_name, source):
    """Standalone Python (no torch) running a feed-forward model's learned algorithm."""
    program = Program(model)
    if program.table is None:
        raise ValueError("only a feed-forward (mlp) controller becomes a lookup table; this one is an lstm")
    R = model.R
    rows = ",\n".join(f"    {p}: ({[list(a) for a in c.args]}, {list(c.regs)}, {c.stop})"
                      for p, c in enumerate(program.table))
    body = []
    for q, g in enumerate(model.gates):
        body.append(f"        a, b = v[args[{q}][0]], v[args[{q}][1]]")
        if g.memory == "read":
            body.append(f"        v.append(memory[a])  # {g.name}")
        elif g.memory == "write":
            body.append(f"        memory[a] = b  # {g.name}")
            body.append("        v.append(b)")
        else:
            body.append(f"        v.append({g.expr})  # {g.name}")
    gates = [g.name for g in model.gates]
    return f'''"""NRAM program for the task {task_name!r}, exported by nramctl from {source}.

The controller became a lookup table over the {2 ** R} patterns of [r_i == 0]; each entry gives the
source of every gate input, every register's new source, and whether to halt. Gates: {gates}.
"""

R = {R}
TABLE = {{
{rows},
}}


def run(memory, T):
    """Run on `memory` (a list of M ints, changed in place) for at most T steps.
    Returns the step (0-based) at which the program halted."""
    M = len(memory)
    regs = [0] * R
    for t in range(T):
        pattern = sum(1 << r for r in range(R) if regs[r] == 0)
        args, sources, stop = TABLE[pattern]
        v = list(regs)
{chr(10).join(body)}
        regs = [v[s] for s in sources]
        if stop:
            return t
    return T - 1
'''
