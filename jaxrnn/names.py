"""The built-in cells' names and gate counts: the one table that the config, the engine, the
weight conversion and the benchmark read. Pure Python (no JAX), so that a benchmark's torch
process can read it without importing JAX.

  name        PyTorch module                     gates G (rows of weight_ih = G * H)
  rnn_tanh    nn.RNN(nonlinearity="tanh")        1
  rnn_relu    nn.RNN(nonlinearity="relu")        1
  lstm        nn.LSTM                            4   (i, f, g, o)
  gru         nn.GRU                             3   (r, z, n)
  mingru      no PyTorch module                  2   (h~, z)      jaxrnn.mincells
  minlstm     no PyTorch module                  3   (h~, f, i)   jaxrnn.mincells
  lstm_ln     no PyTorch module                  4   (i, f, g, o) jaxrnn.normcells
  gru_ln      no PyTorch module                  3   (r, z, n)    jaxrnn.normcells

`TORCH_CELLS` are the cells with a PyTorch module: the ones `torch_baselines` converts, trains
and checks parity against.
"""

from __future__ import annotations

NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "mingru": 2, "minlstm": 3,
             "lstm_ln": 4, "gru_ln": 3}
CELL_NAMES = tuple(NUM_GATES)
TORCH_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
MIN_CELLS = ("mingru", "minlstm")  # Feng et al. 2024's minimal cells (model "minlm" runs them)
NORM_CELLS = ("lstm_ln", "gru_ln")  # layer-normalised LSTM and GRU (Ba et al. 2016)
# Accepted on the command line and in run directories written before the names were unified
# ("rnn" was the config's name of rnn_tanh); never produced.
ALIASES = {"rnn": "rnn_tanh"}


def canonical_cell(name: str) -> str:
    """The built-in cell's one name: `name` itself, or what a legacy alias stands for."""
    return ALIASES.get(name, name)
