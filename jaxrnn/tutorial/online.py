"""Parts 1-2's training: online SGD on one 25-character chunk at a time.

Job: the tutorial's loop, compiled. The encoded text <int>[N] is cut into non-overlapping
chunks (`chunks`: inputs, targets <int32>[K, T], T = SEQ_LENGTH = 25); each chunk starts from a
zero state, its summed loss (`rnn_loss` / `lstm_loss` of `parts12.py`) is differentiated, and
the tutorial's update p <- p - lr * clip(g, -5, 5) applied (`sgd_clip_update`).

  train_step      one chunk                       -> (params, loss <float>[])
  train_online    K chunks as one `lax.scan`      -> (params, losses <float>[K])
  train_tutorial  train_online in blocks, a sample after each (the tutorial's printout)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn.tutorial.sampler import sample

SEQ_LENGTH = 25          # the tutorial's chunk length


@jax.jit
def sgd_clip_update(params, grads, lr=0.01, clip=5.0):
    """The tutorial's update: p <- p - lr * clip(g, -clip, clip), elementwise, for every leaf."""
    return jax.tree.map(lambda p, g: p - lr * jnp.clip(g, -clip, clip), params, grads)


@functools.partial(jax.jit, static_argnames=("loss_fn", "faithful"))
def train_step(loss_fn, params, inputs, targets, lr=0.01, clip=5.0, faithful=False):
    """One online step on one chunk: (loss, grads) = value_and_grad(loss_fn), then SGD + clip.

    Args:
      loss_fn: `rnn_loss` or `lstm_loss` (static: pass the function itself, not a partial).
      inputs, targets: <int>[T].
    Returns:
      (params, loss <float>[]) with the loss of the chunk *before* the update.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, faithful)
    return sgd_clip_update(params, grads, lr, clip), loss


def chunks(data, num_chunks: int, seq_length: int = SEQ_LENGTH, start_chunk: int = 0):
    """The tutorial's non-overlapping chunks of the encoded text.

    Chunk k (k = start_chunk, ..., start_chunk + num_chunks - 1) has
      inputs  = data[k*T : (k+1)*T]
      targets = data[k*T + 1 : (k+1)*T + 1]
    with T = seq_length.

    Args:
      data: <int>[N] the encoded text; needs N >= (start_chunk + num_chunks) * T + 1.
    Returns:
      (inputs, targets), each <int32>[num_chunks, T].
    """
    data = jnp.asarray(data)
    end = (start_chunk + num_chunks) * seq_length
    if data.ndim != 1 or end + 1 > data.shape[0]:
        raise ValueError(f"{num_chunks} chunks of {seq_length} from chunk {start_chunk} need a "
                         f"1-D text of at least {end + 1} ids, got shape {data.shape}")
    begin = start_chunk * seq_length
    inputs = data[begin:end].reshape(num_chunks, seq_length)
    targets = data[begin + 1:end + 1].reshape(num_chunks, seq_length)
    return inputs.astype(jnp.int32), targets.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("loss_fn", "faithful"))
def _scan_chunks(loss_fn, params, inputs, targets, lr, clip, faithful):
    def body(params, chunk):
        return train_step(loss_fn, params, chunk[0], chunk[1], lr, clip, faithful)

    return jax.lax.scan(body, params, (inputs, targets))


def train_online(loss_fn, params, data, num_chunks: int, lr=0.01, clip=5.0, *,
                 faithful: bool = False, seq_length: int = SEQ_LENGTH, start_chunk: int = 0):
    """The tutorial's online training loop as one `lax.scan` over chunks.

    For k in start_chunk .. start_chunk + num_chunks - 1: the hidden state starts at zero, the
    loss of chunk k (see `chunks`) is differentiated, and `sgd_clip_update` is applied. No Python
    runs per step; the whole loop is one compiled program (one compilation per distinct
    num_chunks).

    Args:
      loss_fn: `rnn_loss` or `lstm_loss`.
      params: the matching parameters.
      data: <int>[N] the encoded text.
    Returns:
      (params, losses <float>[num_chunks]), losses[j] being the loss of chunk start_chunk + j
      before its update.
    """
    inputs, targets = chunks(data, num_chunks, seq_length, start_chunk)
    return _scan_chunks(loss_fn, params, inputs, targets, lr, clip, faithful)


def train_tutorial(loss_fn, model: str, params, data, num_chunks: int, key, start_id: int,
                   sample_every: int = 1000, sample_length: int = 100, lr=0.01, clip=5.0, *,
                   faithful: bool = False, log=None):
    """The tutorial's whole Part 1/2 loop: online training with a sample every `sample_every`.

    Training runs in blocks of `sample_every` chunks, each one `train_online` scan; after each
    block the model samples `sample_length` characters from `start_id` (the tutorial: 'a'),
    with key fold_in(key, first chunk of the block). The result equals one `train_online` over
    all num_chunks (tests/test_tutorial.py).

    Args:
      model: "rnn" or "lstm", for `sample`.
      log: optional callable(step, mean_loss, sample_ids) called after every block.
    Returns:
      (params, losses <float>[num_chunks], samples: list of (step, <int32>[sample_length])).
    """
    all_losses, samples = [], []
    for start in range(0, num_chunks, sample_every):
        count = min(sample_every, num_chunks - start)
        params, losses = train_online(loss_fn, params, data, count, lr, clip,
                                      faithful=faithful, start_chunk=start)
        ids = sample(params, model, jax.random.fold_in(key, start), start_id, sample_length)
        samples.append((start + count, ids))
        all_losses.append(losses)
        if log is not None:
            log(start + count, float(jnp.mean(losses)), ids)
    return params, jnp.concatenate(all_losses), samples
