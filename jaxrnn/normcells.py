"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1).

Layer norm without its affine part, for each gate block of H units on its own:

  N(a) = (a - mean(a)) / sqrt(var(a) + eps)      mean and (biased) var over the H units of
                                                 one gate's block, eps = 1e-5 (nn.LayerNorm's)

and LN(a; γ, β) = γ ⊙ N(a) + β with a learned gain γ and bias β of their own for the input
side (W_ih x), the recurrent side (W_hh h) and, in the LSTM, the cell state. Each gate is
normalised over its own H units ("per gate block", as TensorFlow's LayerNormBasicLSTMCell),
not the 4H (3H) gates together, so one gate's scale does not set another's.

  lstm_ln ("lstm_ln", G = 4, gates i, f, g, o as PyTorch's LSTM)
    a  = LN(W_ih x; γ_ih, β_ih) + LN(W_hh h; γ_hh, β_hh)       per gate block of a [4H]
    i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c' = f ⊙ c + i ⊙ g                                          carried un-normalised
    h' = o ⊙ tanh(LN(c'; γ_c, β_c))                             Ba et al. eq. (22)

  gru_ln ("gru_ln", G = 3, gates r, z, n as PyTorch's GRU)
    u  = LN(W_ih x; γ_ih, β_ih)     v = LN(W_hh h; γ_hh, β_hh)  per gate block [3H]
    r = σ(u_r + v_r)   z = σ(u_z + v_z)   n = tanh(u_n + r ⊙ v_n)
    h' = (1 - z) ⊙ n + z ⊙ h                                     (no cell state to normalise)

The β's are the only biases (a bias added before a layer norm would cancel); as in PyTorch's
GRU, β_hh's n-block sits inside r ⊙ (...). Parameters per layer and direction:

  weight_ih [G*H, I], weight_hh [G*H, H]    U(±1/sqrt(H)), as the built-in cells
  gain_ih, gain_hh [G*H] (ones)             bias_ih, bias_hh [G*H] (zeros)
  lstm_ln also: gain_c [H] (ones), bias_c [H] (zeros)
  bias=False drops the bias_* entries (the gains stay).

The input slab is W_ih x (no bias: `slab_bias` is None), so layer 0 takes a slab gathered from
a projected embedding (`Recurrent.apply(projected0=...)`) like the built-in cells; `unslab`
normalises it, before the time loop, and `recur` applies γ_ih, β_ih. Neither cell has a fast
recurrence or a fused kernel: every impl but "reference" and the Newton solvers refuses
them, and impl="auto" runs the reference scan. They have no PyTorch module
(`jaxrnn.names.TORCH_CELLS`).

The `Cell` values are `jaxrnn.cells.LSTM_LN` and `GRU_LN` (registered in `jaxrnn.cells.CELLS`;
also importable from here). This module imports nothing from `jaxrnn.cells` when it loads:
`cells` builds the two cells by calling `build_cell`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn.names import NORM_CELLS, NUM_GATES

EPS = 1e-5


def _row(vector, ndim):
    """Reshapes a [N] vector to broadcast over ndim-1 leading dims (rank promotion is off)."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def normalize(a, num_gates: int):
    """N(a) of each gate block: <float>[..., G*H] -> [..., G*H], mean 0 and variance
    var / (var + eps) over each block of H units."""
    blocks = a.reshape(a.shape[:-1] + (num_gates, a.shape[-1] // num_gates))
    mean = blocks.mean(-1, keepdims=True)
    centred = blocks - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return (centred * jax.lax.rsqrt(var + EPS)).reshape(a.shape)


def _affine(params, suffix, normalized):
    """γ ⊙ N + β for `gain_<suffix>` and `bias_<suffix>` (no bias with bias=False)."""
    out = normalized * _row(params["gain_" + suffix], normalized.ndim)
    bias = params.get("bias_" + suffix)
    return out if bias is None else out + _row(bias, normalized.ndim)


def _matmul_transposed(x, weight):
    """x @ weight.T over any leading dims of x (one dot_general, as jaxrnn.cells')."""
    return jax.lax.dot_general(x, weight, (((x.ndim - 1,), (1,)), ((), ())))


def param_shapes(name):
    """`Cell.param_shapes` of an LN cell: (input_size, hidden_size, bias) -> {name: shape}."""
    num_gates = NUM_GATES[name]

    def shapes(input_size, hidden_size, bias=True):
        gh = num_gates * hidden_size
        out = {"weight_ih": (gh, input_size), "weight_hh": (gh, hidden_size),
               "gain_ih": (gh,), "gain_hh": (gh,)}
        if bias:
            out.update(bias_ih=(gh,), bias_hh=(gh,))
        if name == "lstm_ln":
            out["gain_c"] = (hidden_size,)
            if bias:
                out["bias_c"] = (hidden_size,)
        return out

    return shapes


def make_init(name):
    """`Cell.init`: weights U(±1/sqrt(H)), gains 1, biases 0."""
    shapes_of = param_shapes(name)

    def init(key, input_size, hidden_size, bias=True, dtype=jnp.float32):
        bound = 1.0 / hidden_size**0.5
        k_ih, k_hh = jax.random.split(key)
        params = {}
        for entry, shape in shapes_of(input_size, hidden_size, bias).items():
            if entry.startswith("weight"):
                k = k_ih if entry == "weight_ih" else k_hh
                params[entry] = jax.random.uniform(k, shape, dtype, -bound, bound)
            elif entry.startswith("gain"):
                params[entry] = jnp.ones(shape, dtype)
            else:
                params[entry] = jnp.zeros(shape, dtype)
        return params

    return init


def slab_bias(params):
    """No bias is folded into the slab: the β's come after the normalisation."""
    del params
    return None


def make_unslab(name):
    """slab [..., G*H] = W_ih x -> N(W_ih x) per gate block: hoisted out of the time loop."""
    num_gates = NUM_GATES[name]

    def unslab(slab):
        return normalize(slab, num_gates)

    return unslab


def _split(a, num_gates):
    return tuple(jnp.split(a, num_gates, axis=-1))


def lstm_ln_recur(params, carry, x_normalized):
    """One lstm_ln step: (params, (h, c) [H], N(W_ih x) [4H]) -> ((h, c), h)."""
    h, c = carry
    a = (_affine(params, "ih", x_normalized)
         + _affine(params, "hh", normalize(_matmul_transposed(h, params["weight_hh"]), 4)))
    a_i, a_f, a_g, a_o = _split(a, 4)
    c = jax.nn.sigmoid(a_f) * c + jax.nn.sigmoid(a_i) * jnp.tanh(a_g)
    h = jax.nn.sigmoid(a_o) * jnp.tanh(_affine(params, "c", normalize(c, 1)))
    return (h, c), h


def gru_ln_recur(params, h, x_normalized):
    """One gru_ln step: (params, h [H], N(W_ih x) [3H]) -> (h, h)."""
    u_r, u_z, u_n = _split(_affine(params, "ih", x_normalized), 3)
    v = _affine(params, "hh", normalize(_matmul_transposed(h, params["weight_hh"]), 3))
    v_r, v_z, v_n = _split(v, 3)
    r = jax.nn.sigmoid(u_r + v_r)
    z = jax.nn.sigmoid(u_z + v_z)
    n = jnp.tanh(u_n + r * v_n)
    h = (1.0 - z) * n + z * h
    return h, h


RECURS = {"lstm_ln": lstm_ln_recur, "gru_ln": gru_ln_recur}


def _zero_h(hidden_size, dtype=jnp.float32):
    return jnp.zeros((hidden_size,), dtype)


def _zero_hc(hidden_size, dtype=jnp.float32):
    return (jnp.zeros((hidden_size,), dtype), jnp.zeros((hidden_size,), dtype))


def build_cell(name):
    """The `jaxrnn.cells.Cell` of "lstm_ln" or "gru_ln"; `jaxrnn.cells` calls this (where
    `Cell` is defined) and registers the result in CELLS."""
    from jaxrnn.cells import Cell  # noqa: PLC0415 (see the module docstring)

    if name not in NORM_CELLS:
        raise ValueError(f"name must be one of {NORM_CELLS}, got {name!r}")
    unslab = make_unslab(name)
    recur = RECURS[name]

    def project(params, xs):
        return unslab(_matmul_transposed(xs, params["weight_ih"]))

    def step(params, carry, x):
        return recur(params, carry, project(params, x))

    lstm = name == "lstm_ln"
    return Cell(name, make_init(name), step, _zero_hc if lstm else _zero_h, project=project,
                recur=recur, carry_size=2 if lstm else 1, num_gates=NUM_GATES[name],
                slab_bias=slab_bias, unslab=unslab, param_shapes=param_shapes(name))


def __getattr__(name):
    """LSTM_LN and GRU_LN, the cells built and registered by `jaxrnn.cells`."""
    if name in ("LSTM_LN", "GRU_LN"):
        from jaxrnn import cells  # noqa: PLC0415

        return getattr(cells, name)
    raise AttributeError(f"module 'jaxrnn.normcells' has no attribute {name!r}")
