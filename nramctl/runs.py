"""The run store: `runs/run-N` directories, atomic files, safe names, checkpoints loaded in one place.

A run directory holds
    config.yaml        the resolved config (a checkpoint alone also rebuilds the run)
    status.json        state (running / interrupted / solved / budget), step, per-seed results
    metrics.jsonl      one record per seed every log_every steps
    checkpoints/last.pt  everything needed to resume (model, optimizer, RNGs, curriculum, step)
    checkpoints/best.pt  each seed's best parameters on fresh examples
Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C never leaves a
half-written file; runs are addressed as `run-3`, `run-3/seed-1`, `pretrained/copy` or `latest`.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from .config import ConfigError, from_dict, to_dict

FORMAT, VERSION = "nramctl-checkpoint", 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRETRAINED = Path(__file__).resolve().parent / "pretrained"


class RunError(ValueError):
    """A missing, corrupt or foreign run or checkpoint, or a run name that is not allowed."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp, path):
    """Give the finished temporary file ordinary permissions, then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write(path, data, mode="w"):
    """Write `data` (str or bytes) to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Run:
    def __init__(self, path, name, readonly=False):
        self.path, self.name, self.readonly = Path(path), name, readonly

    # ---- files -------------------------------------------------------------------------
    @property
    def checkpoints(self):
        return self.path / "checkpoints"

    def config(self):
        try:
            data = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            raise RunError(f"{self.name}: config.yaml is missing or unreadable") from None
        try:
            return from_dict(data)
        except ConfigError as e:
            raise RunError(f"{self.name}: config.yaml is invalid ({e})") from None

    def write_config(self, cfg):
        atomic_write(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def status(self):
        try:
            return json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return {"state": "unknown"}

    def write_status(self, **fields):
        atomic_write(self.path / "status.json", json.dumps(fields, indent=1))

    def write_json(self, name, data):
        atomic_write(self.path / name, json.dumps(data, indent=1))

    def append_metrics(self, records):
        with open(self.path / "metrics.jsonl", "a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
            fh.flush()

    def metrics(self):
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step):
        """Drop records written after `step` (a resumed run rewrites them)."""
        keep = [r for r in self.metrics() if r["step"] <= step]
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep))

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, which, payload):
        self.checkpoints.mkdir(exist_ok=True)
        atomic_save({"format": FORMAT, "version": VERSION, **payload}, self.checkpoints / f"{which}.pt")

    def load(self, which):
        """A checkpoint dict, loaded with weights_only=True and checked for format and version."""
        path = self.checkpoints / f"{which}.pt"
        if not path.exists():
            raise RunError(f"{self.name}: no checkpoint {which}.pt")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise RunError(f"{self.name}: checkpoint {which}.pt is corrupt or not a nramctl checkpoint") \
                from None
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise RunError(f"{self.name}: {which}.pt is not a nramctl checkpoint")
        if ck.get("version") != VERSION:
            raise RunError(f"{self.name}: {which}.pt has checkpoint version {ck.get('version')!r}; "
                           f"this nramctl reads version {VERSION}")
        return ck


class RunStore:
    def __init__(self, root="runs"):
        self.root = Path(root)

    def _numbers(self):
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir()
                      if (m := re.fullmatch(r"run-(\d+)", p.name)) and p.is_dir())

    def create(self, name=None):
        """Claim a new run directory atomically: the next free run-N, or `name` if it is free."""
        self.root.mkdir(parents=True, exist_ok=True)
        if name is not None:
            self._check_name(name)
            try:
                (self.root / name).mkdir()
            except FileExistsError:
                raise RunError(f"run {name!r} already exists in {self.root}") from None
            return Run(self.root / name, name)
        n = (self._numbers() or [0])[-1] + 1
        while True:                       # mkdir is atomic: two trainings never claim the same N
            try:
                (self.root / f"run-{n}").mkdir()
                return Run(self.root / f"run-{n}", f"run-{n}")
            except FileExistsError:
                n += 1

    def remove(self, run):
        shutil.rmtree(run.path, ignore_errors=True)

    def _check_name(self, name):
        if not NAME.match(name):
            raise RunError(f"invalid run name {name!r}: use letters, digits, '-', '_' and '.' "
                           "(no path separators)")

    def resolve(self, ref=None):
        """`run-3`, `run-3/seed-1`, `pretrained/copy`, `latest` or None -> (Run, seed index or None)."""
        ref = "latest" if ref in (None, "") else str(ref)
        parts = ref.split("/")
        seed = None
        if len(parts) >= 2 and re.fullmatch(r"seed-\d+", parts[-1]):
            seed, parts = int(parts[-1][5:]), parts[:-1]
        if len(parts) == 2 and parts[0] == "pretrained":
            self._check_name(parts[1])
            path = PRETRAINED / parts[1]
            if not path.is_dir():
                have = ", ".join(sorted(p.name for p in PRETRAINED.iterdir() if p.is_dir())) \
                    if PRETRAINED.is_dir() else "none"
                raise RunError(f"no pretrained model {parts[1]!r}; available: {have}")
            return Run(path, f"pretrained/{parts[1]}", readonly=True), seed
        if len(parts) != 1:
            raise RunError(f"invalid run name {ref!r}: expected run-N, run-N/seed-K or pretrained/TASK")
        name = parts[0]
        if name == "latest":
            nums = self._numbers()
            if not nums:
                raise RunError(f"no runs in {self.root}")
            name = f"run-{nums[-1]}"
        self._check_name(name)
        path = self.root / name
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise RunError(f"run name {name!r} points outside {self.root}")
        if not path.is_dir():
            raise RunError(f"no run {name!r} in {self.root}")
        return Run(path, name), seed

    def runs(self):
        if not self.root.is_dir():
            return []
        key = lambda p: (0, int(p.name[4:])) if re.fullmatch(r"run-\d+", p.name) else (1, p.name)
        return [Run(p, p.name) for p in sorted(self.root.iterdir(), key=key)
                if p.is_dir() and not p.name.startswith(".")]
