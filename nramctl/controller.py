"""Controllers: the only trainable part of an NRAM.

Every parameter carries a leading seed axis S, so K independently initialised models train as one
batched computation (`torch.baddbmm` per layer). A single model is simply S = 1.

Shapes: S seeds, B examples per seed, R registers, H hidden units, O = number of output logits.
The controller reads P(r_i = 0) for each register, [S, B, R], and nothing else, so its size does not
depend on the memory size M.
"""
import math

import torch
from torch import nn


class SeedLinear(nn.Module):
    """S independent linear layers: x [S, B, i] -> [S, B, o]."""

    def __init__(self, seeds, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, n_in, n_out))
        self.bias = nn.Parameter(torch.empty(seeds, 1, n_out))
        self.n_in = n_in

    def reset(self, s, generator):
        """Initialise seed s as `nn.Linear` would: U(-1/sqrt(in), 1/sqrt(in))."""
        bound = 1.0 / math.sqrt(self.n_in)
        with torch.no_grad():
            for p in (self.weight, self.bias):
                p[s].uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        return torch.baddbmm(self.bias, x, self.weight)


class MLPController(nn.Module):
    """Two hidden ReLU layers of size H and one linear head emitting every logit."""

    recurrent = False

    def __init__(self, seeds, R, hidden, n_out):
        super().__init__()
        self.l1 = SeedLinear(seeds, R, hidden)
        self.l2 = SeedLinear(seeds, hidden, hidden)
        self.head = SeedLinear(seeds, hidden, n_out)

    def initial_state(self, S, B, like):
        return ()

    def forward(self, x, state):
        h = torch.relu(self.l2(torch.relu(self.l1(x))))
        return self.head(h), state


class LSTMController(nn.Module):
    """One hidden ReLU layer, an LSTM cell, and one linear head; all hidden sizes H."""

    recurrent = True

    def __init__(self, seeds, R, hidden, n_out):
        super().__init__()
        self.inp = SeedLinear(seeds, R, hidden)
        self.gates = SeedLinear(seeds, 2 * hidden, 4 * hidden)   # [x, h] -> i, f, g, o
        self.head = SeedLinear(seeds, hidden, n_out)
        self.hidden = hidden

    def initial_state(self, S, B, like):
        zero = like.new_zeros(S, B, self.hidden)
        return (zero, zero)

    def forward(self, x, state):
        h, c = state
        z = self.gates(torch.cat([torch.relu(self.inp(x)), h], -1))
        i, f, g, o = z.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h), (h, c)


CONTROLLERS = {"mlp": MLPController, "lstm": LSTMController}


def build_controller(kind, seeds, R, hidden, n_out, seed_values, stop_bias=None, head_scale=1.0):
    """A controller with S = len(seed_values) models, seed s initialised from seed_values[s] alone,
    so a model's initial weights do not depend on which other seeds train beside it. `head_scale`
    multiplies the head's initial weights and biases of every logit but the stop logit; `stop_bias`
    (when not None) is then the initial bias of the last logit, the stop logit. The draws are
    unchanged by either, so every other weight is the same as without them."""
    ctl = CONTROLLERS[kind](seeds, R, hidden, n_out)
    for s, value in enumerate(seed_values):
        g = torch.Generator().manual_seed(int(value))
        for layer in ctl.modules():
            if isinstance(layer, SeedLinear):
                layer.reset(s, g)
        if head_scale != 1.0:              # the source choices' logits; the stop logit as drawn
            with torch.no_grad():
                ctl.head.weight[s, :, :-1] *= head_scale
                ctl.head.bias[s, :, :-1] *= head_scale
        if stop_bias is not None:
            with torch.no_grad():
                ctl.head.bias[s, 0, -1] = stop_bias
    return ctl
