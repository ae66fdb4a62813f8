"""Part 3: the tutorial's RNN as a PyTorch-style module, trained on (T, B) batches.

Job: the faithful port of `torch_baselines/tutorial.py` (parameters from
`init.init_batched_rnn`: i2h_weight [H, I+H], i2h_bias [H], h2o_weight [O, H], h2o_bias [O]):

  hidden = tanh(i2h(cat(input_t, hidden)))     output_t = log_softmax(h2o(hidden))

  get_batch(encoded, step, T, B, V)        -> (x_onehot <float>[T, B, V], targets <int32>[T, B])
  batched_rnn_forward(params, x_onehot)    -> (log_probs <float>[T, B, O], h_T <float>[B, H])
  batched_rnn_loss(params, x, targets)     -> <float>[] sum_t mean_b NLL
  train_batched(params, encoded, S, T, B)  -> (params, losses <float>[S]), one `lax.scan`
  batched_rnn_step(params, h, x_id)        -> (h <float>[H], log_probs <float>[O]), unbatched
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn.cells import matmul_transposed


def batched_rnn_step(params, h, x_id):
    """Part 3's module on one character id (scalar int) and h <float>[H]: returns
    (h' <float>[H], log-probabilities <float>[O])."""
    weight = params["i2h_weight"]
    input_size = weight.shape[1] - weight.shape[0]
    # i2h(cat(onehot(x), h)) == weight[:, x] + weight[:, I:] @ h + bias.
    h = jnp.tanh(weight[:, x_id] + weight[:, input_size:] @ h + params["i2h_bias"])
    return h, jax.nn.log_softmax(params["h2o_weight"] @ h + params["h2o_bias"])


def get_batch(encoded, step, seq_length: int, batch_size: int, vocab_size: int,
              dtype=jnp.float32):
    """Part 3's batch `step`: exactly what `torch_baselines.tutorial.get_batch` returns.

    Layout. The text is cut into W = (N - 1) // T consecutive, non-overlapping windows of
    T = seq_length characters; window w has inputs encoded[w*T : (w+1)*T] and targets shifted
    by one, encoded[w*T + 1 : (w+1)*T + 1] (the same chunks as Part 1). An epoch is
    S = W // B steps; step s uses windows (s mod S)*B + b for b = 0 .. B-1 as batch columns
    (the leftover W - S*B windows are not used). So

      inputs[t, b]  = encoded[((s mod S)*B + b)*T + t]
      targets[t, b] = encoded[((s mod S)*B + b)*T + t + 1]

    `step` may be traced (this function runs inside `train_batched`'s scan).

    Args:
      encoded: <int>[N] the encoded text, N >= B*T + 1.
      step: int or <int>[] the step number.
    Returns:
      (x_onehot <dtype>[T, B, vocab_size], targets <int32>[T, B]).
    """
    encoded = jnp.asarray(encoded)
    steps_per_epoch = _steps_per_epoch(encoded.shape[0], seq_length, batch_size)
    first_window = (jnp.asarray(step) % steps_per_epoch) * batch_size
    starts = (first_window + jnp.arange(batch_size)) * seq_length            # (B,)
    positions = jnp.arange(seq_length)[:, None] + starts[None, :]            # (T, B)
    inputs = encoded[positions]
    targets = encoded[positions + 1].astype(jnp.int32)
    return jax.nn.one_hot(inputs, vocab_size, dtype=dtype), targets


def _steps_per_epoch(num_ids: int, seq_length: int, batch_size: int) -> int:
    steps = ((num_ids - 1) // seq_length) // batch_size
    if steps < 1:
        raise ValueError(f"a batch of {batch_size} windows of {seq_length} needs a text of at "
                         f"least {batch_size * seq_length + 1} ids, got {num_ids}")
    return steps


def batched_rnn_forward(params, x_onehot, h0=None):
    """Part 3's module over T steps:

      hidden = tanh(i2h(cat(input_t, hidden)))     output_t = log_softmax(h2o(hidden))

    Args:
      x_onehot: <float>[T, B, I].
      h0: optional <float>[B, H]; zero by default (`initHidden(B)`).
    Returns:
      (log_probs <float>[T, B, O], h_T <float>[B, H]).
    """
    steps, batch_size, input_size = x_onehot.shape
    weight, bias = params["i2h_weight"], params["i2h_bias"]
    hidden_size = weight.shape[0]
    if weight.shape[1] != input_size + hidden_size:
        raise ValueError(f"i2h_weight must be [H, I+H] = [{hidden_size}, "
                         f"{input_size + hidden_size}], got {weight.shape}")
    h0 = jnp.zeros((batch_size, hidden_size), x_onehot.dtype) if h0 is None else h0
    # cat((x, h)) @ weight.T == x @ weight[:, :I].T + h @ weight[:, I:].T; the input half of
    # every step is one GEMM before the loop.
    projected = x_onehot @ weight[:, :input_size].T + bias[None, None, :]     # (T, B, H)
    w_hh = weight[:, input_size:]

    def body(h, xp):
        h = jnp.tanh(xp + matmul_transposed(h, w_hh))
        return h, h

    h_last, hs = jax.lax.scan(body, h0, projected)                             # (T, B, H)
    logits = hs @ params["h2o_weight"].T + params["h2o_bias"][None, None, :]   # (T, B, O)
    return jax.nn.log_softmax(logits, axis=-1), h_last


def batched_rnn_loss(params, x_onehot, targets):
    """Part 3's loss: sum over the T steps of NLLLoss (the mean over the batch) of that step.

    Args:
      x_onehot: <float>[T, B, I].
      targets: <int>[T, B].
    Returns:
      <float>[] sum_t mean_b -log p(targets[t, b]).
    """
    logp, _ = batched_rnn_forward(params, x_onehot)
    picked = jnp.take_along_axis(logp, targets[:, :, None], axis=2)[:, :, 0]   # (T, B)
    return -jnp.sum(jnp.mean(picked, axis=1))


@functools.partial(jax.jit, static_argnames=("num_steps", "seq_length", "batch_size"))
def train_batched(params, encoded, num_steps: int, seq_length: int, batch_size: int,
                  lr=0.001, start_step=0):
    """Part 3's training loop as one `lax.scan` over steps: plain SGD (no clipping).

    Step s (s = start_step .. start_step + num_steps - 1) takes `get_batch(encoded, s, ...)`,
    starts from a zero hidden state, and applies p <- p - lr * grad(batched_rnn_loss).

    Args:
      params: from `init_batched_rnn` (the vocabulary size is the input size I).
      encoded: <int>[N] the encoded text.
    Returns:
      (params, losses <float>[num_steps]), each loss taken before its step's update.
    """
    weight = params["i2h_weight"]
    vocab_size = weight.shape[1] - weight.shape[0]

    def body(params, step):
        x, y = get_batch(encoded, step, seq_length, batch_size, vocab_size, weight.dtype)
        loss, grads = jax.value_and_grad(batched_rnn_loss)(params, x, y)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    return jax.lax.scan(body, params, start_step + jnp.arange(num_steps))
