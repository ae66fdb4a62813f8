"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Their gates read x_t only, so each step is a diagonal linear recurrence

  h_t = A_t * h_{t-1} + B_t          A_t, B_t <float>[H] functions of x_t alone

which runs over time as an associative scan (`parallel`) as well as one step at a time
(`recur`, the engine's reference scan, and `step`, for sampling). With a = W_ih x_t + b_ih:

  minGRU  ("mingru", G = 2, rows of W_ih: h~ then z)
    h~ = a[:H], z = σ(a[H:2H])
    h_t = (1 - z) * h_{t-1} + z * g(h~)                       A = 1 - z = σ(-k), B = z * g(h~)
  minLSTM ("minlstm", G = 3, rows: h~, f, i)
    h~ = a[:H], f = σ(a[H:2H]), i = σ(a[2H:3H]), f' = f / (f + i), i' = i / (f + i)
    h_t = f' * h_{t-1} + i' * g(h~)                           A = f', B = i' * g(h~)

with g(v) = v + 0.5 for v >= 0, σ(v) otherwise (the paper's positive g, as minGRU-pytorch's
`g`), and h_0 = 0 unless hx gives it (any real value). The row order is minGRU-pytorch's
`to_hidden_and_gate(x).chunk(2)` (h~ first, then the gate; minLSTM: h~, f, i).
f' and i' are computed as σ(±(log f - log i)) = σ(±(softplus(-a_i) - softplus(-a_f))), which
equals f / (f + i) and i / (f + i) and stays finite where both f and i underflow to zero.

Parameters per layer and direction: {"weight_ih": [G*H, I], "bias_ih": [G*H]} (bias=False:
weight_ih only); there is no weight_hh or bias_hh, so neither cell has a PyTorch module and
`torch_baselines.convert` refuses them. Init: PyTorch's recurrent default U(±1/sqrt(H)) for
every parameter, as the other cells (not the paper's, which uses nn.Linear's default).

The input slab is the whole input side: slab = xs @ W_ih^T + b_ih (`slab_bias` is b_ih).

`parallel(params, slab, carry0, reverse, mask)` is the form impl="auto" (and "parallel")
runs, with or without lengths: `jax.lax.associative_scan` over time with the operator

  (A1, B1) ∘ (A2, B2) = (A2 * A1, A2 * B1 + B2)         (first applied first)

on the elements (A_t, B_t), the initial state folded into the first element of the scan
(B_first += A_first * h_0). It never divides, so products of A over many steps underflowing
to zero are harmless. A masked step (padding) is the identity transition (A = 1, B = 0) and
emits zero: the forward direction's last element is then each sequence's state at its own
last element, and the reverse direction (which meets the padding first) starts at each
sequence's own last element from h_0, exactly as the engine's masked reference scan.

The `Cell` values are `jaxrnn.cells.MINGRU` and `MINLSTM` (registered in `jaxrnn.cells.CELLS`;
also importable from here). This module imports nothing from `jaxrnn.cells` when it loads:
`cells` builds the two cells at its end by calling `build_cell`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.names import MIN_CELLS, NUM_GATES


def positive_g(v):
    """g(v) = v + 0.5 for v >= 0, σ(v) otherwise: positive, continuous, g(0) = 0.5."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def _split(slab, num_gates):
    return tuple(jnp.split(slab, num_gates, axis=-1))


def mingru_coefficients(slab):
    """minGRU's slab [..., 2H] (h~, k) -> (A, B) [..., H]: A = 1 - σ(k), B = σ(k) g(h~)."""
    h_tilde, k = _split(slab, 2)
    return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * positive_g(h_tilde)


def minlstm_coefficients(slab):
    """minLSTM's slab [..., 3H] (h~, a_f, a_i) -> (A, B) [..., H]: A = f', B = i' g(h~), with
    f' = f / (f + i) = σ(log f - log i), i' = σ(log i - log f), log σ(a) = -softplus(-a)."""
    h_tilde, a_f, a_i = _split(slab, 3)
    log_ratio = jax.nn.softplus(-a_i) - jax.nn.softplus(-a_f)  # log f - log i
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * positive_g(h_tilde)


COEFFICIENTS = {"mingru": mingru_coefficients, "minlstm": minlstm_coefficients}


def _combine(first, second):
    """The associative operator: applying (A1, B1) and then (A2, B2)."""
    a1, b1 = first
    a2, b2 = second
    return a2 * a1, a2 * b1 + b2


def linear_scan(a, b, carry0, *, reverse=False, mask=None):
    """h_t = a_t * h_{t-1} + b_t over time by an associative scan.

    Args:
      a, b: <float>[T, B, H].
      carry0: <float>[B, H], the state before the first step (t = 0, or t = T-1 in reverse).
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      mask: optional <bool>[T, B]; False marks padding: an identity step (a = 1, b = 0) that
        emits zero.

    Returns:
      (hs <float>[T, B, H], h_T <float>[B, H]): h_T is the state after the last step of the
      scan, which with a mask is each sequence's state at its own last element (forward),
      or at t = 0 (reverse).
    """
    if mask is not None:
        m = mask[:, :, None]
        a = jnp.where(m, a, jnp.ones_like(a))
        b = jnp.where(m, b, jnp.zeros_like(b))
    first = -1 if reverse else 0
    b = b.at[first].add(a[first] * carry0)  # fold h_0 into the first element
    _, hs = jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=0)
    h_last = hs[0] if reverse else hs[-1]  # the scan's last element
    if mask is not None:
        hs = jnp.where(mask[:, :, None], hs, jnp.zeros_like(hs))
    return hs, h_last


def make_parallel(name):
    """`Cell.parallel` of a min cell: (params, slab [T, B, G*H], carry0 [B, H], reverse,
    mask [T, B] | None) -> (ys [T, B, H], h_T [B, H])."""
    coefficients = COEFFICIENTS[name]

    def parallel(params, slab, carry0, reverse=False, mask=None):
        del params  # the slab holds every parameter's contribution
        a, b = coefficients(slab)
        return linear_scan(a, b, carry0, reverse=reverse, mask=mask)

    return parallel


def make_recur(name):
    """`Cell.recur`: (params, h [H], slab_t [G*H]) -> (h, h); one step of the recurrence."""
    coefficients = COEFFICIENTS[name]

    def recur(params, h, slab_t):
        del params
        a, b = coefficients(slab_t)
        h = a * h + b
        return h, h

    return recur


def slab_bias(params):
    """The slab bias: b_ih (None without bias)."""
    return params.get("bias_ih")


def project(params, xs):
    """xs [..., I] -> the slab [..., G*H] = xs @ W_ih^T + b_ih, any leading dims."""
    weight = params["weight_ih"]
    slab = jax.lax.dot_general(xs, weight, (((xs.ndim - 1,), (1,)), ((), ())))
    bias = slab_bias(params)
    # explicit broadcast: the tests run with jax_numpy_rank_promotion="raise"
    return slab if bias is None else slab + bias.reshape((1,) * (slab.ndim - 1) + bias.shape)


def make_param_shapes(name):
    """`Cell.param_shapes`: (input_size, hidden_size, bias) -> {name: shape}."""
    num_gates = NUM_GATES[name]

    def param_shapes(input_size, hidden_size, bias=True):
        shapes = {"weight_ih": (num_gates * hidden_size, input_size)}
        if bias:
            shapes["bias_ih"] = (num_gates * hidden_size,)
        return shapes

    return param_shapes


def make_init(name):
    """`Cell.init`: (key, input_size, hidden_size, bias=True, dtype) -> params, every entry
    U(±1/sqrt(H)) as PyTorch's recurrent layers (and the other cells here) initialise."""
    param_shapes = make_param_shapes(name)

    def init(key, input_size, hidden_size, bias=True, dtype=jnp.float32):
        bound = 1.0 / hidden_size**0.5
        shapes = param_shapes(input_size, hidden_size, bias)
        keys = jax.random.split(key, 2)
        return {key_name: jax.random.uniform(k, shape, dtype, -bound, bound)
                for k, (key_name, shape) in zip(keys, shapes.items())}

    return init


def zero_carry(hidden_size, dtype=jnp.float32):
    return jnp.zeros((hidden_size,), dtype)


def _identity(slab):
    return slab


def build_cell(name):
    """The `jaxrnn.cells.Cell` of "mingru" or "minlstm"; `jaxrnn.cells` calls this at its end
    (where `Cell` is defined) and registers the result in CELLS."""
    from jaxrnn.cells import Cell  # noqa: PLC0415 (see the module docstring)

    if name not in MIN_CELLS:
        raise ValueError(f"name must be one of {MIN_CELLS}, got {name!r}")
    recur = make_recur(name)

    def step(params, h, x):
        return recur(params, h, project(params, x))

    return Cell(name, make_init(name), step, zero_carry, project=project, recur=recur,
                carry_size=1, num_gates=NUM_GATES[name], slab_bias=slab_bias,
                unslab=_identity, parallel=make_parallel(name),
                param_shapes=make_param_shapes(name))


def __getattr__(name):
    """MINGRU and MINLSTM, the cells built and registered by `jaxrnn.cells`."""
    if name in ("MINGRU", "MINLSTM"):
        from jaxrnn import cells  # noqa: PLC0415

        return getattr(cells, name)
    raise AttributeError(f"module 'jaxrnn.mincells' has no attribute {name!r}")
