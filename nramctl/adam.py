"""Adam (Kingma & Ba), the paper's optimizer: the same arithmetic, in the same order, and the same
state_dict layout as `torch.optim.Adam` with its defaults, so checkpoints move between the two.

Why not torch.optim.Adam itself: its first use imports torch._dynamo, about 1.5 s of every short
`nramctl train` (a third of Access's time to a solved model). `tests/test_train.py` checks the two
give bit-identical parameters.

Where the compiled kernel is built, the moments and the step are one pass each of the kernel, in the
same rounding as torch's tensor operations; the square root stays torch's (see kernel.cpp).
"""
import math

import torch

from . import native


class Adam:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        # per seed (leading axis), the step count at which its moments began (None: all with the
        # first step): a restarted seed's bias corrections count from its own first step
        self.starts = None
        self.state = {}
        self._buffers = {}

    def zero_grad(self, set_to_none=True):
        """As torch.optim's: by default the gradients are dropped, so that the next backward hands
        its own tensors over rather than adding them into zeroed ones (a pass less over every
        parameter; the same bits, as 0 + g = g)."""
        for p in self.params:
            if p.grad is not None:
                p.grad = None if set_to_none else p.grad.zero_()

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            st = self.state.get(i)
            if st is None:                     # (setdefault would build two zeroed copies of p every step)
                st = self.state[i] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}
            st["step"] += 1
            g, m, v = p.grad, st["exp_avg"], st["exp_avg_sq"]
            t = st["step"].item()
            fast = native.usable(p, g, m, v) and all(x.is_contiguous() for x in (p, g, m, v))
            threads = native.threads(p.numel(), 1 << 16)
            if fast:
                native.function("adam_moments", p.dtype)(*map(native.address, (g, m, v)), p.numel(), b1, b2, threads)
            else:
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = self._scratch(i, p)        # v.sqrt() without a fresh allocation each step
            torch.sqrt(v, out=denom)
            rate, root2 = None, None
            if self.starts is not None:        # one step count per seed
                ts = t - self.starts
                rate = (self.lr / (1 - b1 ** ts)).to(p.dtype)
                root2 = torch.sqrt(1 - b2 ** ts).to(p.dtype)
            elif torch.is_tensor(self.lr):
                rate = (self.lr / (1 - b1 ** t)).to(p.dtype)
            if fast:
                per = p.numel() // (1 if rate is None else rate.numel())
                native.function("adam_apply", p.dtype)(
                    *map(native.address, (p, m, denom)), p.numel(), per, native.address(rate),
                    0.0 if rate is not None else -self.lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t),
                    native.address(root2), self.eps, threads)
                continue
            seeds = [-1] + [1] * (p.dim() - 1)   # a value per seed (leading axis) against p
            denom.div_(root2.view(seeds) if root2 is not None else math.sqrt(1 - b2 ** t)).add_(self.eps)
            if rate is not None:               # one rate per seed: exploit/explore, restarts
                p.sub_(torch.div(m, denom, out=denom).mul_(rate.view(seeds)))
            else:
                p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** t))

    def steps(self):
        """Updates made so far (every parameter takes each one)."""
        return max((int(st["step"]) for st in self.state.values()), default=0)

    def _scratch(self, i, p):
        """A buffer shaped as parameter i, kept between steps: allocating the square roots afresh
        took a third of the update's time (several MB per step, fresh pages each time)."""
        buf = self._buffers.get(i)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
            buf = self._buffers[i] = torch.empty_like(p)
        return buf

    def state_dict(self):
        lr = float(self.lr.mean()) if torch.is_tensor(self.lr) else self.lr
        group = {"lr": lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                 "fused": None, "decoupled_weight_decay": False, "params": list(range(len(self.params)))}
        return {"state": {i: dict(st) for i, st in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, d):
        group = d["param_groups"][0]
        self.lr, self.betas, self.eps = group["lr"], tuple(group["betas"]), group["eps"]
        self.state = {int(i): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                      for i, st in d["state"].items()}
