"""`torch-mingru` (W6): a PyTorch minGRU char-LM, parallel over time in log space.

Written here from the equations of Feng et al. 2024 ("Were RNNs All We Needed?", arXiv
2410.01201), as jaxrnn.mincells defines the cell, in the log-space form that the public
minGRU-pytorch computes (its code is not copied). With a = W x + b ([2H]: h~ first, then k):

  z = σ(k),   h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t),   g(v) = v + 0.5 (v >= 0), σ(v) (v < 0)

a diagonal linear recurrence h_t = A_t h_{t-1} + B_t with A_t = 1 - z_t > 0 and B_t > 0, so

  log A_t = -softplus(k_t),   log B_t = -softplus(-k_t) + log g(h~_t)
  a*_t = sum_{s <= t} log A_s                                      (torch.cumsum)
  h_t = exp(a*_t + logsumexp_{s <= t}(log B_s - a*_s))            (torch.logcumsumexp)

which is the sum h_t = sum_{s <= t} (prod_{r = s+1..t} A_r) B_s (h_0 = 0) computed in
parallel over time. A carried state h_0 (positive, as every h_t is) enters as one more
element s = 0 with log B_0 = log h_0. Imports torch only, never JAX.

The log-space form pays in precision for its parallelism: a*_t grows linearly in t and the
two large terms cancel, so in float32 h is good to about 1e-3 (absolute, h in (0, 1)) at
T = 16384 against a float64 sequential loop (`mingru_sequential`), 1e-6 at T = 256.

The model is jaxrnn's CharLM with cell "mingru": one-hot input -> the minGRU layer's input
projection (an nn.Linear on the one-hot rows, as nn.GRU's input side in the `torch` peer) ->
the scan -> a linear head. Initialisation as jaxrnn's minGRU: U(±1/sqrt(H)) for the
projection's weight and bias; the head is nn.Linear's default, as `torch_baselines`' model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def log_g(v: torch.Tensor) -> torch.Tensor:
    """log g(v), g(v) = v + 0.5 for v >= 0 and σ(v) below: log(v + 0.5), or -softplus(-v)."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """h_t = A_t h_{t-1} + B_t from h_0 = 0 along `dim`, given log A and log B (same shape)."""
    a_star = torch.cumsum(log_a, dim=dim)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=dim))


def mingru_parallel(h_tilde: torch.Tensor, k: torch.Tensor, h0: torch.Tensor | None = None):
    """The minGRU over time, batch-first: h~, k <float>[B, T, H] -> h <float>[B, T, H].

    h0: optional <float>[B, H] state before the first step (positive; None: zeros).
    """
    log_a = -F.softplus(k)                    # log(1 - z)
    log_b = -F.softplus(-k) + log_g(h_tilde)  # log z + log g(h~)
    if h0 is None:
        return log_space_scan(log_a, log_b)
    log_a = F.pad(log_a, (0, 0, 1, 0))        # A_0 = 1 (unused: h_{-1} = 0)
    log_b = torch.cat([torch.log(h0)[:, None], log_b], dim=1)
    return log_space_scan(log_a, log_b)[:, 1:]


def mingru_sequential(h_tilde: torch.Tensor, k: torch.Tensor, h0: torch.Tensor | None = None):
    """The same recurrence one step at a time (for checking `mingru_parallel`)."""
    z = torch.sigmoid(k)
    g = torch.where(h_tilde >= 0, h_tilde + 0.5, torch.sigmoid(h_tilde))
    h = torch.zeros_like(h_tilde[:, 0]) if h0 is None else h0
    out = []
    for t in range(h_tilde.shape[1]):
        h = (1 - z[:, t]) * h + z[:, t] * g[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


class TorchMinGRULM(nn.Module):
    """One-hot -> minGRU (parallel, log space) -> linear head; batch-first.

    Parameters: to_hidden_and_gate.weight [2H, V], .bias [2H] (rows h~ then k, jaxrnn's
    weight_ih / bias_ih layout); head.weight [V, H], head.bias [V].
    """

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.to_hidden_and_gate = nn.Linear(vocab_size, 2 * hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            self.to_hidden_and_gate.weight.uniform_(-bound, bound)
            self.to_hidden_and_gate.bias.uniform_(-bound, bound)

    def forward(self, tokens, state=None):
        """tokens <int64>[B, T] -> (logits <float>[B, T, V], state <float>[B, H])."""
        dtype = self.head.weight.dtype
        x = F.one_hot(tokens, self.vocab_size).to(dtype)  # [B, T, V]
        h_tilde, k = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        hidden = mingru_parallel(h_tilde, k, state)
        return self.head(hidden), hidden[:, -1]
