"""Recurrent cells as pairs of pure functions.

A cell is the extension point of jaxrnn. It is written for *one example* and the engine
(`jaxrnn.engine`) batches it with `vmap`, runs it over time with `lax.scan`, and stacks it
into layers and directions, with lengths and dropout.

Every cell has
  init(key, input_size, hidden_size, bias=True) -> params    (a dict of arrays)
  step(params, carry, x) -> (carry, y)                        x: [input_size], y: [hidden_size]
  zero_carry(hidden_size, dtype) -> carry                     for one example

and may also split `step` into a time-parallel part and a serial part, which lets the engine
hoist the input matmul out of the time loop (one big GEMM per layer instead of T small ones):
  project(params, xs) -> projected          xs: [..., input_size], any leading dims
  recur(params, carry, projected_t) -> (carry, y)
with `recur(params, carry, project(params, x)) == step(params, carry, x)`.

A cell in PyTorch's layout (`num_gates` G set: `weight_ih` [G*H, I], `weight_hh` [G*H, H],
optional `bias_ih`, `bias_hh` [G*H]) can also carry the faster ways to run it, which
`jaxrnn.Recurrent(impl=...)` picks from (see `jaxrnn.engine`):
  slab_bias(params) -> [G*H] | None        the bias folded into the layer's input slab
                                           slab = xs @ W_ih^T + slab_bias (what `projected0`
                                           of `Recurrent.apply` is, and what `fast` reads)
  unslab(slab_t) -> projected_t            the slab in the form `recur` reads
  fast(params, slab, carry0, reverse, unroll) -> (ys, carry_T)
                                           one unmasked direction with a hand-written VJP
  kernel: jaxrnn.kernels.Kernel            a fused implementation of the same, for some
                                           backends and dtypes
A new cell family plugs in the same way: the engine reads nothing but these fields.

The built-in cells use PyTorch's parameter layout and gate order, so converting weights is a
rename; their names and gate counts are `jaxrnn.names` (G = 1 Elman RNN, 4 LSTM with gates
i, f, g, o, 3 GRU with gates r, z, n).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrnn import fast
from jaxrnn.kernels import Kernel
from jaxrnn.names import NUM_GATES

Params = dict[str, jax.Array]
Carry = Any


@dataclasses.dataclass(frozen=True)
class Cell:
    """A recurrent cell: pure functions over a parameter dict (see the module docstring).

    Attributes:
      name: the cell's name, e.g. "lstm".
      init: (key, input_size, hidden_size, bias) -> params.
      step: (params, carry, x[input_size]) -> (carry, y[hidden_size]); one example.
      zero_carry: (hidden_size, dtype) -> the all-zero carry of one example.
      project: optional (params, xs[..., input_size]) -> per-step projected inputs.
      recur: optional (params, carry, projected_t) -> (carry, y); the serial part of `step`.
      carry_size: how many arrays the carry holds (1 for a bare array, 2 for LSTM's (h, c)).
      num_gates: G for a cell in PyTorch's layout (weight_ih [G*H, I], weight_hh [G*H, H]);
        None for any other layout.
      slab_bias: optional params -> the bias folded into the input slab ([G*H] or None).
      unslab: optional slab_t [..., G*H] -> what `recur` reads.
      fast: optional (params, slab [T, B, G*H], carry0, reverse, unroll) -> (ys, carry_T).
      kernel: optional fused `jaxrnn.kernels.Kernel` of the same.
      parallel: optional (params, slab [T, B, G*H], carry0, reverse, mask) -> (ys, carry_T),
        a parallel-in-time form (an associative scan) with the reference's mask semantics
        (mask <bool>[T, B] or None); what impl="parallel" (and "auto") runs.
      param_shapes: optional (input_size, hidden_size, bias) -> {name: shape}, for a cell with
        `num_gates` whose parameters are not PyTorch's four (e.g. minGRU: no weight_hh).
    """

    name: str
    init: Callable[..., Params]
    step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
    zero_carry: Callable[[int, Any], Carry]
    project: Callable[[Params, jax.Array], Any] | None = None
    recur: Callable[[Params, Carry, Any], tuple[Carry, jax.Array]] | None = None
    carry_size: int = 1
    num_gates: int | None = None
    slab_bias: Callable[[Params], jax.Array | None] | None = None
    unslab: Callable[[jax.Array], Any] | None = None
    fast: Callable | None = None
    kernel: Kernel | None = None
    parallel: Callable | None = None
    param_shapes: Callable[[int, int, bool], dict] | None = None

    @property
    def takes_slab(self) -> bool:
        """Whether layer 0 can be fed a precomputed slab (`Recurrent.apply(projected0=...)`)."""
        return (self.num_gates is not None and self.slab_bias is not None
                and self.unslab is not None and self.recur is not None)


def uniform_init(key, shape, bound, dtype=jnp.float32):
    """U(-bound, bound), PyTorch's default for recurrent layers with bound = 1/sqrt(H)."""
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def gated_init(num_gates: int):
    """Returns init(key, input_size, hidden_size, bias=True, dtype) in PyTorch's layout."""

    def init(key, input_size: int, hidden_size: int, bias: bool = True, dtype=jnp.float32):
        bound = 1.0 / hidden_size**0.5
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        gh = num_gates * hidden_size
        params = {
            "weight_ih": uniform_init(k_ih, (gh, input_size), bound, dtype),
            "weight_hh": uniform_init(k_hh, (gh, hidden_size), bound, dtype),
        }
        if bias:
            params["bias_ih"] = uniform_init(k_bi, (gh,), bound, dtype)
            params["bias_hh"] = uniform_init(k_bh, (gh,), bound, dtype)
        return params

    return init


def matmul_transposed(x, weight):
    """x @ weight.T over any leading dims of x: <float>[..., I] x [O, I] -> [..., O].

    Written as one dot_general contracting weight's second axis: `x @ weight.T` stages an
    explicit transpose that XLA:CPU redoes on every iteration of a loop holding it (a
    sampling step at B=1 ran 5-7x slower that way).
    """
    return jax.lax.dot_general(x, weight, (((x.ndim - 1,), (1,)), ((), ())))


def _linear(x, weight, bias):
    """x @ weight.T + bias over any leading dims of x; bias may be None."""
    y = matmul_transposed(x, weight)
    # Explicit broadcast: the tests run with jax_numpy_rank_promotion="raise".
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def _split_gates(slab, num_gates):
    """[..., G*H] -> tuple of G arrays [..., H]."""
    return tuple(jnp.split(slab, num_gates, axis=-1))


def _zero_h(hidden_size, dtype=jnp.float32):
    return jnp.zeros((hidden_size,), dtype)


def _zero_hc(hidden_size, dtype=jnp.float32):
    return (jnp.zeros((hidden_size,), dtype), jnp.zeros((hidden_size,), dtype))


# The built-in cells' `project` is the slab: W_ih x + slab_bias, every bias that can be added
# outside the loop folded in (b_ih + b_hh; the GRU keeps b_hn inside r * (...)), so the
# reference scan, the fast recurrences and the kernels read the same slab.


def _identity(slab):
    return slab


def _gate_splitter(num_gates):
    def unslab(slab):
        # Split per gate here, once, outside the time loop: slicing a hoisted [T, B, G*H]
        # slab inside the scan body costs about 2x the whole step on CPU (docs/CPU_PROFILE_NOTES.md).
        return _split_gates(slab, num_gates)

    return unslab


def _slab_projector(slab_bias, unslab):
    def project(params, xs):
        return unslab(_linear(xs, params["weight_ih"], slab_bias(params)))

    return project


# --- Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh) ------------------------------------


def _rnn_cell(activation, name, fast_recurrence, kernel):
    project = _slab_projector(fast.summed_bias, _identity)

    def recur(params, h, xp):
        h = activation(xp + matmul_transposed(h, params["weight_hh"]))
        return h, h

    def step(params, h, x):
        return recur(params, h, project(params, x))

    return Cell(name, gated_init(NUM_GATES[name]), step, _zero_h, project, recur, 1,
                NUM_GATES[name], fast.summed_bias, _identity, fast_recurrence, kernel)


# --- LSTM (PyTorch equations, gate order i, f, g, o) ----------------------------------------
#   i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
#   g = tanh(W_ig x + b_ig + W_hg h + b_hg) o = σ(W_io x + b_io + W_ho h + b_ho)
#   c' = f * c + i * g                      h' = o * tanh(c')


_lstm_project = _slab_projector(fast.summed_bias, _gate_splitter(4))


def _lstm_recur(params, carry, xp):
    h, c = carry
    xi, xf, xg, xo = xp  # W_i* x + b_i* + b_h*
    hi, hf, hg, ho = _split_gates(matmul_transposed(h, params["weight_hh"]), 4)
    i = jax.nn.sigmoid(xi + hi)
    f = jax.nn.sigmoid(xf + hf)
    g = jnp.tanh(xg + hg)
    o = jax.nn.sigmoid(xo + ho)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), h


def _lstm_step(params, carry, x):
    return _lstm_recur(params, carry, _lstm_project(params, x))


# --- GRU (PyTorch equations, gate order r, z, n; b_hn stays inside r * (...)) ---------------
#   r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
#   h' = (1 - z) * n + z * h


_gru_project = _slab_projector(fast.gru_slab_bias, _gate_splitter(3))


def _gru_recur(params, h, xp):
    xr, xz, xn = xp  # W_ir x + b_ir + b_hr, W_iz x + b_iz + b_hz, W_in x + b_in
    hr, hz, hn = _split_gates(matmul_transposed(h, params["weight_hh"]), 3)
    if "bias_hh" in params:
        hn = hn + params["bias_hh"][2 * h.shape[-1]:]
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


def _gru_step(params, h, x):
    return _gru_recur(params, h, _gru_project(params, x))


RNN_TANH = _rnn_cell(jnp.tanh, "rnn_tanh", fast.rnn_tanh_fast, fast.RNN_TANH_CPU_KERNEL)
RNN_RELU = _rnn_cell(jax.nn.relu, "rnn_relu", fast.rnn_relu_fast, fast.RNN_RELU_CPU_KERNEL)
LSTM = Cell("lstm", gated_init(4), _lstm_step, _zero_hc, _lstm_project, _lstm_recur, 2,
            4, fast.summed_bias, _gate_splitter(4), fast.lstm_fast, fast.LSTM_CPU_KERNEL)
GRU = Cell("gru", gated_init(3), _gru_step, _zero_h, _gru_project, _gru_recur, 1,
           3, fast.gru_slab_bias, _gate_splitter(3), fast.gru_fast, fast.GRU_CPU_KERNEL)

# minGRU and minLSTM (jaxrnn.mincells, which imports nothing from here when it loads): no
# weight_hh, and a parallel-in-time form (an associative scan) that impl="auto" runs.
from jaxrnn import mincells as _mincells  # noqa: E402

MINGRU = _mincells.build_cell("mingru")
MINLSTM = _mincells.build_cell("minlstm")

CELLS: dict[str, Cell] = {c.name: c for c in (RNN_TANH, RNN_RELU, LSTM, GRU, MINGRU, MINLSTM)}

# The layer-normalised LSTM and GRU (jaxrnn.normcells, which imports nothing from here when
# it loads): no fast recurrence and no kernel, so impl="auto" runs the reference scan.
from jaxrnn import normcells as _normcells  # noqa: E402

LSTM_LN = _normcells.build_cell("lstm_ln")
GRU_LN = _normcells.build_cell("gru_ln")
CELLS.update({c.name: c for c in (LSTM_LN, GRU_LN)})
assert tuple(CELLS) == tuple(NUM_GATES), "jaxrnn.names lists the built-in cells"


def get_cell(mode: str | Cell) -> Cell:
    """Looks up a built-in cell by name (`jaxrnn.names`), or passes a `Cell` through."""
    if isinstance(mode, Cell):
        return mode
    if mode not in CELLS:
        raise ValueError(f"mode must be one of {sorted(CELLS)} or a jaxrnn.Cell, got {mode!r}")
    return CELLS[mode]
