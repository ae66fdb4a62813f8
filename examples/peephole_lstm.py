"""A new recurrent cell in a few lines: the peephole LSTM (Gers & Schmidhuber, 2000).

How to write a cell. A `jaxrnn.Cell` is a handful of pure functions written for *one example*;
the engine (`jaxrnn.Recurrent`) batches them with `vmap`, runs them over time with `lax.scan`,
and stacks them into layers and directions, with `lengths` (packed-sequence semantics),
dropout between layers, `jit` and `grad`. You provide:

  init(key, input_size, hidden_size, bias=True, dtype=float32) -> params   a dict of arrays
  step(params, carry, x[input_size]) -> (carry, y[hidden_size])            one time step
  zero_carry(hidden_size, dtype) -> carry                                  for one example

and optionally split `step` into a time-parallel `project(params, xs[..., input_size])` (run
once over all T*B inputs before the loop: one big GEMM) and a serial
`recur(params, carry, projected_t)`, with `recur(p, c, project(p, x)) == step(p, c, x)`.
`project` gets arrays with any number of leading dims, so broadcast explicitly (the tests run
with `jax_numpy_rank_promotion="raise"`); `step` and `recur` see one example, no batch dim.
Set `carry_size` to the number of arrays in the carry (2 here: (h, c)); the engine's hx and
h_n are then tuples of that many <float>[L*D, B, H] arrays.

The peephole LSTM lets the input and forget gates look at c_{t-1} and the output gate at c_t,
through diagonal (elementwise) peephole weights p_i, p_f, p_o <float>[H]:

  i  = σ(W_ii x + b_ii + W_hi h + b_hi + p_i ⊙ c)
  f  = σ(W_if x + b_if + W_hf h + b_hf + p_f ⊙ c)
  g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
  c' = f ⊙ c + i ⊙ g
  o  = σ(W_io x + b_io + W_ho h + b_ho + p_o ⊙ c')
  h' = o ⊙ tanh(c')

Everything but the peepholes is PyTorch's LSTM (same layout, gates i, f, g, o), so `init`,
`project` and `zero_carry` are the built-in LSTM's. (The LSTM's `project` returns
W_ih x + b_ih + b_hh per gate: both biases are added once, outside the time loop.)

  >>> rnn = jaxrnn.Recurrent(PEEPHOLE_LSTM, input_size=3, hidden_size=8, num_layers=2,
  ...                        bidirectional=True, dropout=0.1)
  >>> params = rnn.init(jax.random.key(0))
  >>> x, lengths = jnp.ones((5, 2, 3)), jnp.array([5, 3])  # [T, B, I], [B]
  >>> output, (h_n, c_n) = rnn.apply(params, x, lengths=lengths, key=jax.random.key(1))
  >>> output.shape, h_n.shape
  ((5, 2, 16), (4, 2, 8))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxrnn

PEEPHOLES = ("peephole_i", "peephole_f", "peephole_o")


def init(key, input_size: int, hidden_size: int, bias: bool = True, dtype=jnp.float32):
    """The LSTM's params plus peephole_i, peephole_f, peephole_o <dtype>[H] ~ U(±1/sqrt(H))."""
    key_lstm, *keys = jax.random.split(key, 1 + len(PEEPHOLES))
    params = jaxrnn.LSTM.init(key_lstm, input_size, hidden_size, bias, dtype)
    bound = 1.0 / hidden_size**0.5
    for name, k in zip(PEEPHOLES, keys):
        params[name] = jax.random.uniform(k, (hidden_size,), dtype, -bound, bound)
    return params


def recur(params, carry, projected):
    """One step for one example; `projected` = the LSTM's per-gate W_ih x + b_ih + b_hh,
    4 x [H] (the built-in LSTM's `project` folds both biases in, so `recur` adds none)."""
    h, c = carry
    xi, xf, xg, xo = projected
    hi, hf, hg, ho = jnp.split(params["weight_hh"] @ h, 4)  # [4H] -> 4 x [H]
    i = jax.nn.sigmoid(xi + hi + params["peephole_i"] * c)
    f = jax.nn.sigmoid(xf + hf + params["peephole_f"] * c)
    g = jnp.tanh(xg + hg)
    c = f * c + i * g
    o = jax.nn.sigmoid(xo + ho + params["peephole_o"] * c)  # looks at the new cell state
    h = o * jnp.tanh(c)
    return (h, c), h


def step(params, carry, x):
    return recur(params, carry, jaxrnn.LSTM.project(params, x))


PEEPHOLE_LSTM = jaxrnn.Cell(name="peephole_lstm", init=init, step=step,
                            zero_carry=jaxrnn.LSTM.zero_carry, project=jaxrnn.LSTM.project,
                            recur=recur, carry_size=2)
