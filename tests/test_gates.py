"""Every fuzzy gate against the brute-force formula, and every integer function against its meaning."""
import itertools

import numpy as np
import pytest
import torch

from nramctl.gates import GATES, GateError, circuit, gate

# The meaning of each gate, written out independently of nramctl (SPEC section 1 table).
MEANING = {
    "ZERO": lambda a, b, M: 0,
    "ONE": lambda a, b, M: 1,
    "TWO": lambda a, b, M: 2,
    "INC": lambda a, b, M: (a + 1) % M,
    "ADD": lambda a, b, M: (a + b) % M,
    "SUB": lambda a, b, M: (a - b) % M,
    "DEC": lambda a, b, M: (a - 1) % M,
    "LT": lambda a, b, M: 1 if a < b else 0,
    "LE": lambda a, b, M: 1 if a <= b else 0,
    "EQ": lambda a, b, M: 1 if a == b else 0,
    "MIN": lambda a, b, M: min(a, b),
    "MAX": lambda a, b, M: max(a, b),
}
VALUE_GATES = sorted(MEANING)


def brute_force(name, A, B):
    """P(m(A,B) = c) = sum_{a,b} P(A=a) P(B=b) [m(a,b) = c], by explicit loops."""
    N, M = A.shape
    out = np.zeros((N, M))
    for n in range(N):
        for a in range(M):
            for b in range(M):
                out[n, MEANING[name](a, b, M)] += A[n, a] * B[n, b]
    return out


def random_dists(rng, N, M, dtype=torch.float64):
    x = rng.random((N, M)) ** 3          # uneven, non one-hot
    return torch.tensor(x / x.sum(1, keepdims=True), dtype=dtype)


@pytest.mark.parametrize("M", [3, 5, 8, 13, 64, 67])
@pytest.mark.parametrize("name", VALUE_GATES)
def test_fuzzy_gate_matches_brute_force(name, M):
    rng = np.random.default_rng(M)
    A, B = random_dists(rng, 4, M), random_dists(rng, 4, M)
    got = GATES[name].fuzzy(A, B).numpy()
    np.testing.assert_allclose(got, brute_force(name, A.numpy(), B.numpy()), atol=1e-12)
    assert (got >= 0).all()


@pytest.mark.parametrize("M", [4, 7, 10])
@pytest.mark.parametrize("name", VALUE_GATES)
def test_one_hot_inputs_give_the_integer_function(name, M):
    pairs = list(itertools.product(range(M), repeat=2))
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    A = torch.nn.functional.one_hot(a, M).double()
    B = torch.nn.functional.one_hot(b, M).double()
    out = GATES[name].fuzzy(A, B)
    expect = torch.tensor([MEANING[name](x, y, M) for x, y in pairs])
    assert torch.equal(out.argmax(1), expect)
    assert torch.allclose(out.max(1).values, torch.ones(len(pairs), dtype=torch.float64))
    # the integer function itself, on Python ints and on tensors
    assert [GATES[name].int_fn(x, y, M) for x, y in pairs] == expect.tolist()
    got = torch.as_tensor(GATES[name].int_fn(a, b, M)).expand(len(pairs))
    assert torch.equal(got, expect)


@pytest.mark.parametrize("name", VALUE_GATES)
def test_gradcheck_every_gate(name):
    rng = np.random.default_rng(1)
    A = random_dists(rng, 2, 6).requires_grad_()
    B = random_dists(rng, 2, 6).requires_grad_()
    if GATES[name].arity == 0:
        pytest.skip("constant gate: no inputs to differentiate")
    assert torch.autograd.gradcheck(lambda x, y: GATES[name].fuzzy(x, y), (A, B))


@pytest.mark.parametrize("M", [3, 8, 13])
@pytest.mark.parametrize("name", [n for n in VALUE_GATES if GATES[n].arity])
def test_hand_written_gate_backward_is_the_formulas_gradient(name, M):
    """The fused circuit's backward uses each gate's `grad`. Checked against the gradient of the
    bilinear formula by explicit loops, on unnormalized inputs so that no term may lean on sum = 1:
    dA[a] = sum_b B[b] D[m(a, b)] (a unary gate: D[m(a, 0)]), dB[b] = sum_a A[a] D[m(a, b)]."""
    g = GATES[name]
    rng = np.random.default_rng(M)
    A, B, D = (torch.tensor(rng.random((3, M)) * 2) for _ in range(3))
    dA, dB = np.zeros((3, M)), np.zeros((3, M))
    m = np.array([[MEANING[name](a, b, M) for b in range(M)] for a in range(M)])
    for n in range(3):
        for a in range(M):
            if g.arity == 1:
                dA[n, a] = D[n, m[a, 0]]
                continue
            for b in range(M):
                dA[n, a] += B[n, b] * D[n, m[a, b]]
                dB[n, b] += A[n, a] * D[n, m[a, b]]
    got_A, got_B = g.grad(A, B, D)
    np.testing.assert_allclose(got_A.numpy(), dA, atol=1e-12)
    if g.arity == 2:
        np.testing.assert_allclose(got_B.numpy(), dB, atol=1e-12)
        np.testing.assert_allclose(g.fuzzy(A, B).numpy(), brute_force(name, A.numpy(), B.numpy()), atol=1e-12)
    else:
        assert got_B is None


def test_unknown_gate_lists_valid_ones():
    with pytest.raises(GateError, match="valid gates: READ, ZERO"):
        gate("MUL")
    assert gate("less-than").name == "LT"
    assert len(circuit(["READ", "WRITE"], repeat=3)) == 6
