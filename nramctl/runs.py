"""The run store: `runs/run-N` directories, atomic files, safe names, checkpoints loaded in one place.

A run directory holds
    config.yaml        the resolved config (a checkpoint alone also rebuilds the run)
    status.json        state (running / interrupted / solved / budget), step, per-seed results
    metrics.jsonl      one record per seed every log_every steps
    checkpoints/last.pt  everything needed to resume (model, optimizer, RNGs, curriculum, step)
    checkpoints/best.pt  each seed's best parameters on fresh examples
Every file is written to a temporary name, flushed to disk and renamed into place (and the directory
flushed after the rename), so a crash, a power cut or Ctrl-C never leaves a half-written file; a new run
is assembled in a hidden directory and renamed to its name only when complete. The one file appended
to, metrics.jsonl, can lose its last line in a crash: reading drops a torn last line with a warning.
Runs are addressed as `run-3`, `run-3/seed-1`, `pretrained/copy` or `latest`.
"""
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from .config import ConfigError, from_dict, parse_yaml, to_dict

FORMAT, VERSION = "nramctl-checkpoint", 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PRETRAINED = Path(__file__).resolve().parent / "pretrained"
RESERVED = ("latest", "pretrained")          # names that address something else
# what `reproduce` keeps in a run: its plan while it measures and polishes, its result once done
REPRODUCE_PLAN, REPRODUCE_RESULT = "reproduce-plan.json", "reproduce.json"


class RunError(ValueError):
    """A missing, corrupt or foreign run or checkpoint, or a run name that is not allowed."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path):
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp, path):
    """Give the finished (already fsynced) temporary file ordinary permissions, rename it into place and
    flush the directory, so that after a power cut the path holds either the old file or the new one."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def _atomically(path, write, mode):
    """Run write(file) on a temporary file beside `path`, fsync it, then rename it into place; on any
    failure the temporary file goes and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path, data, mode="w"):
    """Write `data` (str or bytes) to a temporary file beside `path`, then rename it into place."""
    _atomically(path, lambda fh: fh.write(data), mode)


def atomic_save(obj, path):
    import torch                         # only commands that write checkpoints pay for importing torch
    _atomically(path, lambda fh: torch.save(obj, fh), "wb")


def pid_alive(pid):
    """Whether process `pid` runs on this machine (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


class Run:
    def __init__(self, path, name, readonly=False):
        self.path, self.name, self.readonly = Path(path), name, readonly
        self.warnings = []                   # things a reader repaired (a torn metrics line), for the CLI

    # ---- files -------------------------------------------------------------------------
    @property
    def checkpoints(self):
        return self.path / "checkpoints"

    def config(self):
        import yaml
        try:
            data = parse_yaml((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            raise RunError(f"{self.name}: config.yaml is missing or unreadable") from None
        try:
            return from_dict(data)
        except ConfigError as e:
            raise RunError(f"{self.name}: config.yaml is invalid ({e})") from None

    def write_config(self, cfg):
        import yaml
        atomic_write(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def status(self):
        """status.json; a run recorded as running whose process is gone (on this host) is reported as
        interrupted: it died without saying so (kill -9, power cut, OOM) and resumes from last.pt."""
        try:
            st = json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return {"state": "unknown"}
        if not isinstance(st, dict):
            return {"state": "unknown"}
        if st.get("state") == "running" and not self.alive(st):
            st["state"] = "interrupted"
        return st

    def refuse_if_training(self):
        """RunError if a live process is training this run (resuming or deleting it would collide)."""
        st = self.status()
        if st.get("state") == "running":
            raise RunError(f"{self.name} is being trained by process {st.get('pid')} on {st.get('host')}; "
                           "stop it first")

    @staticmethod
    def alive(st):
        """Whether the process recorded in a status is running (unknowable on another host: assumed)."""
        if "pid" not in st:
            return False
        return st.get("host") != socket.gethostname() or pid_alive(st["pid"])

    def write_status(self, **fields):
        fields.setdefault("pid", os.getpid())
        fields.setdefault("host", socket.gethostname())
        atomic_write(self.path / "status.json", json.dumps(fields, indent=1))

    def write_json(self, name, data):
        atomic_write(self.path / name, json.dumps(data, indent=1))

    def read_json(self, name):
        """A JSON file of the run, or None if it is missing or unreadable."""
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def files(self):
        """Every file of the run: [{path (relative), bytes}]."""
        return [{"path": str(p.relative_to(self.path)), "bytes": p.stat().st_size}
                for p in sorted(self.path.rglob("*")) if p.is_file() and not p.name.startswith(".")]

    def append_metrics(self, records):
        with open(self.path / "metrics.jsonl", "a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
            fh.flush()

    def metrics(self):
        """The records of metrics.jsonl. A torn last line (a crash in the middle of an append) is
        dropped with a warning; a bad line elsewhere means the file was damaged: RunError."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise RunError(f"{self.name}: cannot read metrics.jsonl ({e.strerror})") from None
        lines = text.split("\n")
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "step" not in rec:
                    raise ValueError
            except ValueError:
                if all(not x.strip() for x in lines[i + 1:]):
                    self.warnings.append(f"{self.name}: dropped a torn last line of metrics.jsonl "
                                         f"(line {i + 1}, {len(line)} bytes)")
                    break
                raise RunError(f"{self.name}: metrics.jsonl line {i + 1} is corrupt") from None
            records.append(rec)
        return records

    def remove_stale_temporaries(self):
        """Delete the temporary files a killed writer left behind (never a complete file)."""
        for folder in (self.path, self.checkpoints):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def truncate_metrics(self, step):
        """Drop records written after `step` (a resumed run rewrites them) and any torn last line."""
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
        import torch
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

    def stage(self):
        """A hidden directory to assemble a new run in (`commit` gives it its name). Staging directories
        left by processes that died are removed here."""
        self.root.mkdir(parents=True, exist_ok=True)
        for p in self.root.glob(".new-*"):
            m = re.fullmatch(r"\.new-(\d+)-.*", p.name)
            if m and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
        path = tempfile.mkdtemp(dir=self.root, prefix=f".new-{os.getpid()}-")
        os.chmod(path, 0o777 & ~_umask())
        return Run(path, "(new run)")

    def commit(self, staged, name=None):
        """Rename a complete staged run to `name`, or to the next free run-N. rename() never replaces a
        non-empty directory, so two processes never claim the same name."""
        if name is not None:
            self.check_new_name(name)
        n = (self._numbers() or [0])[-1] + 1
        while True:
            target = name or f"run-{n}"
            try:
                os.rename(staged.path, self.root / target)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise
                if name is not None:
                    raise RunError(f"run {name!r} already exists in {self.root}") from None
                n += 1
                continue
            fsync_dir(self.root)
            staged.path, staged.name = self.root / target, target
            return staged

    def remove(self, run):
        shutil.rmtree(run.path, ignore_errors=True)

    def check_new_name(self, name):
        self.check_name(name)
        if name in RESERVED:
            meaning = "the newest run" if name == "latest" else "the shipped models"
            raise RunError(f"run name {name!r} is reserved (it addresses {meaning}); choose another")
        if (self.root / name).exists():
            raise RunError(f"run {name!r} already exists in {self.root}")

    def check_name(self, name):
        if not NAME.match(name):
            raise RunError(f"invalid run name {name[:60]!r}: use letters, digits, '-', '_' and '.' "
                           "(no path separators)")

    def resolve(self, ref=None):
        """`run-3`, `run-3/seed-1`, `pretrained/copy`, `latest` or None -> (Run, seed index or None)."""
        ref = "latest" if ref in (None, "") else str(ref)
        parts = ref.split("/")
        seed = None
        if len(parts) >= 2 and re.fullmatch(r"seed-\d+", parts[-1]):
            seed, parts = int(parts[-1][5:]), parts[:-1]
        if len(parts) == 2 and parts[0] == "pretrained":
            self.check_name(parts[1])
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
        self.check_name(name)
        path = self.root / name
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise RunError(f"run name {name!r} points outside {self.root}")
        if not path.is_dir():
            raise RunError(f"no run {name!r} in {self.root}")
        return Run(path, name), seed

    def table(self):
        """One row per run: name, task, M, steps, best_error, state, seeds, started."""
        rows = []
        for run in self.runs():
            st = run.status()
            env = run.read_json("environment.json") or {}
            errs = [s["best_error"] for s in st.get("seeds", []) if s.get("best_error") is not None]
            rows.append({"name": run.name, "task": st.get("task", "?"), "M": st.get("M"),
                         "steps": st.get("step"), "best_error": min(errs) if errs else None,
                         "state": st.get("state", "unknown"), "seeds": len(st.get("seeds", [])),
                         "started": env.get("started")})
        return rows

    def runs(self):
        if not self.root.is_dir():
            return []
        key = lambda p: (0, int(p.name[4:])) if re.fullmatch(r"run-\d+", p.name) else (1, p.name)
        return [Run(p, p.name) for p in sorted(self.root.iterdir(), key=key)
                if p.is_dir() and not p.name.startswith(".") and not (p / "sweep.yaml").exists()]
