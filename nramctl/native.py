"""The compiled kernel (`kernel/kernel.cpp` and its headers): built once per machine with the system C++ compiler
into the user's cache, loaded with ctypes.

No compiler, a failed build, or NRAMCTL_NATIVE=0: the PyTorch circuit (`circuit.forward` and its
backward) runs instead, with the same results. `tests/test_reference.py` checks both paths. A failed
build prints one warning line and is remembered (a `.failed` file beside where the library would be,
holding the compiler's message), so later processes do not retry it for the same source and compiler.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernel") / "kernel.cpp"       # includes the headers beside it
# -fno-trapping-math: no program here traps on floating-point exceptions, so loops with a select in
# them (the exponentials of the softmaxes and the LSTM) may be vectorized; results are unchanged.
FLAGS = ["-O3", "-fno-trapping-math", "-shared", "-fPIC", "-std=c++17"]
# -march=native: the SIMD of this CPU (AVX2, AVX-512) for the kernel's vector loops. A library built so
# runs only on CPUs like this one, so the CPU's identity is part of the cached library's name.
NATIVE = ["-march=native"]
# With -fopenmp the kernel's loop over examples runs on OpenMP threads. torch is imported first and
# brings its own libgomp.so.1, which the kernel then shares: one thread pool, no second set of threads
# fighting torch's spinning workers for the cores (a std::thread pool measured several times slower).

# gate name -> kernel code, following the enum in kernel/gates.h (a constant gate's value comes from its
# integer function)
CODES = {"READ": 0, "WRITE": 1, "ZERO": 2, "ONE": 2, "TWO": 2, "INC": 3, "DEC": 4, "ADD": 5, "SUB": 6,
         "LT": 7, "LE": 8, "EQ": 9, "MIN": 10, "MAX": 11}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lib = None


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nramctl"


def library():
    """The loaded kernel, or None where it cannot be built (then the PyTorch circuit runs)."""
    global _lib
    if _lib is None:
        _lib = _build_and_load() or False
    return _lib or None


def backend():
    """What computes a training step here: 'fused' (the kernel runs the whole timestep, `fused.py`)
    or 'torch' (PyTorch ops). Records written before the fused timestep say 'compiled': the kernel
    then ran the circuit alone; its float32 results differ from both in the last bits."""
    return "fused" if library() is not None else "torch"


def compiler():
    """The compiler command as a list ($CXX may carry arguments, e.g. "ccache g++"), or None."""
    cxx = os.environ.get("CXX")
    if cxx:
        try:
            words = shlex.split(cxx)
        except ValueError:
            words = []
        return words if words and shutil.which(words[0]) else None
    found = shutil.which("g++") or shutil.which("c++")
    return [found] if found else None


def failure():
    """Why the kernel is not in use (None when it is, or when NRAMCTL_NATIVE=0 turned it off)."""
    return _failure


_failure = None


def _build_and_load():
    global _failure
    if os.environ.get("NRAMCTL_NATIVE", "1") == "0":
        return None
    cxx = compiler()
    if not cxx:
        _failure = f"no C++ compiler ({'CXX=' + os.environ['CXX'] + ' not found' if os.environ.get('CXX') else 'g++ or c++'})"
        return None
    errors = []
    # without -march=native: generic SIMD; without OpenMP: one thread
    for flags in (FLAGS + NATIVE + ["-fopenmp"], FLAGS + ["-fopenmp"], FLAGS):
        lib, err = _load(cxx, flags)
        if lib:
            return lib
        errors.append(err)
    _failure = errors[-1]
    return None


def _load(cxx, flags):
    """(library, None), or (None, why) after a failed build or load."""
    source = b"".join(f.read_bytes() for f in sorted(SOURCE.parent.glob("*.[ch]*")))   # the .cpp and its .h
    machine = [platform.machine()] + ([cpu_identity()] if NATIVE[0] in flags else [])
    key = hashlib.sha256(source + " ".join(flags + cxx + machine).encode()).hexdigest()[:16]
    target = cache_dir() / f"kernel-{key}.so"
    failed = target.with_suffix(".failed")
    if failed.exists():
        return None, f"an earlier build failed (see {failed}; delete it to retry)"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
            os.close(fd)
            try:          # build beside the target, then rename: a half-built library is never loaded
                subprocess.run([*cxx, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True,
                               timeout=300)
                os.replace(tmp, target)
            except subprocess.CalledProcessError as e:
                _remember(failed, cxx, flags, e.stderr.decode(errors="replace"))
                return None, f"the build failed (see {failed})"
            except subprocess.TimeoutExpired:
                _remember(failed, cxx, flags, "timed out after 300 s")
                return None, f"the build timed out (see {failed})"
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        return None, f"cannot build or load {target}: {e.strerror or e}"
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for s in _SUFFIX.values():
        getattr(lib, f"circuit_forward_{s}").argtypes = [p] * 11 + [i] * 5 + [p] * 3 + [i] * 2
        getattr(lib, f"circuit_backward_{s}").argtypes = [p] * 10 + [d] + [p] * 4 + [i] * 5 + [p] * 2 + [i]
        getattr(lib, f"span_forward_{s}").argtypes = [p, p, i, i, d]
        getattr(lib, f"span_backward_{s}").argtypes = [p, p, i, i, d, d]
        getattr(lib, f"adam_moments_{s}").argtypes = [p] * 3 + [ctypes.c_long] + [d] * 2 + [i]
        getattr(lib, f"adam_apply_{s}").argtypes = [p] * 3 + [ctypes.c_long] * 2 + [p] + [d] * 2 + [p, d, i]
    return lib, None


def _cpuinfo():
    """The first model name, flags, Features and CPU part of Linux's /proc/cpuinfo (None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            keep = {}
            for line in fh:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "flags", "Features", "CPU part") and name not in keep:
                    keep[name] = value.strip()
            return keep
    except OSError:
        return None


def cpu_identity():
    """The CPU's model and feature flags as one string (Linux's /proc/cpuinfo), else the processor
    name Python reports."""
    keep = _cpuinfo()
    if keep is None:
        return platform.processor()
    return " | ".join(f"{k}: {v}" for k, v in sorted(keep.items()))


def simd_level(flags):
    """The widest SIMD extension among a CPU's feature flags, which sets the kernel's vector width
    (AVX-512: 16 floats; AVX2 and AVX: 8), so that benchmark figures say what they ran on."""
    have = set(flags.split())
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"),
                       ("neon", "NEON"), ("sse2", "SSE2")):
        if flag in have:
            return name
    return "no SIMD flags"


def cpu_summary():
    """'model, SIMD level' of this machine (e.g. 'AMD EPYC, AVX2'), for benchmark records."""
    keep = _cpuinfo()
    if keep is None:
        return f"{platform.processor() or platform.machine()}, SIMD unknown"
    model = keep.get("model name") or keep.get("CPU part") or platform.machine()
    return f"{model}, {simd_level(keep.get('flags') or keep.get('Features') or '')}"


def _remember(failed, cxx, flags, message):
    """Record a failed build for this source and compiler, and say so once, in one line."""
    try:
        failed.write_text(f"{' '.join(cxx + flags)}\n{message}")
    except OSError:
        pass
    if "-fopenmp" not in flags:          # the -march=native or OpenMP attempts failing alone are not worth a word
        print(f"nramctl: warning: the compiled circuit kernel did not build ({' '.join(cxx)}; see {failed}); "
              "using the PyTorch circuit (same results, slower)", file=sys.stderr)


def usable(*tensors):
    """Whether the kernel can run on these tensors (CPU, float32 or float64)."""
    return (library() is not None and all(t.device.type == "cpu" for t in tensors)
            and tensors[0].dtype in _SUFFIX and all(t.dtype == tensors[0].dtype for t in tensors))


def address(t):
    """A tensor's address as a plain int (None: a null pointer), for a pointer argument or a ctypes
    array of pointers."""
    return None if t is None else t.data_ptr()


def function(name, dtype):
    """The kernel's entry point `name` for tensors of this dtype (float32 or float64)."""
    return getattr(library(), f"{name}_{_SUFFIX[dtype]}")


class Plan:
    """A gate sequence as the kernel's int arrays."""

    def __init__(self, gates):
        values = [g.int_fn(0, 0, 1 << 30) if g.arity == 0 else 0 for g in gates]   # reduced mod M in C
        self._arrays = [torch.tensor(x, dtype=torch.int32) for x in
                        ([CODES[g.name] for g in gates], [g.arity for g in gates], values)]
        self.addresses = [address(a) for a in self._arrays]
        self.codes, self.arity, self.values = self.addresses
        # memory gates up to the first WRITE see the step's input memory; only those after it need a copy
        first_write = next((i for i, g in enumerate(gates) if g.memory == "write"), len(gates))
        self.Q, self.G = len(gates), sum(1 for g in gates[first_write + 1:] if g.memory)


@functools.lru_cache(maxsize=None)
def plan(gates):
    """The kernel's description of a gate sequence (a tuple of gates), made once."""
    return Plan(gates)


def threads(N, least=64):
    """Threads for a call: torch's count, where the batch (N examples, at least `least`) is large
    enough to share out."""
    return torch.get_num_threads() if N >= least else 1


def padded(M):
    """The kernel's row length for sources and gate inputs: M cells rounded up to a multiple of 8."""
    return (M + 7) // 8 * 8


def forward(plan, arg_logits, reg_logits, registers, memory, renorm, save=True):
    """-> (new registers, memory, args_w, regs_w, V [N, P, K8] (the sources, transposed), AB [N, Q, 2, P],
    saved [N, G, M, M],
    the input memory made contiguous): the softmax weights, every source, the gate inputs and the
    memory as each memory gate after the first WRITE saw it
    (saved is None without `save`: evaluation keeps one memory per example, not G + 1)."""
    N, R, M = registers.shape
    K = R + plan.Q
    inputs = [t.contiguous() for t in (arg_logits, reg_logits, registers, memory)]
    new = registers.new_empty
    args_w, regs_w = new(N, plan.Q, 2, K), new(N, R, K)
    P = padded(M)
    V, AB, saved = new(N, P, padded(K)), new(N, plan.Q, 2, P), new(N, plan.G, M, M) if save else None
    regs_out, mem_out = new(N, R, M), new(N, M, M)
    fn = function("circuit_forward", registers.dtype)
    fn(*map(address, (*inputs, args_w, regs_w, V, AB, saved, regs_out, mem_out)), N, R, plan.Q, M, plan.G,
       plan.codes, plan.arity, plan.values, int(renorm), threads(N))
    return regs_out, mem_out, args_w, regs_w, V, AB, saved, inputs[3]


def backward(plan, M, args_w, regs_w, V, AB, saved, memory, d_regs, d_mem, d_args_w, d_regs_w, clip_c):
    """-> gradients of (arg logits, register logits, registers, memory) of M cells (`memory`: the
    step's input memory, contiguous)."""
    N, R, _ = regs_w.shape
    grads = [t if t is None else t.contiguous() for t in (d_regs, d_mem, d_args_w, d_regs_w)]
    out = (torch.empty_like(args_w), torch.empty_like(regs_w), V.new_empty(N, R, M), V.new_empty(N, M, M))
    fn = function("circuit_backward", V.dtype)
    fn(*map(address, (args_w, regs_w, V, AB, saved, memory, *grads)), float(clip_c or 0.0), *map(address, out),
       N, R, plan.Q, M, plan.G, plan.codes, plan.arity, threads(N))
    return out
