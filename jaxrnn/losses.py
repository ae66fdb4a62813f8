"""Per-token negative log-likelihood: the exact log-softmax, and the tutorial's variant."""

from __future__ import annotations

import jax
import jax.numpy as jnp

FAITHFUL_EPS = 1e-6  # the tutorial's log(softmax(o) + 1e-6)


def log_probs(logits, faithful: bool = False):
    """Log-probabilities over the last axis of <float>[..., V] logits.

    faithful=False: log_softmax(o), exact.
    faithful=True:  log(softmax(o) + 1e-6), the tutorial's formula (its gradient is
                    p_y / (p_y + 1e-6) times the exact one); kept for reproducing it.
    """
    if faithful:
        return jnp.log(jax.nn.softmax(logits, axis=-1) + FAITHFUL_EPS)
    return jax.nn.log_softmax(logits, axis=-1)


def cross_entropy(logits, targets, faithful: bool = False):
    """<float>[..., V], <int>[...] -> <float>[...] negative log-likelihood of the targets."""
    return -jnp.take_along_axis(log_probs(logits, faithful), targets[..., None], axis=-1)[..., 0]
