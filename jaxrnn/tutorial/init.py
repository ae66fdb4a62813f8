"""The tutorial's parameter initialisers: Part 1's RNN, Part 2's LSTM, Part 3's batched RNN.

Job: draw parameter dicts under the tutorial's own names and shapes (V = vocab_size,
H = hidden_size):
  init_rnn          {"U": [H, V], "W": [H, H], "V": [V, H], "b_h": [H], "b_o": [V]}
  init_lstm         U_g [H, V], W_g [H, H], b_g [H] for g in (i, f, o, c); V [V, H], b [V]
  init_batched_rnn  {"i2h_weight": [H, I+H], "i2h_bias": [H], "h2o_weight": [O, H],
                     "h2o_bias": [O]}
Parts 1-2 draw every parameter as `randn * 0.01` (biases included), Part 3 as nn.Linear's
default U(±1/sqrt(fan_in)). Each initialiser makes one draw for all its parameters and cuts it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

INIT_SCALE = 0.01        # the tutorial's np.random.randn(...) * 0.01, biases included

RNN_PARAM_NAMES = ("U", "W", "V", "b_h", "b_o")
LSTM_PARAM_NAMES = ("U_i", "W_i", "b_i", "U_f", "W_f", "b_f", "U_o", "W_o", "b_o",
                    "U_c", "W_c", "b_c", "V", "b")
BATCHED_RNN_PARAM_NAMES = ("i2h_weight", "i2h_bias", "h2o_weight", "h2o_bias")


def _split_flat(flat, shapes: dict):
    """Cuts a flat vector into arrays of the given shapes, in order."""
    params, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        params[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return params


def _randn_params(key, shapes: dict, scale: float, dtype):
    # One draw for all parameters: a single threefry in the program compiles several times
    # faster on CPU than one per parameter.
    total = sum(math.prod(shape) for shape in shapes.values())
    return _split_flat(scale * jax.random.normal(key, (total,), dtype), shapes)


@functools.partial(jax.jit, static_argnames=("vocab_size", "hidden_size", "dtype"))
def init_rnn(key, vocab_size: int, hidden_size: int, dtype=jnp.float32, scale=INIT_SCALE):
    """Part 1's RNN parameters, every one `randn * 0.01` as in the tutorial.

    Returns:
      {"U": [H, V], "W": [H, H], "V": [V, H], "b_h": [H], "b_o": [V]} with V = vocab_size,
      H = hidden_size.
    """
    h, v = hidden_size, vocab_size
    shapes = {"U": (h, v), "W": (h, h), "V": (v, h), "b_h": (h,), "b_o": (v,)}
    return _randn_params(key, shapes, scale, dtype)


@functools.partial(jax.jit, static_argnames=("vocab_size", "hidden_size", "dtype"))
def init_lstm(key, vocab_size: int, hidden_size: int, dtype=jnp.float32, scale=INIT_SCALE):
    """Part 2's LSTM parameters, every one `randn * 0.01` as in the tutorial.

    Returns:
      for each gate g in (i, f, o, c): U_g [H, V], W_g [H, H], b_g [H]; and the output layer
      V [V, H], b [V].
    """
    h, v = hidden_size, vocab_size
    shapes = {}
    for gate in ("i", "f", "o", "c"):
        shapes.update({f"U_{gate}": (h, v), f"W_{gate}": (h, h), f"b_{gate}": (h,)})
    shapes.update(V=(v, h), b=(v,))
    return _randn_params(key, shapes, scale, dtype)


@functools.partial(jax.jit,
                   static_argnames=("input_size", "hidden_size", "output_size", "dtype"))
def init_batched_rnn(key, input_size: int, hidden_size: int, output_size: int,
                     dtype=jnp.float32):
    """Part 3's RNN parameters in the torch module's layout, with nn.Linear's default init.

    nn.Linear(fan_in, fan_out) draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Returns:
      {"i2h_weight": [H, I+H], "i2h_bias": [H], "h2o_weight": [O, H], "h2o_bias": [O]}; the
      torch state_dict keys with "." replaced by "_". Columns [0, I) of i2h_weight act on the
      input and [I, I+H) on the hidden state, as in cat((input, hidden), 1).
    """
    shapes = {"i2h_weight": (hidden_size, input_size + hidden_size), "i2h_bias": (hidden_size,),
              "h2o_weight": (output_size, hidden_size), "h2o_bias": (output_size,)}
    bounds = {"i2h_weight": 1.0 / (input_size + hidden_size) ** 0.5,
              "h2o_weight": 1.0 / hidden_size ** 0.5}
    bounds.update(i2h_bias=bounds["i2h_weight"], h2o_bias=bounds["h2o_weight"])
    total = sum(math.prod(shape) for shape in shapes.values())
    unit = _split_flat(jax.random.uniform(key, (total,), dtype, -1.0, 1.0), shapes)
    return {name: bounds[name] * value for name, value in unit.items()}
