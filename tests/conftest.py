import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# The tests' tensors are tiny: one thread avoids the cost of waking a second one for every op.
torch.set_num_threads(1)

import pytest

from nramctl import native


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Run a test once with the compiled circuit kernel and once with the PyTorch circuit."""
    if request.param == "torch":
        monkeypatch.setattr(native, "_lib", False)
    elif native.library() is None:
        if native.compiler() and os.environ.get("NRAMCTL_NATIVE", "1") != "0":
            pytest.fail(f"a C++ compiler is here but the circuit kernel is unavailable: {native.failure()}")
        pytest.skip("no C++ compiler: the compiled circuit kernel is unavailable")
    return request.param
