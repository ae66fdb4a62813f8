"""The JAX side of PyTorch's packing utilities: padded batches plus lengths.

PyTorch packs uneven sequences into a `PackedSequence`; jaxrnn keeps them padded and carries
`lengths` next to them, which has the same meaning and keeps every shape static for `jit`.
The tutorial's Part 4 example maps onto these helpers like this:

  PyTorch                                              jaxrnn
  pad_sequence(seqs)                                   padded, lengths = pad_sequences(seqs)
  pack_padded_sequence(padded, lengths,                rnn.apply(params, padded,
      enforce_sorted=False) -> rnn -> pad_packed_...             lengths=lengths)
  output[lengths - 1, range(B)]                        last_valid(output, lengths)

  >>> padded, lengths = pad_sequences([jnp.ones((4, 1)), jnp.ones((2, 1)), jnp.ones((1, 1))])
  >>> padded.shape, lengths.tolist()
  ((4, 3, 1), [4, 2, 1])
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def pad_sequences(seqs, batch_first: bool = False, padding_value: float = 0.0):
    """Pads a list of [T_i, *F] arrays into one batch, like `torch.nn.utils.rnn.pad_sequence`.

    Returns:
      (padded, lengths): padded <dtype>[T_max, B, *F] ([B, T_max, *F] if batch_first) and
      lengths <int32>[B] holding each T_i.
    """
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    arrays = [np.asarray(s) for s in seqs]
    feature_shape = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim < 1 or a.shape[1:] != feature_shape:
            raise ValueError(f"sequence {i} has shape {a.shape}; every sequence must be "
                             f"[T_i, *{feature_shape}]")
        if a.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty; every length must be at least 1")
    lengths = np.array([a.shape[0] for a in arrays], np.int32)
    dtype = np.result_type(*arrays)
    padded = np.full((int(lengths.max()), len(arrays)) + feature_shape, padding_value, dtype)
    for i, a in enumerate(arrays):
        padded[: a.shape[0], i] = a
    if batch_first:
        padded = np.swapaxes(padded, 0, 1)
    return jnp.asarray(padded), jnp.asarray(lengths)


def sequence_mask(lengths, max_len: int):
    """<bool>[B, max_len]: True where position t < lengths[b] (a valid element)."""
    lengths = jnp.asarray(lengths)
    return jnp.arange(max_len)[None, :] < lengths[:, None]


def last_valid(output, lengths, batch_first: bool = False):
    """Each sequence's output at its own last element.

    Args:
      output: <float>[T, B, F] ([B, T, F] if batch_first).
      lengths: <int>[B], values in 1..T.
    Returns:
      <float>[B, F]: output[lengths[b] - 1, b].
    """
    output = jnp.asarray(output)
    if batch_first:
        output = jnp.swapaxes(output, 0, 1)
    lengths = jnp.asarray(lengths)
    return output[lengths - 1, jnp.arange(output.shape[1])]
