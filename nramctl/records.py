"""What a run ran on: nramctl and library versions, the git commit of a checkout, threads, CPU, host,
the command line, and when each session (the first run and every resume) started and ended."""
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit():
    """The commit of the checkout nramctl runs from (with '-dirty' for uncommitted changes), or None
    for an installed copy."""
    src = Path(__file__).resolve().parent.parent
    if not (src / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _program():
    """The command's name: nramctl also when started as `python -c "from nramctl.cli import main; ..."`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "nramctl" if name in ("", "-c") else name


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def environment():
    """This process's environment as a flat dict (JSON-ready)."""
    import numpy
    import torch

    from . import native
    return {
        "nramctl": _version("nramctl"), "git_commit": git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": numpy.__version__, "threads": torch.get_num_threads(),
        "circuit": native.backend(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "host": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(),
        "command": " ".join([_program(), *sys.argv[1:]]), "started": now(), "ended": None,
        "sweep": os.environ.get("NRAMCTL_SWEEP"),
    }


def start_session(run):
    """Record this process as a new session of the run (environment.json: the first session's fields at
    the top, every session in `sessions`)."""
    env = environment()
    rec = run.read_json("environment.json") or {**env, "sessions": []}
    rec["sessions"].append(env)
    run.write_json("environment.json", rec)


def end_session(run):
    rec = run.read_json("environment.json")
    if not rec or not rec.get("sessions"):
        return
    rec["sessions"][-1]["ended"] = now()
    if len(rec["sessions"]) == 1:
        rec["ended"] = rec["sessions"][0]["ended"]
    run.write_json("environment.json", rec)
