"""Part 1's vanilla RNN and Part 2's LSTM on one unbatched chunk: step, forward, loss.

Job: the two models' equations, with the tutorial's parameter names (`init.py`). A chunk is
`inputs`, `targets` <int>[T] character ids with targets[t] = the character after inputs[t];
the state starts at zero for every chunk (h <float>[H]; the LSTM's (h, c), each <float>[H]).
x_t is the one-hot vector of inputs[t]; `U x_t` is computed as the column gather
U[:, inputs[t]], which equals the one-hot matmul, and the gathers of all T steps run before
the `lax.scan` over time.

  *_step(params, state, x_id)        -> (state, logits <float>[V])      one character
  *_forward(params, inputs, state0)  -> (logits <float>[T, V], state_T) one chunk
  *_loss(params, inputs, targets, faithful) -> <float>[]  sum_t -log p(targets[t])

The loss is the *sum* over the chunk's T characters (`jaxrnn.losses.cross_entropy`);
`faithful=True` uses the tutorial's log(softmax(o) + 1e-6), the default the exact log-softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.losses import cross_entropy


def _chunk_nll(logits, targets, faithful):
    """sum_t -log p(targets[t]) for logits <float>[T, V] and targets <int>[T]."""
    return jnp.sum(cross_entropy(logits, targets, faithful))


# ============================================================================ Part 1: RNN


def rnn_step(params, h, x_id):
    """One step of Part 1's RNN on character id `x_id` (a scalar int).

      h_t = tanh(U x_t + W h_{t-1} + b_h)        o_t = V h_t + b_o

    Returns:
      (h_t <float>[H], o_t <float>[V]).
    """
    h = jnp.tanh(params["U"][:, x_id] + params["W"] @ h + params["b_h"])
    return h, params["V"] @ h + params["b_o"]


def rnn_forward(params, inputs, h0=None):
    """Runs Part 1's RNN over one chunk from h0 (zero by default).

    Args:
      inputs: <int>[T] character ids.
    Returns:
      (logits <float>[T, V], h_T <float>[H]).
    """
    hidden_size = params["W"].shape[0]
    h0 = jnp.zeros((hidden_size,), params["W"].dtype) if h0 is None else h0
    # The input term of every step is one gather before the loop: U x_t == U[:, inputs[t]].
    projected = params["U"][:, inputs].T + params["b_h"][None, :]          # (T, H)

    def body(h, xp):
        h = jnp.tanh(xp + params["W"] @ h)
        return h, h

    h_last, hs = jax.lax.scan(body, h0, projected)                          # hs: (T, H)
    logits = hs @ params["V"].T + params["b_o"][None, :]                    # (T, V)
    return logits, h_last


def rnn_loss(params, inputs, targets, faithful: bool = False):
    """Part 1's loss: sum over the chunk of -log p(targets[t] | inputs[:t+1]), h_0 = 0.

    Args:
      params: from `init_rnn`.
      inputs, targets: <int>[T] character ids, targets[t] = the character after inputs[t].
      faithful: use the tutorial's log(softmax + 1e-6) (see `jaxrnn.losses.log_probs`).
    Returns:
      <float>[] the summed negative log-likelihood.
    """
    logits, _ = rnn_forward(params, inputs)
    return _chunk_nll(logits, targets, faithful)


# ============================================================================ Part 2: LSTM


def lstm_step(params, carry, x_id):
    """One step of Part 2's LSTM on character id `x_id`.

      i = σ(U_i x + W_i h + b_i)     f = σ(U_f x + W_f h + b_f)     o = σ(U_o x + W_o h + b_o)
      c̃ = tanh(U_c x + W_c h + b_c)  c = f * c + i * c̃             h = o * tanh(c)
      logits = V h + b

    Args:
      carry: (h <float>[H], c <float>[H]).
    Returns:
      ((h, c), logits <float>[V]).
    """
    projected = tuple(params[f"U_{g}"][:, x_id] + params[f"b_{g}"] for g in "ifoc")
    carry = _lstm_recur(params, carry, projected)
    return carry, params["V"] @ carry[0] + params["b"]


def _lstm_recur(params, carry, projected):
    h, c = carry
    xi, xf, xo, xc = projected
    i = jax.nn.sigmoid(xi + params["W_i"] @ h)
    f = jax.nn.sigmoid(xf + params["W_f"] @ h)
    o = jax.nn.sigmoid(xo + params["W_o"] @ h)
    c_tilde = jnp.tanh(xc + params["W_c"] @ h)
    c = f * c + i * c_tilde
    return o * jnp.tanh(c), c


def lstm_forward(params, inputs, carry0=None):
    """Runs Part 2's LSTM over one chunk from carry0 ((0, 0) by default).

    Args:
      inputs: <int>[T] character ids.
    Returns:
      (logits <float>[T, V], (h_T, c_T) each <float>[H]).
    """
    hidden_size = params["W_i"].shape[0]
    if carry0 is None:
        zeros = jnp.zeros((hidden_size,), params["W_i"].dtype)
        carry0 = (zeros, zeros)
    # U_g x_t + b_g for every step and gate, gathered before the loop.
    projected = tuple(params[f"U_{g}"][:, inputs].T + params[f"b_{g}"][None, :]
                      for g in "ifoc")                                       # 4 x (T, H)

    def body(carry, xp):
        carry = _lstm_recur(params, carry, xp)
        return carry, carry[0]

    carry_t, hs = jax.lax.scan(body, carry0, projected)                     # hs: (T, H)
    logits = hs @ params["V"].T + params["b"][None, :]                      # (T, V)
    return logits, carry_t


def lstm_loss(params, inputs, targets, faithful: bool = False):
    """Part 2's loss: as `rnn_loss`, for the LSTM of `init_lstm`, with (h_0, c_0) = 0."""
    logits, _ = lstm_forward(params, inputs)
    return _chunk_nll(logits, targets, faithful)
