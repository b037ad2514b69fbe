"""TensorBoard event files of a run, one directory per seed (`runs/run-N/tensorboard/seed-K`), written
live during training (`train --tensorboard`) or afterwards from metrics.jsonl (`export --tensorboard`).
View them with `tensorboard --logdir runs`. A resumed run first rewrites the events from its metrics,
which were cut back to its checkpoint, so no step appears twice. Needs the `tensorboard` extra."""
import shutil

from .config import ConfigError

TAGS = ("loss", "error", "eval_error", "level", "examples_per_s")


class TensorBoardMissing(ConfigError):
    """The tensorboard package is not installed (a usage error: one line)."""


def require():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing("TensorBoard logging needs the tensorboard package: "
                                 "pip install 'nramctl[tensorboard]'") from None
    return SummaryWriter


class Writer:
    """Writes metrics records (dicts with step, seed and the TAGS) as scalars, one writer per seed."""

    def __init__(self, run):
        self.root, self.SummaryWriter, self.writers = run.path / "tensorboard", require(), {}

    def log(self, records):
        for r in records:
            if "event" in r:
                continue
            w = self.writers.get(r["seed"])
            if w is None:
                w = self.writers[r["seed"]] = self.SummaryWriter(log_dir=str(self.root / f"seed-{r['seed']}"))
            for tag in TAGS:
                if r.get(tag) is not None:
                    w.add_scalar(tag, r[tag], r["step"])
            if r.get("solved_step") == r["step"]:
                w.add_text("solved", f"reached the target at step {r['step']}", r["step"])

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()
        self.writers = {}


def export(run):
    """(Re)write a run's event files from its metrics.jsonl; returns the directory."""
    records = run.metrics()
    shutil.rmtree(run.path / "tensorboard", ignore_errors=True)
    w = Writer(run)
    w.log(records)
    w.close()
    return run.path / "tensorboard"
