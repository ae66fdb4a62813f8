"""The tutorial's Part 1, kept faithful: a vanilla RNN from scratch with the `autograd` package.

This is the `autograd` peer of benchmark workload W1 (tanh RNN, H = 100, one-hot input, B = 1,
T = 25, SGD lr 0.01, elementwise clip ±5). One training step is `train_step`: autograd.grad of
the loss of one 25-character chunk (the hidden state starting at zero), then SGD with clipping.

  h_t = tanh(U x_t + W h_{t-1} + b_h)      o_t = V h_t + b_o      x_t = one_hot(inputs[t])
  loss = -sum_t log(softmax(o_t)[targets[t]] + 1e-6)        (the tutorial's log-softmax)

Shapes: U [H, V], W [H, H], V [V, H], b_h [H], b_o [V]; every parameter randn * 0.01.
`jaxrnn.tutorial.rnn_loss(..., faithful=True)` computes the same loss (tests/test_tutorial.py).
Depends only on autograd and numpy.
"""

from __future__ import annotations

import autograd.numpy as np
import numpy as onp
from autograd import grad

SEQ_LENGTH = 25
EPS = 1e-6


def init_params(vocab_size: int, hidden_size: int, seed: int = 0):
    """{"U", "W", "V", "b_h", "b_o"}, each np.random.randn(...) * 0.01 (float64)."""
    rng = onp.random.RandomState(seed)
    h, v = hidden_size, vocab_size
    return {
        "U": rng.randn(h, v) * 0.01,
        "W": rng.randn(h, h) * 0.01,
        "V": rng.randn(v, h) * 0.01,
        "b_h": rng.randn(h) * 0.01,
        "b_o": rng.randn(v) * 0.01,
    }


def one_hot(index: int, size: int):
    x = onp.zeros(size)
    x[index] = 1.0
    return x


def softmax(x):
    e = np.exp(x)
    return e / np.sum(e)


def loss(params, inputs, targets, eps: float = EPS):
    """The summed negative log-likelihood of one chunk; eps = 0 gives the exact log-softmax.

    Args:
      inputs, targets: sequences of T character ids, targets[t] = the character after inputs[t].
    """
    U, W, V, b_h, b_o = (params[k] for k in ("U", "W", "V", "b_h", "b_o"))
    vocab_size, hidden_size = V.shape
    h = np.zeros(hidden_size)
    total = 0.0
    for t in range(len(inputs)):
        x = one_hot(inputs[t], vocab_size)
        h = np.tanh(np.dot(U, x) + np.dot(W, h) + b_h)
        o = np.dot(V, h) + b_o
        total = total - np.log(softmax(o)[targets[t]] + eps)
    return total


loss_grad = grad(loss)


def train_step(params, inputs, targets, lr: float = 0.01, clip: float = 5.0):
    """One online step: autograd.grad of `loss`, clip every element to ±clip, then SGD."""
    grads = loss_grad(params, inputs, targets)
    return {k: params[k] - lr * np.clip(grads[k], -clip, clip) for k in params}


def train_online(params, data, num_chunks: int, lr: float = 0.01, clip: float = 5.0,
                 seq_length: int = SEQ_LENGTH):
    """The tutorial's loop over non-overlapping chunks: inputs data[k*T:(k+1)*T], targets +1.

    Returns:
      (params, losses) with the loss of each chunk before its update.
    """
    losses = []
    for k in range(num_chunks):
        inputs = data[k * seq_length:(k + 1) * seq_length]
        targets = data[k * seq_length + 1:(k + 1) * seq_length + 1]
        losses.append(float(loss(params, inputs, targets)))
        params = train_step(params, inputs, targets, lr, clip)
    return params, losses


def sample(params, start_id: int, length: int = 100, rng=None):
    """`length` ids drawn from softmax(o_t) after start_id (not included), zero initial state."""
    rng = onp.random.RandomState(0) if rng is None else rng
    U, W, V, b_h, b_o = (params[k] for k in ("U", "W", "V", "b_h", "b_o"))
    vocab_size, hidden_size = V.shape
    h = np.zeros(hidden_size)
    x = one_hot(start_id, vocab_size)
    ids = []
    for _ in range(length):
        h = np.tanh(np.dot(U, x) + np.dot(W, h) + b_h)
        p = softmax(np.dot(V, h) + b_o)
        ix = int(rng.choice(vocab_size, p=p))
        ids.append(ix)
        x = one_hot(ix, vocab_size)
    return ids
