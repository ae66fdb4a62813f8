"""The built-in cells' names and gate counts: the one table that the config, the engine, the
weight conversion and the benchmark read. Pure Python (no JAX), so that a benchmark's torch
process can read it without importing JAX.

  name        PyTorch module                     gates G (rows of weight_ih = G * H)
  rnn_tanh    nn.RNN(nonlinearity="tanh")        1
  rnn_relu    nn.RNN(nonlinearity="relu")        1
  lstm        nn.LSTM                            4   (i, f, g, o)
  gru         nn.GRU                             3   (r, z, n)
"""

from __future__ import annotations

NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELL_NAMES = tuple(NUM_GATES)
# Accepted on the command line and in run directories written before the names were unified
# ("rnn" was the config's name of rnn_tanh); never produced.
ALIASES = {"rnn": "rnn_tanh"}


def canonical_cell(name: str) -> str:
    """The built-in cell's one name: `name` itself, or what a legacy alias stands for."""
    return ALIASES.get(name, name)
