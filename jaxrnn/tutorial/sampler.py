"""The tutorial's sampler for all three models, one character at a time from a zero state.

Job: `sample(params, model, key, start_id, length)` -> <int32>[length] generated ids, for
model "rnn" (Part 1, `parts12.rnn_step`), "lstm" (Part 2, `parts12.lstm_step`) or
"batched_rnn" (Part 3, `batched.batched_rnn_step`, run on one unbatched character). The whole
loop is one `lax.scan`; the trainer's batched sampler is `jaxrnn.sampling` over `TutorialLM`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn.tutorial.batched import batched_rnn_step
from jaxrnn.tutorial.parts12 import lstm_step, rnn_step

_STEPS = {"rnn": rnn_step, "lstm": lstm_step, "batched_rnn": batched_rnn_step}


def _zero_state(params, model):
    if model == "lstm":
        zeros = jnp.zeros((params["W_i"].shape[0],), params["W_i"].dtype)
        return (zeros, zeros)
    weight = params["W"] if model == "rnn" else params["i2h_weight"]
    return jnp.zeros((weight.shape[0],), weight.dtype)


@functools.partial(jax.jit, static_argnames=("model", "length", "greedy"))
def sample(params, model: str, key, start_id, length: int = 100, greedy: bool = False):
    """Samples `length` characters, starting from character `start_id` and a zero state.

    Step t feeds the previous character (start_id first), and draws the next one from
    softmax(logits) (`jax.random.categorical` with key split(key, length)[t]) or, with
    greedy=True, takes the argmax.

    Args:
      model: "rnn" (Part 1), "lstm" (Part 2) or "batched_rnn" (Part 3).
    Returns:
      <int32>[length] the generated ids, not including start_id.
    """
    if model not in _STEPS:
        raise ValueError(f"model must be one of {sorted(_STEPS)}, got {model!r}")
    step = _STEPS[model]

    def body(carry, step_key):
        state, x_id = carry
        state, logits = step(params, state, x_id)
        if greedy:
            next_id = jnp.argmax(logits)
        else:
            next_id = jax.random.categorical(step_key, logits)
        next_id = next_id.astype(jnp.int32)
        return (state, next_id), next_id

    start = jnp.asarray(start_id, jnp.int32)
    _, ids = jax.lax.scan(body, (_zero_state(params, model), start),
                          jax.random.split(key, length))
    return ids
