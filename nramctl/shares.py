"""Shares of seeds solved: the Wilson interval, which seeds count as tried, and one share pooled over
runs that trained the same setting on different seeds.

A share measured on 16 seeds has an interval some 40 points wide, so a figure worth citing pools
several runs: seeds 0-15 one day, 16-31 the next (`--set train.seed=16`), each run's seeds in its
status.json. `pool` adds them up, after checking that they can be: one task, one setting (the keys
that only say how long, on which seeds or how verbosely a run trains may differ), and no seed in two
runs (a seed trains the same way twice, so it would count twice; restarts number their fresh seeds
on from the run's last, into the next run's range).

No torch here: `nramctl runs share` starts as quickly as `nramctl runs`.
"""
import math

# Keys that may differ between pooled runs: where the seeds start, how many train side by side, the
# budget, what happens after a seed solves, and logging. Every other key is the setting measured.
POOLABLE = {"train.seed", "train.seeds", "train.steps", "train.max_minutes", "train.until", "train.polish_steps",
            "train.polish_extra_steps", "train.log_every", "train.checkpoint_every", "train.tensorboard"}


class PoolError(ValueError):
    """Runs that cannot be pooled into one share."""


def wilson(k, n, z=1.959964):
    """95% Wilson score interval of a share k / n: (low, high); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bound at an end is 0 or 1 exactly; computed, it can come out as 0.9999999999999999
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)


def counts_as_tried(record):
    """Whether a seed's record (`Trainer.all_seeds`, a run's status.json) counts as a seed tried: once
    it has trained a step. A slot restarted or refilled at a budget's last check holds a seed that
    never did; records written before `steps` existed count."""
    return record.get("steps", 1) > 0


def tally(records):
    """(seeds tried, those of them solved): the records that count as tried, and which solved."""
    tried = [r for r in records if counts_as_tried(r)]
    return tried, [r for r in tried if r.get("solved_step") is not None]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def pool(runs):
    """One share over runs of the same setting. `runs`: dicts with name, config (nested dict),
    seeds (status.json's per-seed records), state and, where `reproduce` measured it, cpu_minutes.
    -> per-run rows and the pooled share; PoolError where they cannot be pooled."""
    if not runs:
        raise PoolError("no runs to pool")
    first = runs[0]
    base = _flat(first["config"])
    owner, rows, solved_all, tried_all = {}, [], [], 0
    for i, run in enumerate(runs):
        if any(r["name"] == run["name"] for r in runs[:i]):
            raise PoolError(f"{run['name']} is given twice")
        flat = _flat(run["config"])
        if flat.get("task") != base.get("task"):
            raise PoolError(f"{run['name']} trained {flat.get('task')}, {first['name']} {base.get('task')}: "
                            "a share is of one task")
        differ = sorted(k for k in set(base) | set(flat) if k not in POOLABLE and base.get(k) != flat.get(k))
        if differ:
            shown = ", ".join(f"{k} ({base.get(k)!r} / {flat.get(k)!r})" for k in differ[:3])
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise PoolError(f"{run['name']} differs from {first['name']} in {shown}{more}: not one setting")
        tried, solved = tally(run["seeds"])
        twice = sorted(r["seed"] for r in tried if r["seed"] in owner)
        if twice:
            raise PoolError(f"seed{'s' if len(twice) > 1 else ''} {', '.join(map(str, twice[:5]))} trained in both "
                            f"{owner[twice[0]]} and {run['name']}: a seed counts once (start the later run at "
                            f"a free seed, --set train.seed=N)")
        owner.update((r["seed"], run["name"]) for r in tried)
        numbers = sorted(r["seed"] for r in tried)
        rows.append({"run": run["name"], "state": run.get("state"), "seeds": _ranges(numbers),
                     "seeds_tried": len(tried), "seeds_solved": len(solved), "solved": [r["seed"] for r in solved],
                     "cpu_minutes": run.get("cpu_minutes")})
        solved_all += [{"run": run["name"], "seed": r["seed"], "step": r["solved_step"]} for r in solved]
        tried_all += len(tried)
    low, high = wilson(len(solved_all), tried_all)
    minutes = [r["cpu_minutes"] for r in rows]
    cpu = sum(minutes) if minutes and None not in minutes else None
    return {"task": base.get("task"), "runs": rows, "seeds_tried": tried_all, "seeds_solved": len(solved_all),
            "share": len(solved_all) / tried_all if tried_all else None, "share_low": low, "share_high": high,
            "solved": solved_all, "cpu_minutes": cpu,
            "solved_per_cpu_minute": len(solved_all) / cpu if cpu else None}


def _ranges(numbers):
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    spans, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            spans.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(spans)
