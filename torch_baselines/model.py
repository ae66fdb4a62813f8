"""The PyTorch twin of `jaxrnn.model.CharLM`: the module, its initialisation and its loss.

Depends on torch and `jaxrnn.names` (pure Python) only, never on JAX, so that a benchmark's
torch process can use it. `RNN_CLASSES` is the one table from a built-in cell's name (the names
of `jaxrnn.names`: rnn_tanh, rnn_relu, lstm, gru) to its torch module; `torch_baselines.convert`
builds its modules from it too.

  >>> module = TorchCharLM(vocab_size=65, cell="lstm", hidden_size=128, num_layers=2)
  >>> logits, state = module(tokens)                  # tokens <int64>[B, T] -> [B, T, V]
  >>> loss = sequence_loss(logits, targets)           # mean NLL over B*T
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxrnn.names import TORCH_CELLS, canonical_cell

# built-in cell name (jaxrnn.names) -> (torch module class, extra constructor arguments)
RNN_CLASSES = {"rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
               "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
               "lstm": (nn.LSTM, {}),
               "gru": (nn.GRU, {})}
assert set(RNN_CLASSES) == set(TORCH_CELLS), "RNN_CLASSES must cover jaxrnn.names.TORCH_CELLS"
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchCharLM(nn.Module):
    """Embedding (or one-hot) -> nn.LSTM / GRU / RNN -> dropout -> linear head.

    The same structure and parameter shapes as `jaxrnn.model.CharLM`:
      embedding.weight [V, E]           absent when embedding_size == 0 (one-hot input)
      rnn.weight_ih_l{k}, ...           as torch.nn.LSTM / GRU / RNN (time-major)
      head.weight [V, H], head.bias [V]
    Dropout acts between recurrent layers and on the last layer's output, in training mode only.
    `cell` is a name of `jaxrnn.names` (or the legacy alias "rnn" for rnn_tanh); `self.cell`
    holds the canonical name.
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 256,
                 num_layers: int = 2, embedding_size: int = 0, dropout: float = 0.0):
        super().__init__()
        cell = canonical_cell(cell)
        if cell not in RNN_CLASSES:
            raise ValueError(f"cell must be one of {sorted(RNN_CLASSES)}, got {cell!r}")
        self.vocab_size, self.cell = vocab_size, cell
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.embedding_size, self.dropout_rate = embedding_size, dropout
        self.embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        rnn_class, kwargs = RNN_CLASSES[cell]
        # With one layer there is no "between layers"; torch warns about dropout > 0 there.
        self.rnn = rnn_class(embedding_size or vocab_size, hidden_size, num_layers,
                             dropout=dropout if num_layers > 1 else 0.0, **kwargs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "TorchCharLM":
        """A module for a `jaxrnn.config.Config`, in its dtype, initialised by its scheme.

        init="pytorch" is torch's own default initialisation (jaxrnn's "pytorch" scheme draws
        from the same distributions); init="char-rnn" is `char_rnn_init_`. Seed torch first.
        """
        module = cls(vocab_size, config.cell, config.hidden_size, config.num_layers,
                     config.embedding_size, config.dropout).to(TORCH_DTYPES[config.dtype])
        if config.init == "char-rnn":
            char_rnn_init_(module)
        return module

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def zero_state(self, batch_size: int):
        """The all-zero state: <float>[L, B, H], a tuple (h, c) for the LSTM."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, dtype=self.dtype)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(self, tokens, state=None):
        """tokens <int64>[B, T] -> (logits <float>[B, T, V], state [L, B, H] (LSTM: (h, c)))."""
        tokens = tokens.t()  # [T, B]: time-major, as jaxrnn's Recurrent
        if self.embedding is not None:
            x = self.embedding(tokens)  # [T, B, E]
        else:
            x = F.one_hot(tokens, self.vocab_size).to(self.dtype)  # [T, B, V]
        hidden, state = self.rnn(x, state)  # [T, B, H]
        return self.head(self.dropout(hidden)).transpose(0, 1), state  # [B, T, V]


@torch.no_grad()
def char_rnn_init_(module: TorchCharLM) -> TorchCharLM:
    """char-rnn's initialisation, in place: every parameter U(±0.08), LSTM forget-gate bias_ih 1.

    The same scheme as jaxrnn's init="char-rnn" (not the same draws).
    """
    for parameter in module.parameters():
        parameter.uniform_(-0.08, 0.08)
    if module.cell == "lstm":
        hidden = module.hidden_size
        for layer in range(module.num_layers):
            getattr(module.rnn, f"bias_ih_l{layer}")[hidden:2 * hidden] = 1.0
    return module


def detach_state(state):
    """Cuts the graph behind a carried state (truncated BPTT)."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def token_nll(logits, targets, faithful_log_softmax: bool = False):
    """<float>[..., V], <int64>[...] -> <float>[...], as jaxrnn.model.cross_entropy."""
    if faithful_log_softmax:  # the tutorial's log(softmax(o) + 1e-6)
        log_probs = torch.log(torch.softmax(logits, dim=-1) + 1e-6)
    else:
        log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, targets[..., None])[..., 0]


def sequence_loss(logits, targets, reduction: str = "mean", faithful_log_softmax=False):
    """<float>[B, T, V], <int64>[B, T] -> scalar: mean NLL over B*T, or ("sum") sum / B."""
    nll = token_nll(logits, targets, faithful_log_softmax)  # [B, T]
    return nll.mean() if reduction == "mean" else nll.sum() / nll.shape[0]
