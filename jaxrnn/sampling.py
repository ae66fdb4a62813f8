"""Sampling from a trained model: jitted, `lax.scan` over generated characters, batched.

The prime text runs through the model in one `apply` call (teacher forcing); then each step
draws the next character from the logits and feeds it back through `model.step`. `num`
samples are generated together as one batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.errors import UserError


def pick_next(key, logits, temperature, top_k: int = 0, argmax: bool = False):
    """<float>[B, V] logits -> <int32>[B] next tokens.

    argmax: the most likely token (greedy). Otherwise a draw from softmax(logits / temperature),
    restricted to the top_k most likely tokens when top_k > 0.
    """
    return pick_with_uniform(_uniforms(key, logits.shape[:-1]), logits, temperature, top_k,
                             argmax)


def _uniforms(key, shape):
    """<float32>[*shape, 1] uniform draws in (0, 1)."""
    return jax.random.uniform(key, tuple(shape) + (1,), minval=jnp.finfo(jnp.float32).tiny)


def pick_with_uniform(u, logits, temperature, top_k: int = 0, argmax: bool = False):
    """pick_next with its randomness given: u <float>[B, 1] uniform in (0, 1).

    The draw is by inverse CDF: the first token whose cumulative probability reaches
    u * (total). One uniform per row instead of jax.random.categorical's Gumbel noise for
    every logit: sampling at B=64 ran 1.8x faster (the noise was 40% of a step), 1.3x at B=1.
    """
    if argmax:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    # at least float32 (bf16 logits), float64 kept under x64
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [B, V]
    # Tokens of probability 0 (outside the top k) never reach: their cdf equals the previous.
    token = jnp.sum(cdf < u * cdf[:, -1:], axis=-1)
    return jnp.minimum(token, logits.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k", "argmax"))
def generate(model, params, prime, key, temperature, *, length: int, top_k: int = 0,
             argmax: bool = False):
    """Generates `length` tokens after `prime` for each row of the batch.

    Args:
      model: a model with zero_state / apply / step (jaxrnn.model).
      prime: <int32>[B, P], P >= 1: the prime of every sample.
      key: PRNG key (unused with argmax).
      temperature: scalar > 0.
    Returns:
      <int32>[B, length] generated tokens (the prime excluded).
    """
    state = model.zero_state(prime.shape[0])
    logits, state = model.apply(params, state, prime)
    logits = logits[:, -1]  # [B, V]

    def body(carry, u):
        state, logits = carry
        token = pick_with_uniform(u, logits, temperature, top_k, argmax)
        state, logits = model.step(params, state, token)
        return (state, logits), token

    # every step's uniforms drawn at once, before the loop: [length, B, 1]
    _, tokens = jax.lax.scan(body, (state, logits), _uniforms(key, (length, prime.shape[0])))
    return tokens.T  # [B, length]


def sample_text(model, params, vocab, prime: str, length: int, *, num: int = 1,
                temperature: float = 1.0, top_k: int = 0, argmax: bool = False,
                seed: int = 0) -> str | list[str]:
    """Text in, text out. Returns one string (num == 1) or a list of `num` strings."""
    if not prime:
        raise UserError("prime must hold at least one character", fields=("prime",))
    if length < 1 or num < 1:
        raise UserError(f"length and num must be at least 1; got {length} and {num}",
                        fields=("length", "num"))
    if temperature <= 0:
        raise UserError(f"temperature must be positive; got {temperature}",
                        fields=("temperature",))
    if not 0 <= top_k <= len(vocab):
        raise UserError(f"top_k must be in 0..{len(vocab)} (the vocabulary size); got {top_k}",
                        fields=("top_k",))
    ids = vocab.encode(prime, what="the prime text")
    batch = jnp.asarray(np.tile(ids[None, :], (num, 1)))
    tokens = generate(model, params, batch, jax.random.key(seed), jnp.float32(temperature),
                      length=length, top_k=top_k, argmax=argmax)
    texts = [prime + vocab.decode(row) for row in np.asarray(tokens)]
    return texts[0] if num == 1 else texts
