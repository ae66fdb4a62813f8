"""The recurrent engine: the JAX counterpart of torch.nn.RNN / LSTM / GRU.

`Recurrent` stacks a cell (`jaxrnn.cells`) into layers and directions and runs it over time
with `lax.scan`. With `lengths` it gives exactly what PyTorch gives for
`pack_padded_sequence(x, lengths, enforce_sorted=False)` -> module -> `pad_packed_sequence`:
outputs are zero at padded positions, each sequence's final state is the state at its own last
element, and the reverse direction starts at each sequence's own last element.

How one direction of one layer runs (`run_direction`):
  1. the input projection of every time step is one GEMM before the loop (`cell.project`),
  2. the scan body does only the recurrent matmul and the gate math (`cell.recur`),
  3. with lengths, a [T, B] mask freezes the carry after a sequence ends and zeroes the output.
Without lengths, no mask enters the loop. A registered fast layer (`register_fast_layer`), e.g.
a `custom_vjp` LSTM or a fused kernel, can replace steps 1-3 for a built-in cell; the scan here
stays the reference and the fallback.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells as cells_lib
from jaxrnn.packing import sequence_mask

# name of a built-in cell -> fn(params, xs[T,B,I], carry0, reverse) -> (ys[T,B,H], carryT)
_FAST_LAYERS: dict[str, Callable] = {}
_FAST_TOKEN_LAYERS: dict[str, Callable] = {}


def register_fast_layer(cell_name: str, fn: Callable, tokens_fn: Callable | None = None) -> None:
    """Registers a faster implementation of one unmasked direction of a built-in cell.

    `fn(params, xs, carry0, reverse) -> (ys, carry_T)` must equal `run_direction` without
    lengths (the parity tests check both against PyTorch). It is used when
    `Recurrent(impl="auto" | "fast")` runs without `lengths`.

    `tokens_fn(params, ids, table, carry0, reverse)`, optional, is the same layer fed token
    ids: it must equal `fn(params, table[ids], ...)` (one-hot rows when table is None), and
    is what `Recurrent.apply_tokens` runs for layer 0.
    """
    _FAST_LAYERS[cell_name] = fn
    if tokens_fn is not None:
        _FAST_TOKEN_LAYERS[cell_name] = tokens_fn
    else:
        _FAST_TOKEN_LAYERS.pop(cell_name, None)


def run_direction(cell: cells_lib.Cell, params, xs, carry0, *, reverse=False, mask=None,
                  unroll: int = 1):
    """Runs one direction of one layer over time.

    Args:
      cell: the cell.
      params: the cell's parameter dict.
      xs: <float>[T, B, I] inputs, time-major.
      carry0: the initial carry, a pytree of <float>[B, H] arrays.
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      mask: optional <bool>[T, B]; False marks padding. A masked step keeps the carry and
        emits zeros, so the reverse direction starts at each sequence's own last element.
      unroll: passed to `lax.scan`.

    Returns:
      (ys <float>[T, B, H], carry_T) where carry_T is each sequence's final carry.
    """
    if cell.project is not None:
        projected = cell.project(params, xs)  # one GEMM for all T*B inputs
        recur = jax.vmap(cell.recur, in_axes=(None, 0, 0))
    else:
        projected = xs
        recur = jax.vmap(cell.step, in_axes=(None, 0, 0))

    if mask is None:
        def body(carry, xp):
            return recur(params, carry, xp)
        carry_t, ys = jax.lax.scan(body, carry0, projected, reverse=reverse, unroll=unroll)
        return ys, carry_t

    def masked_body(carry, inputs):
        xp, m = inputs
        new_carry, y = recur(params, carry, xp)
        m = m[:, None]
        carry = jax.tree.map(lambda new, old: jnp.where(m, new, old), new_carry, carry)
        return carry, jnp.where(m, y, jnp.zeros_like(y))

    carry_t, ys = jax.lax.scan(masked_body, carry0, (projected, mask), reverse=reverse,
                               unroll=unroll)
    return ys, carry_t


def dropout(key, x, rate):
    """Inverted dropout, as torch.nn.functional.dropout in training mode."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def token_inputs(ids, table, size: int, dtype):
    """The inputs token ids stand for: table[ids], or one-hot rows of `size` (table None).

    ids <int>[...] -> <float>[..., size] (table's dtype, or `dtype` for one-hot rows).
    """
    if table is None:
        return jax.nn.one_hot(ids, size, dtype=dtype)
    return jnp.take(table, ids, axis=0)


# jax.core.Tracer is public but jax.core is being slimmed down; keep working if it moves.
_TRACER = getattr(jax.core, "Tracer", None)
if _TRACER is None:  # pragma: no cover
    from jax._src.core import Tracer as _TRACER


def _is_concrete(x) -> bool:
    return not isinstance(x, _TRACER)


@dataclasses.dataclass(frozen=True)
class Recurrent:
    """A multi-layer, optionally bidirectional recurrent network with PyTorch's semantics.

    Arguments mirror `torch.nn.LSTM`: `mode` is "rnn_tanh", "rnn_relu", "lstm", "gru" or a
    custom `jaxrnn.Cell`. `impl` picks "reference" (the masked/unmasked scan), "fast" (a
    registered fast layer, see `register_fast_layer`) or "auto" (fast when available).

    Example (the tutorial's Part 4, packed sequences):
      >>> rnn = Recurrent("rnn_tanh", input_size=1, hidden_size=1)
      >>> params = rnn.init(jax.random.key(0))
      >>> padded, lengths = pad_sequences([jnp.ones((4, 1)), jnp.ones((2, 1)), jnp.ones((1, 1))])
      >>> output, h_n = rnn.apply(params, padded, lengths=lengths)  # (4, 3, 1), (1, 3, 1)
    """

    mode: Any = "lstm"
    input_size: int = 1
    hidden_size: int = 1
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    impl: str = "auto"
    unroll: int = 1

    def __post_init__(self):
        cells_lib.get_cell(self.mode)
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.impl not in ("auto", "reference", "fast"):
            raise ValueError(f"impl must be 'auto', 'reference' or 'fast', got {self.impl!r}")

    @property
    def cell(self) -> cells_lib.Cell:
        return cells_lib.get_cell(self.mode)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    # ---------------------------------------------------------------- parameters

    def init(self, key, dtype=jnp.float32):
        """Returns params: list over layers of lists over directions of dicts (PyTorch layout)."""
        params = []
        for layer in range(self.num_layers):
            directions = []
            for _ in range(self.num_directions):
                key, sub = jax.random.split(key)
                directions.append(self.cell.init(sub, self.layer_input_size(layer),
                                                 self.hidden_size, self.bias, dtype))
            params.append(directions)
        return params

    def check_params(self, params) -> None:
        """Raises ValueError naming the first place where `params` has the wrong structure."""
        expected = (jax.eval_shape(self.init, jax.random.key(0))  # shapes only, no arrays
                    if not isinstance(self.mode, str) else None)
        if not isinstance(params, (list, tuple)) or len(params) != self.num_layers:
            got = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
            raise ValueError(f"params must be a list of {self.num_layers} layers, got {got}")
        for layer, directions in enumerate(params):
            if not isinstance(directions, (list, tuple)) or len(directions) != self.num_directions:
                raise ValueError(f"params[{layer}] must be a list of {self.num_directions} "
                                 f"direction dicts")
            for d, p in enumerate(directions):
                if expected is not None:
                    want = jax.tree.map(lambda a: a.shape, expected[layer][d])
                else:
                    want = self._builtin_shapes(layer)
                if not isinstance(p, dict) or set(p) != set(want):
                    got = sorted(p) if isinstance(p, dict) else type(p).__name__
                    raise ValueError(f"params[{layer}][{d}] must have keys {sorted(want)}, "
                                     f"got {got}")
                for name, shape in want.items():
                    if tuple(p[name].shape) != tuple(shape):
                        raise ValueError(f"params[{layer}][{d}][{name!r}] must have shape "
                                         f"{tuple(shape)}, got {tuple(p[name].shape)}")

    def _builtin_shapes(self, layer):
        gh = cells_lib.NUM_GATES[self.mode] * self.hidden_size
        shapes = {"weight_ih": (gh, self.layer_input_size(layer)),
                  "weight_hh": (gh, self.hidden_size)}
        if self.bias:
            shapes.update(bias_ih=(gh,), bias_hh=(gh,))
        return shapes

    # ---------------------------------------------------------------- states

    def zero_state(self, batch_size: int, dtype=jnp.float32):
        """The all-zero initial state in PyTorch's layout: [L*D, B, H] (a tuple for LSTM)."""
        one = self.cell.zero_carry(self.hidden_size, dtype)
        return jax.tree.map(
            lambda a: jnp.zeros((self.num_layers * self.num_directions, batch_size) + a.shape,
                                a.dtype), one)

    def _check_hx(self, hx, batch_size):
        want = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        leaves = [hx] if self.cell.carry_size == 1 else hx
        if self.cell.carry_size > 1 and (not isinstance(hx, (tuple, list))
                                         or len(hx) != self.cell.carry_size):
            raise ValueError(f"hx must be a tuple of {self.cell.carry_size} arrays of shape "
                             f"{want} for mode {self.cell.name!r}")
        for leaf in leaves:
            if tuple(jnp.shape(leaf)) != want:
                raise ValueError(f"hx must have shape {want} (num_layers * num_directions, "
                                 f"batch, hidden_size), got {tuple(jnp.shape(leaf))}")

    # ---------------------------------------------------------------- running

    def apply(self, params, x, hx=None, lengths=None, key=None):
        """Runs the network.

        Args:
          params: from `init` (or converted from PyTorch).
          x: <float>[T, B, I] ([B, T, I] if batch_first).
          hx: optional initial state, <float>[L*D, B, H] (LSTM: a tuple (h_0, c_0)).
          lengths: optional <int>[B], values in 1..T, any order: the valid length of each
            sequence, with `pack_padded_sequence`'s meaning.
          key: PRNG key; with `dropout > 0` it turns on dropout between layers (training).

        Returns:
          (output, h_n): output <float>[T, B, D*H] ([B, T, D*H] if batch_first), zero at
          padded positions; h_n <float>[L*D, B, H] (LSTM: the tuple (h_n, c_n)).
        """
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x must have rank 3 ({'B, T' if self.batch_first else 'T, B'}, "
                             f"input_size), got shape {x.shape}")
        if self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        steps, batch_size, features = x.shape
        if features != self.input_size:
            raise ValueError(f"x's last dimension must be input_size={self.input_size}, "
                             f"got shape {x.shape}")
        self.check_params(params)
        if hx is None:
            hx = self.zero_state(batch_size, x.dtype)
        else:
            self._check_hx(hx, batch_size)

        mask = None
        if lengths is not None:
            lengths = jnp.asarray(lengths)
            if lengths.shape != (batch_size,):
                raise ValueError(f"lengths must have shape ({batch_size},), got {lengths.shape}")
            if _is_concrete(lengths):
                bad = np.asarray(lengths)
                if bad.min() < 1 or bad.max() > steps:
                    raise ValueError(f"lengths must be in 1..{steps} (T), got min {bad.min()} "
                                     f"and max {bad.max()}")
            mask = sequence_mask(lengths, steps).T  # [T, B]

        return self._run_layers(params, x, hx, mask, key)

    def _fast_layer(self, mask, registry=None):
        """The registered fast layer to use, or None for the reference scan."""
        registry = _FAST_LAYERS if registry is None else registry
        fast = registry.get(self.cell.name) if isinstance(self.mode, str) else None
        if self.impl == "reference" or mask is not None:
            return None
        if self.impl == "fast" and _FAST_LAYERS.get(self.cell.name) is None:
            raise ValueError(f"no fast layer is registered for mode {self.cell.name!r}")
        return fast

    def apply_tokens(self, params, ids, table=None, hx=None, key=None, dtype=jnp.float32):
        """Runs the network on token ids: layer 0 reads table[ids], or one-hot rows.

        Equal to `apply(params, table[ids] or one_hot(ids), hx, key=key)` (time-major, no
        lengths), but a registered token layer may skip building layer 0's [T, B, I] input
        and its [T*B, I] x [I, G*H] projection GEMM: `jaxrnn.fast` gathers rows of the
        projected table (table @ W_ih^T + bias, [V, G*H]) where that measured faster.

        Args:
          ids: <int>[T, B] ([B, T] if batch_first) token ids in [0, V).
          table: <float>[V, input_size] (an embedding), or None for one-hot input, where
            V = input_size.
          dtype: the one-hot rows' dtype (table None).
        Returns:
          (output, h_n), as `apply`.
        """
        ids = jnp.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must have rank 2, got shape {ids.shape}")
        if self.batch_first:
            ids = ids.T
        if table is not None and (table.ndim != 2 or table.shape[1] != self.input_size):
            raise ValueError(f"table must have shape (V, input_size={self.input_size}), got "
                             f"{jnp.shape(table)}")
        self.check_params(params)
        tokens_fast = self._fast_layer(None, _FAST_TOKEN_LAYERS)
        if tokens_fast is None:
            x = token_inputs(ids, table, self.input_size, dtype)
            if self.batch_first:
                x = jnp.swapaxes(x, 0, 1)
            return self.apply(params, x, hx, key=key)
        batch_size = ids.shape[1]
        dtype = dtype if table is None else table.dtype
        if hx is None:
            hx = self.zero_state(batch_size, dtype)
        else:
            self._check_hx(hx, batch_size)

        def first_layer(layer_params, carry0, reverse):
            return tokens_fast(layer_params, ids, table, carry0, reverse)

        return self._run_layers(params, None, hx, None, key, first_layer)

    def _run_layers(self, params, x, hx, mask, key, first_layer=None):
        """The layers over time-major x [T, B, I]; `first_layer(params, carry0, reverse)`,
        if given, runs layer 0 in place of reading x."""
        fast = self._fast_layer(mask)
        layer_input = x
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for d in range(self.num_directions):
                index = layer * self.num_directions + d
                carry0 = jax.tree.map(lambda a: a[index], hx)
                if layer == 0 and first_layer is not None:
                    ys, carry_t = first_layer(params[layer][d], carry0, d == 1)
                elif fast is not None:
                    ys, carry_t = fast(params[layer][d], layer_input, carry0, d == 1)
                else:
                    ys, carry_t = run_direction(self.cell, params[layer][d], layer_input, carry0,
                                                reverse=d == 1, mask=mask, unroll=self.unroll)
                outputs.append(ys)
                finals.append(carry_t)
            layer_input = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, -1)
            if key is not None and self.dropout > 0 and layer < self.num_layers - 1:
                key, sub = jax.random.split(key)
                layer_input = dropout(sub, layer_input, self.dropout)

        h_n = jax.tree.map(lambda *leaves: jnp.stack(leaves), *finals)
        output = jnp.swapaxes(layer_input, 0, 1) if self.batch_first else layer_input
        return output, h_n

    def step(self, params, state, x):
        """One time step of a unidirectional network, for sampling.

        Args:
          state: <float>[L, B, H] (LSTM: a tuple), as `zero_state` returns.
          x: <float>[B, I].
        Returns:
          (state, y <float>[B, H]) where y is the last layer's output.
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional network")
        step = jax.vmap(self.cell.step, in_axes=(None, 0, 0))
        new_layers = []
        for layer in range(self.num_layers):
            carry = jax.tree.map(lambda a: a[layer], state)
            carry, x = step(params[layer][0], carry, x)
            new_layers.append(carry)
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *new_layers), x
