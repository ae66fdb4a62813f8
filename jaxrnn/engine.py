"""The recurrent engine: the JAX counterpart of torch.nn.RNN / LSTM / GRU.

`Recurrent` stacks a cell (`jaxrnn.cells`) into layers and directions and runs it over time.
With `lengths` it gives exactly what PyTorch gives for
`pack_padded_sequence(x, lengths, enforce_sorted=False)` -> module -> `pad_packed_sequence`:
outputs are zero at padded positions, each sequence's final state is the state at its own last
element, and the reverse direction starts at each sequence's own last element.

How each direction of each layer is computed is a value, resolved once from the `Recurrent`'s
own fields when it is built (`Recurrent.plan`, a `LayerPlan`), never from module state:
  "reference"  `run_direction`: `lax.scan` over the cell's `recur` (`unroll` honoured), the
               input projection of every step one GEMM before the loop; with lengths a [T, B]
               mask freezes the carry after a sequence ends and zeroes the output. The
               reference every other way is checked against, and the only masked one.
  "fast"       the cell's `fast` recurrence: a `custom_vjp` scan (`unroll` honoured).
  "kernel"     the cell's fused `kernel` (the CPU kernels of `jaxrnn.kernels`: LSTM, GRU,
               Elman RNN); with lengths too, if the kernel takes them (`Kernel.takes_lengths`,
               the built-ins do): the reference's mask semantics inside the kernel.
  "parallel"   the cell's own parallel-in-time form (`Cell.parallel`: minGRU, minLSTM, an
               associative scan); takes lengths.
  "deer", "quasi-deer", "elk", "quasi-elk"
               any cell's recurrence solved by Newton's method over the whole sequence
               (`jaxrnn.newton`, options in `Recurrent.solver`); take lengths.
`impl="auto"` takes the cell's parallel form if it has one, else the kernel where it can run
(its backend, dtype, library built, unroll 1), else the fast recurrence, else the reference;
with `lengths` it runs the kernel if it takes lengths, else the reference (or the parallel
form). An `impl` asked for by name that cannot run is an error that says why.

Layer 0 reads either `x` or its precomputed input slab `projected0` (one [T, B, G*H] array per
direction, `x @ W_ih^T + cell.slab_bias(params)`), for callers that build it more cheaply than
a GEMM, for example by gathering rows of a projected embedding table (`jaxrnn.model`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells as cells_lib
from jaxrnn import fast as fast_lib
from jaxrnn import mesh as mesh_lib
from jaxrnn import regularizers
from jaxrnn.packing import sequence_mask

# The ways to evaluate a layer. "parallel": the cell's own parallel-in-time form (minGRU,
# minLSTM); the Newton solvers (`jaxrnn.newton`) evaluate any cell's recurrence in parallel.
NEWTON_METHODS = ("deer", "quasi-deer", "elk", "quasi-elk")
IMPLS = ("auto", "reference", "fast", "kernel", "parallel") + NEWTON_METHODS
MASKED_IMPLS = ("reference", "parallel") + NEWTON_METHODS  # the impls that take lengths


def run_direction(cell: cells_lib.Cell, params, xs, carry0, *, reverse=False, mask=None,
                  unroll: int = 1, slab=None):
    """Runs one direction of one layer over time: the reference scan.

    Args:
      cell: the cell.
      params: the cell's parameter dict.
      xs: <float>[T, B, I] inputs, time-major (None when `slab` is given).
      carry0: the initial carry, a pytree of <float>[B, H] arrays.
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      mask: optional <bool>[T, B]; False marks padding. A masked step keeps the carry and
        emits zeros, so the reverse direction starts at each sequence's own last element.
      unroll: passed to `lax.scan`.
      slab: optional <float>[T, B, G*H], the precomputed input slab (`Cell.takes_slab`).

    Returns:
      (ys <float>[T, B, H], carry_T) where carry_T is each sequence's final carry.
    """
    if slab is not None:
        projected = cell.unslab(slab)
        recur = jax.vmap(cell.recur, in_axes=(None, 0, 0))
    elif cell.project is not None:
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


# jax.core.Tracer is public but jax.core is being slimmed down; keep working if it moves.
_TRACER = getattr(jax.core, "Tracer", None)
if _TRACER is None:  # pragma: no cover
    from jax._src.core import Tracer as _TRACER


def _is_concrete(x) -> bool:
    return not isinstance(x, _TRACER)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How a `Recurrent`'s layers are computed, resolved when it is built.

    Attributes:
      unmasked: "reference", "fast" or "kernel": what runs without lengths.
      requested: the `impl` asked for ("auto" or one of the above).
      unroll: the `lax.scan` unroll of the reference and fast scans.
      kernel_parts: how the kernel splits the hidden units (0: one part per thread).
      fallback: what runs in place of the kernel for a dtype it does not compute in
        (impl="auto" only; "fast" or "reference").
    Layers with lengths run the kernel if `unmasked` is "kernel" and the kernel takes lengths
    (the reference in its place for a dtype it does not compute in), else "reference".
    """

    unmasked: str
    requested: str
    unroll: int = 1
    kernel_parts: int = 0
    fallback: str = "reference"

    def for_call(self, cell: cells_lib.Cell, dtype, masked: bool) -> str:
        """The implementation of one call: `unmasked`, or with lengths the masked kernel (if
        it takes lengths), the impl itself (if it takes lengths) or the masked reference; for
        a dtype the kernel does not compute in, the fallback (an error if asked for by name)."""
        if masked:
            if self.unmasked in MASKED_IMPLS:
                return self.unmasked
            if self.unmasked == "kernel" and cell.kernel.takes_lengths:
                return self._kernel_or(cell, dtype, "reference")
            if self.requested in ("fast", "kernel"):
                raise ValueError(f"impl={self.requested!r} runs layers without lengths only; "
                                 f"use impl='auto' or 'reference' with lengths")
            return "reference"
        if self.unmasked == "kernel":
            return self._kernel_or(cell, dtype, self.fallback)
        return self.unmasked

    def _kernel_or(self, cell: cells_lib.Cell, dtype, fallback: str) -> str:
        """"kernel" if the cell's kernel computes in `dtype`, else `fallback` (impl="auto") or
        an error (impl="kernel")."""
        reason = cell.kernel.unavailable_reason(dtype)
        if reason is None:
            return "kernel"
        if self.requested == "kernel":
            raise ValueError(f"impl='kernel' cannot run: {reason}")
        return fallback


def resolve_plan(cell: cells_lib.Cell, impl: str, unroll: int, kernel_parts: int) -> LayerPlan:
    """The `LayerPlan` of a cell for an `impl`; raises ValueError naming what cannot run."""
    fallback = "fast" if cell.fast is not None else "reference"
    if impl == "reference":
        return LayerPlan("reference", impl, unroll, kernel_parts)
    if impl == "parallel" or (impl == "auto" and cell.parallel is not None):
        if cell.parallel is None:
            raise ValueError(f"impl='parallel': cell {cell.name!r} has no parallel-in-time "
                             f"form (the Newton solvers {', '.join(NEWTON_METHODS)} evaluate "
                             f"any cell in parallel)")
        return LayerPlan("parallel", impl, unroll, kernel_parts)
    if impl in NEWTON_METHODS:
        if not cell.takes_slab:
            raise ValueError(f"impl={impl!r}: cell {cell.name!r} needs num_gates, slab_bias, "
                             f"unslab and recur for the Newton solvers")
        return LayerPlan(impl, impl, unroll, kernel_parts)
    if impl == "fast":
        if cell.fast is None:
            raise ValueError(f"impl='fast': cell {cell.name!r} has no fast recurrence")
        return LayerPlan("fast", impl, unroll, kernel_parts)
    if impl == "kernel":
        if cell.kernel is None:
            raise ValueError(f"impl='kernel': cell {cell.name!r} has no fused kernel")
        if unroll != 1:
            raise ValueError(f"impl='kernel' has no scan to unroll; unroll={unroll} needs "
                             f"impl='fast' or 'reference'")
        reason = cell.kernel.unavailable_reason()
        if reason is not None:
            raise ValueError(f"impl='kernel' cannot run: {reason}")
        return LayerPlan("kernel", impl, unroll, kernel_parts, fallback)
    # auto: an unroll other than 1 asks for a scan, which the kernel does not have
    if cell.kernel is not None and unroll == 1 and cell.kernel.unavailable_reason() is None:
        return LayerPlan("kernel", impl, unroll, kernel_parts, fallback)
    return LayerPlan(fallback, impl, unroll, kernel_parts)


@dataclasses.dataclass(frozen=True)
class Recurrent:
    """A multi-layer, optionally bidirectional recurrent network with PyTorch's semantics.

    Arguments mirror `torch.nn.LSTM`: `mode` is "rnn_tanh", "rnn_relu", "lstm", "gru" or a
    custom `jaxrnn.Cell`. `impl` is "auto", "reference", "fast" or "kernel" (see the module
    docstring); `unroll` is the scan unroll of the reference and fast scans; `kernel_parts`
    splits the kernel's hidden units (0: one part per thread). `plan` is what they resolve to.
    `zoneout` (> 0: each carry unit keeps its previous value with that probability in
    training, the expectation without a key; the reference scan only) and `locked_dropout`
    (`dropout`'s masks shared over time) are `jaxrnn.regularizers`; off, nothing changes.

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
    kernel_parts: int = 0
    solver: Any = None  # jaxrnn.newton.SolverOptions for the Newton impls (None: defaults)
    zoneout: float = 0.0  # > 0: zoneout of the carry (jaxrnn.regularizers), reference scan
    locked_dropout: bool = False  # dropout between layers with one mask per sequence
    plan: LayerPlan = dataclasses.field(init=False, compare=False)

    def __post_init__(self):
        cell = cells_lib.get_cell(self.mode)
        for name in ("input_size", "hidden_size", "num_layers", "unroll"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.kernel_parts, (int, np.integer)) or self.kernel_parts < 0:
            raise ValueError(f"kernel_parts must be 0 or a positive integer, got "
                             f"{self.kernel_parts!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.zoneout < 1.0:
            raise ValueError(f"zoneout must be in [0, 1), got {self.zoneout!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got "
                             f"{self.impl!r}")
        regularizers.check_zoneout_impl(self.zoneout, self.impl)
        if self.solver is not None:
            from jaxrnn.newton import SolverOptions

            if not isinstance(self.solver, SolverOptions):
                raise ValueError(f"solver must be a jaxrnn.newton.SolverOptions or None, got "
                                 f"{type(self.solver).__name__}")
        # zoneout: per-step masks inside the recurrence, so the reference scan (no kernel probed)
        impl = "reference" if self.zoneout > 0 else self.impl
        object.__setattr__(self, "plan", resolve_plan(cell, impl, int(self.unroll),
                                                      int(self.kernel_parts)))
        if self.zoneout > 0:
            object.__setattr__(self, "plan", dataclasses.replace(self.plan, requested=self.impl))

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
                    if self.cell.num_gates is None else None)
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
                elif self.cell.param_shapes is not None:
                    want = self.cell.param_shapes(self.layer_input_size(layer),
                                                  self.hidden_size, self.bias)
                else:
                    want = self._gated_shapes(layer)
                if not isinstance(p, dict) or set(p) != set(want):
                    got = sorted(p) if isinstance(p, dict) else type(p).__name__
                    raise ValueError(f"params[{layer}][{d}] must have keys {sorted(want)}, "
                                     f"got {got}")
                for name, shape in want.items():
                    if tuple(p[name].shape) != tuple(shape):
                        raise ValueError(f"params[{layer}][{d}][{name!r}] must have shape "
                                         f"{tuple(shape)}, got {tuple(p[name].shape)}")

    def _gated_shapes(self, layer):
        """PyTorch's layout for a cell with `num_gates`, without building any array."""
        gh = self.cell.num_gates * self.hidden_size
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

    def apply(self, params, x=None, hx=None, lengths=None, key=None, *, projected0=None):
        """Runs the network.

        Args:
          params: from `init` (or converted from PyTorch).
          x: <float>[T, B, I] ([B, T, I] if batch_first); None when `projected0` is given.
          hx: optional initial state, <float>[L*D, B, H] (LSTM: a tuple (h_0, c_0)).
          lengths: optional <int>[B], values in 1..T, any order: the valid length of each
            sequence, with `pack_padded_sequence`'s meaning.
          key: PRNG key; with `dropout > 0` it turns on dropout between layers (training).
          projected0: instead of x, layer 0's input slab: a sequence of D arrays
            <float>[T, B, G*H] (time-major whatever batch_first says), one per direction,
            each `x @ W_ih^T + cell.slab_bias(params[0][d])`. For cells with
            `Cell.takes_slab` (every built-in cell).

        Returns:
          (output, h_n): output <float>[T, B, D*H] ([B, T, D*H] if batch_first), zero at
          padded positions; h_n <float>[L*D, B, H] (LSTM: the tuple (h_n, c_n)).
        """
        self.check_params(params)
        if (x is None) == (projected0 is None):
            raise ValueError("give exactly one of x and projected0")
        if x is not None:
            x = jnp.asarray(x)
            if x.ndim != 3:
                raise ValueError(f"x must have rank 3 ({'B, T' if self.batch_first else 'T, B'}"
                                 f", input_size), got shape {x.shape}")
            if self.batch_first:
                x = jnp.swapaxes(x, 0, 1)
            steps, batch_size, features = x.shape
            if features != self.input_size:
                raise ValueError(f"x's last dimension must be input_size={self.input_size}, "
                                 f"got shape {x.shape}")
            dtype = x.dtype
        else:
            projected0 = self._check_projected0(projected0)
            steps, batch_size, _ = projected0[0].shape
            dtype = projected0[0].dtype
        if hx is None:
            hx = self.zero_state(batch_size, dtype)
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

        impl = self.plan.for_call(self.cell, dtype, mask is not None)
        return self._run_layers(params, x, projected0, hx, mask, key, impl)

    def _check_projected0(self, projected0):
        if not self.cell.takes_slab:
            raise ValueError(f"cell {self.cell.name!r} takes no projected0 (it needs num_gates, "
                             f"slab_bias, unslab and recur)")
        if not isinstance(projected0, (list, tuple)) or len(projected0) != self.num_directions:
            raise ValueError(f"projected0 must be a list of {self.num_directions} arrays, one "
                             f"per direction")
        projected0 = [jnp.asarray(p) for p in projected0]
        width = self.cell.num_gates * self.hidden_size
        first = projected0[0].shape
        for p in projected0:
            if p.ndim != 3 or p.shape[-1] != width or p.shape != first:
                raise ValueError(f"projected0 must hold arrays of shape (T, B, {width}) "
                                 f"(num_gates * hidden_size), got {[q.shape for q in projected0]}")
        return projected0

    def _direction(self, impl, params, xs, slab, carry0, reverse, mask):
        """One direction of one layer, by `impl`; reads `slab` if given, else `xs`."""
        cell, plan = self.cell, self.plan
        if impl == "reference":
            return run_direction(cell, params, xs, carry0, reverse=reverse, mask=mask,
                                 unroll=plan.unroll, slab=slab)
        if impl in ("kernel", "fast"):
            return self._slab_direction(impl, params, xs, slab, carry0, reverse, mask)
        if slab is None:
            slab = fast_lib.input_slab(params, xs, cell.slab_bias(params))
        if impl == "parallel":
            return cell.parallel(params, slab, carry0, reverse, mask)
        from jaxrnn import newton  # the solvers import the engine's reference scan

        return newton.solve(cell, params, slab, carry0, reverse=reverse, mask=mask,
                            method=impl, options=self.solver)  # impl in NEWTON_METHODS

    def _slab_direction(self, impl, params, xs, slab, carry0, reverse, mask):
        """One direction by the cell's fused kernel or fast recurrence, with its input slab.

        Under a mesh with a `data` axis that divides the batch (`jaxrnn.mesh.split_batch`,
        read from JAX's mesh context at trace time), the input projection and the recurrence
        run on each device's own block of the batch, the weights replicated: XLA cannot split
        the kernel's custom call itself. Without one, this is the plain call.
        """
        cell, plan = self.cell, self.plan
        given_slab = slab is not None

        def layer(params, inputs, carry0, *mask):
            slab = inputs if given_slab else fast_lib.input_slab(params, inputs,
                                                                 cell.slab_bias(params))
            if impl == "fast":
                return cell.fast(params, slab, carry0, reverse, plan.unroll)
            if not mask:
                return cell.kernel.run(params, slab, carry0, reverse, plan.kernel_parts)
            lengths = jnp.sum(mask[0], axis=0, dtype=jnp.int32)  # the mask is each prefix
            return cell.kernel.run(params, slab, carry0, reverse, plan.kernel_parts, lengths)

        inputs = slab if given_slab else xs  # [T, B, ...]
        args = (params, inputs, carry0) + (() if mask is None else (mask,))  # mask [T, B]
        in_axes = (None, 1, 0, 1)[:len(args)]
        return mesh_lib.split_batch(layer, in_axes, (1, 0), inputs.shape[1])(*args)

    def _run_layers(self, params, x, projected0, hx, mask, key, impl):
        """The layers over time-major x [T, B, I] (or layer 0's slabs `projected0`)."""
        layer_input = x
        finals = []
        zone_key = None
        if key is not None and self.zoneout > 0:  # drawn only with zoneout on
            key, zone_key = jax.random.split(key)
        for layer in range(self.num_layers):
            outputs = []
            for d in range(self.num_directions):
                index = layer * self.num_directions + d
                carry0 = jax.tree.map(lambda a: a[index], hx)
                slab = projected0[d] if layer == 0 and projected0 is not None else None
                if self.zoneout > 0:
                    ys, carry_t = regularizers.zoneout_direction(
                        self.cell, params[layer][d], layer_input, carry0, rate=self.zoneout,
                        key=None if zone_key is None else jax.random.fold_in(zone_key, index),
                        reverse=d == 1, mask=mask, unroll=self.plan.unroll, slab=slab)
                else:
                    ys, carry_t = self._direction(impl, params[layer][d], layer_input, slab,
                                                  carry0, d == 1, mask)
                outputs.append(ys)
                finals.append(carry_t)
            layer_input = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, -1)
            if key is not None and self.dropout > 0 and layer < self.num_layers - 1:
                key, sub = jax.random.split(key)
                drop = regularizers.locked_dropout if self.locked_dropout else dropout
                layer_input = drop(sub, layer_input, self.dropout)

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
        cell_step = (self.cell.step if self.zoneout == 0 else
                     regularizers.zoneout_expected_step(self.cell.step, self.zoneout))
        step = jax.vmap(cell_step, in_axes=(None, 0, 0))
        new_layers = []
        for layer in range(self.num_layers):
            carry = jax.tree.map(lambda a: a[layer], state)
            carry, x = step(params[layer][0], carry, x)
            new_layers.append(carry)
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *new_layers), x
