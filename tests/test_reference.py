"""The fast machine against a plain reference written from SPEC section 1: same loss, same gradients."""
import copy

import numpy as np
import pytest
import torch

from nramctl.circuits import GATES
from nramctl.data import make_batch
from nramctl.machine import NRAM, fuzzy_run
from test_gates import MEANING


def table(name, M):
    """[M*M, M] one-hot rows: row a*M+b is m(a, b)."""
    t = torch.zeros(M * M, M, dtype=torch.float64)
    for a in range(M):
        for b in range(M):
            t[a * M + b, MEANING[name](a, b, M)] = 1
    return t


def clamp_grad(x, c):
    """SPEC's activation clip, written as a gradient hook."""
    if c and x.requires_grad:
        x.register_hook(lambda g: g.clamp(-c, c))
    return x


def rescale(x, on):
    """SPEC's renormalization: forward x / sum, backward the identity (straight-through)."""
    return x + (x / x.sum(-1, keepdim=True) - x).detach() if on else x


def reference_loss(model, batch, eps=1e-6, clip_c=None, renorm=False):
    """Straightforward NRAM: per-gate softmax over the R + i allowed sources, brute-force gate tables,
    explicit halting loop."""
    N, M = batch.memory.shape
    R, Q = model.R, model.Q
    mem = torch.nn.functional.one_hot(batch.memory, M).double()
    regs = torch.zeros(N, R, M, dtype=torch.float64)
    regs[:, :, 0] = 1
    tables = {g.name: table(g.name, M) for g in model.gates if g.int_fn}
    state = model.controller.initial_state(1, N, regs)
    remaining, loss = torch.ones(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    for t in range(int(batch.T.max())):
        logits, state = model.controller(regs[None, :, :, 0], state)
        logits = clamp_grad(logits[0], clip_c)
        K = R + Q
        arg_logits = logits[:, :2 * Q * K].view(N, Q, 2, K)
        reg_logits = logits[:, 2 * Q * K:-1].view(N, R, K)
        values = [regs[:, r] for r in range(R)]
        for i, g in enumerate(model.gates):
            w = torch.softmax(arg_logits[:, i, :, :R + i], -1)
            V = torch.stack(values, 1)
            A = torch.einsum("nk,nkm->nm", w[:, 0], V)
            B = torch.einsum("nk,nkm->nm", w[:, 1], V)
            if g.name == "READ":
                out = torch.einsum("ni,nic->nc", A, mem)
            elif g.name == "WRITE":
                mem = mem * (1 - A)[:, :, None] + A[:, :, None] * B[:, None, :]
                out = B
            elif g.arity == 2:
                out = (A[:, :, None] * B[:, None, :]).reshape(N, M * M) @ tables[g.name]
            else:   # a gate reads only its own inputs: no gradient reaches an unused argument
                out = (A if g.arity else torch.ones_like(A) / M) @ tables[g.name][::M]
            values.append(out)
        regs = torch.einsum("nrk,nkm->nrm", torch.softmax(reg_logits, -1), torch.stack(values, 1))
        regs, mem = clamp_grad(rescale(regs, renorm), clip_c), clamp_grad(rescale(mem, renorm), clip_c)
        f = torch.sigmoid(logits[:, -1])
        last = batch.T - 1 == t
        p = torch.where(last, remaining, torch.where(t < batch.T - 1, f * remaining, 0.0))
        remaining = remaining * (1 - f)
        for n in range(N):
            for i in np.flatnonzero(batch.mask[n]):
                loss[n] = loss[n] - p[n] * torch.log(mem[n, i, batch.target[n, i]].clamp_min(eps))
    return loss


@pytest.mark.parametrize("clip_c, renorm", [(None, False), (0.05, True)])
@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_fast_step_equals_reference_loss_and_gradients(kind, clip_c, renorm, backend):
    """With a clip of 0.05 most activation gradients are clamped, so a misplaced clip shows."""
    torch.manual_seed(0)
    model = NRAM(3, GATES, controller=kind, hidden=8).double()
    batch = make_batch("copy", 7, [1, 2, 3, 2], np.random.default_rng(0), "2*n+1")
    fast = fuzzy_run(model, batch, clip_c=clip_c, renorm=renorm).loss
    fast.sum().backward()
    g_fast = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref = reference_loss(model, batch, clip_c=clip_c, renorm=renorm)
    ref.sum().backward()
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12)
    for k, p in model.named_parameters():
        assert torch.allclose(g_fast[k], p.grad, rtol=1e-8, atol=1e-12), k


@pytest.mark.parametrize("names", [GATES, GATES[::-1], ["WRITE", "READ", "ADD", "READ", "WRITE", "MIN"] * 2,
                                   ["TWO", "SUB", "LT", "EQ", "LE", "MAX", "DEC", "INC"]])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_compiled_kernel_equals_torch_circuit(names, dtype, tol, monkeypatch):
    """Forward values and every input gradient of the compiled kernel against the PyTorch circuit,
    on gate orders with several READs and WRITEs, unnormalized inputs, clip and renormalization.
    (float32: the kernel's own exp and another summation order, so a float tolerance.)"""
    from nramctl import circuit, native
    from nramctl.gates import circuit as sequence
    if native.library() is None:
        pytest.skip("no C++ compiler: the compiled circuit kernel is unavailable")
    gates, (N, R, M) = tuple(sequence(names)), (3, 3, 9)
    Q, K = len(gates), 3 + len(gates)
    g = torch.Generator().manual_seed(len(names))
    mask = torch.zeros(Q, 2, K, dtype=torch.float64)
    for i in range(Q):
        mask[i, :, R + i:] = float("-inf")
    inputs = [(torch.randn(N, Q, 2, K, generator=g, dtype=torch.float64) * 4 + mask).to(dtype),
              torch.randn(N, R, K, generator=g, dtype=torch.float64).to(dtype),
              torch.rand(N, R, M, generator=g, dtype=torch.float64).to(dtype),
              torch.rand(N, M, M, generator=g, dtype=torch.float64).to(dtype)]
    upstream = [(torch.randn(N, R, M, generator=g, dtype=torch.float64) * 3).to(dtype),
                (torch.randn(N, M, M, generator=g, dtype=torch.float64) * 3).to(dtype),
                torch.randn(N, Q, 2, K, generator=g, dtype=torch.float64).to(dtype),
                torch.randn(N, R, K, generator=g, dtype=torch.float64).to(dtype)]
    results = []
    for lib in (native.library(), False):
        monkeypatch.setattr(native, "_lib", lib)
        xs = [x.clone().requires_grad_() for x in inputs]
        outs = circuit.circuit(gates, *xs, clip_c=1.0, renorm=True)
        torch.autograd.backward(outs, upstream)
        results.append(([o.detach() for o in outs], [x.grad for x in xs]))
    (out_c, grad_c), (out_t, grad_t) = results
    for a, b in zip(out_c + grad_c, out_t + grad_t):
        assert torch.allclose(a, b, rtol=tol, atol=tol)


def test_compiled_kernel_gives_the_same_bits_on_several_threads():
    """Examples are shared out over torch's threads (OpenMP); each example's arithmetic is unchanged."""
    from nramctl import circuit, native
    from nramctl.gates import PAPER_GATES, circuit as sequence
    if native.library() is None:
        pytest.skip("no C++ compiler: the compiled circuit kernel is unavailable")
    gates, (N, R, M) = tuple(sequence(PAPER_GATES)), (130, 4, 10)
    Q, K = len(gates), R + len(gates)
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(Q, 2, K)
    for i in range(Q):
        mask[i, :, R + i:] = float("-inf")
    inputs = [torch.randn(N, Q, 2, K, generator=g) + mask, torch.randn(N, R, K, generator=g),
              torch.softmax(3 * torch.randn(N, R, M, generator=g), -1),
              torch.softmax(3 * torch.randn(N, M, M, generator=g), -1)]
    upstream = [torch.randn(N, R, M, generator=g), torch.randn(N, M, M, generator=g)]
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xs = [x.clone().requires_grad_() for x in inputs]
            outs = circuit.circuit(gates, *xs, clip_c=1.0, renorm=True)
            torch.autograd.backward(outs[:2], upstream)
            results.append([o.detach() for o in outs] + [x.grad for x in xs])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def _run_and_grads(model, batch, entropy, dropout=None, noise=None):
    out = fuzzy_run(model, batch, clip_c=0.5, renorm=True, entropy_bonus=entropy, dropout=dropout, noise=noise)
    obj = out.loss.sum() - (0.1 * out.entropy.sum() if entropy else 0)
    model.zero_grad()
    obj.backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
@pytest.mark.parametrize("R, names, hidden", [(4, None, 8), (2, ["READ", "INC", "WRITE"], 40)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("extra", [None, "dropout", "noise"])
def test_fused_step_equals_pytorch_step(kind, R, names, hidden, dtype, tol, extra, monkeypatch):
    """The whole timestep in the kernel (`fused.py`: controller, head with only the used columns,
    circuit, stop, log-likelihood; weight gradients from one product per layer) against the same run
    as PyTorch ops: loss, entropy, predictions and every parameter's gradient. Three seeds of five
    examples, so blocks of examples end at seed boundaries; a hidden size larger than the head's
    used columns; the clip and the entropy bonus (gradients into the softmax weights) on. The kernel
    runs all timesteps in one call each way, or, for the LSTM with recurrent dropout (its hidden
    state masked between timesteps), one call a timestep; with logit noise, each example and
    timestep's own."""
    from nramctl import fused, native
    from nramctl.gates import PAPER_GATES
    if native.library() is None:
        pytest.skip("no C++ compiler: the compiled kernel is unavailable")
    torch.manual_seed(0)
    model = NRAM(R, names or PAPER_GATES, controller=kind, hidden=hidden, seed_values=[3, 4, 5]).to(dtype)
    batch = make_batch("copy", 9, [1, 2, 3, 4, 2] * 3, np.random.default_rng(1), "2*n+1")
    assert fused.applies(model, model.arg_mask)
    drop = torch.bernoulli(torch.full((15, hidden), 0.7), generator=torch.Generator().manual_seed(2))
    drop = (drop / 0.7).to(dtype) if kind == "lstm" and extra == "dropout" else None
    U = len(fused.head_columns(model)) - 1
    noise = 2 * torch.randn(int(batch.T.max()), 15, U, dtype=dtype) if extra == "noise" else None
    results = []
    for lib in (native.library(), False):
        monkeypatch.setattr(native, "_lib", lib)
        results.append(_run_and_grads(model, batch, entropy=True, dropout=drop, noise=noise))
    (fast, g_fast), (slow, g_slow) = results
    assert torch.allclose(fast.loss, slow.loss, rtol=tol, atol=tol)
    assert torch.allclose(fast.entropy, slow.entropy, rtol=tol, atol=tol)
    assert torch.equal(fast.pred, slow.pred) and torch.equal(fast.halt, slow.halt)
    for k in g_slow:
        scale = g_slow[k].abs().max().clamp_min(1e-12)
        assert ((g_fast[k] - g_slow[k]).abs().max() / scale) < tol, k
    # the head's unused columns get no gradient either way
    unused = torch.ones(model.controller.head.weight.shape[-1], dtype=torch.bool)
    unused[fused.head_columns(model)] = False
    assert (g_fast["controller.head.weight"][:, :, unused] == 0).all()


@pytest.mark.parametrize("kernel", [True, False])
def test_logit_noise_that_stays_the_same_is_a_shift_of_the_heads_bias(kernel, monkeypatch):
    """Noise c on the source logits, the same for every example and timestep, runs the machine whose
    head's bias is c higher on those columns (an independent model, built by hand); noise that
    differs between examples changes their losses, and none is noise of zeros."""
    from nramctl import fused, native
    if kernel and native.library() is None:
        pytest.skip("no C++ compiler: the compiled kernel is unavailable")
    if not kernel:
        monkeypatch.setattr(native, "_lib", False)
    model = NRAM(3, ["READ", "INC", "ADD", "WRITE"], controller="lstm", hidden=6, seed_values=[1, 2]).double()
    batch = make_batch("copy", 9, [1, 2, 3, 4] * 2, np.random.default_rng(4), "2*n+1")
    cols = fused.head_columns(model)[:-1]
    c = torch.randn(len(cols), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    T = int(batch.T.max())
    noisy = fuzzy_run(model, batch, noise=c.expand(T, 8, -1).clone()).loss.detach()
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.controller.head.bias[:, :, cols] += c
    assert torch.allclose(noisy, fuzzy_run(shifted, batch).loss.detach(), rtol=1e-12, atol=1e-12)
    plain = fuzzy_run(model, batch).loss.detach()
    assert torch.equal(fuzzy_run(model, batch, noise=torch.zeros(T, 8, len(cols), dtype=torch.float64)).loss.detach(), plain)
    assert not torch.allclose(noisy, plain)


def test_recurrent_dropout_masks_only_the_state_handed_between_steps():
    """A mask of ones changes nothing; a mask of zeros is the same machine as one whose LSTM never
    reads its previous hidden state (those weight columns zeroed), run without dropout."""
    model = NRAM(4, ["READ", "INC", "ADD", "WRITE"], controller="lstm", hidden=6, seed_values=[1, 2])
    batch = make_batch("copy", 9, [1, 2, 3, 4] * 2, np.random.default_rng(4), "2*n+1")
    plain = fuzzy_run(model, batch).loss.detach()          # with autograd: the unstreamed run
    assert torch.equal(fuzzy_run(model, batch, dropout=torch.ones(8, 6)).loss.detach(), plain)
    dropped = fuzzy_run(model, batch, dropout=torch.zeros(8, 6)).loss.detach()
    assert not torch.allclose(dropped, plain)
    deaf = copy.deepcopy(model)
    with torch.no_grad():
        deaf.controller.gates.weight[:, -6:] = 0             # the rows that read h (input: [x, h])
    assert torch.allclose(fuzzy_run(deaf, batch).loss.detach(), dropped, rtol=1e-5, atol=1e-6)


def test_fused_step_gives_the_same_bits_on_several_threads():
    """The kernel shares examples out over threads; each example's arithmetic does not change."""
    from nramctl import native
    from nramctl.gates import PAPER_GATES
    if native.library() is None:
        pytest.skip("no C++ compiler: the compiled kernel is unavailable")
    model = NRAM(4, PAPER_GATES, controller="lstm", hidden=16, seed_values=list(range(4)))
    batch = make_batch("copy", 10, [1, 2, 3, 4] * 33, np.random.default_rng(2), "2*n+1")
    results, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run_and_grads(model, batch, entropy=False))
    finally:
        torch.set_num_threads(before)
    (a, ga), (b, gb) = results
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)
    for k in ga:        # the weight gradients' batched products may sum in another order
        assert torch.isfinite(ga[k]).all() and torch.allclose(ga[k], gb[k], rtol=1e-5, atol=1e-7), k
