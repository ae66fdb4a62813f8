"""Fast unmasked layers: hand-written backward passes for the built-in cells.

`Recurrent(impl="auto" | "fast")` uses these when it runs without `lengths`; they compute
exactly what `jaxrnn.engine.run_direction` computes (tests/test_fast.py checks both against
`torch.nn.LSTM/GRU/RNN` to ~1e-10 in float64), only faster on CPU. Each layer is

  slab = xs @ W_ih^T + b                  one GEMM over all T*B inputs, plain JAX autodiff
  ys, carry_T = recurrence(W_hh, slab)    a `jax.custom_vjp` scan

and the custom VJP of the recurrence is where the time goes (measurements in
scripts/profile_engine.py and /work/shared/PERF_NOTES.md):
  forward   the slab is split per gate *before* the loop (slicing a [B, G*H] slab inside the
            body is about 2x slower on XLA:CPU) and the scan stacks only h (and c for LSTM);
  backward  the gates are recomputed after the loop from the stacked states with one big GEMM,
            every gate derivative that does not depend on the incoming gradient is folded into
            per-step coefficients outside the loop, so the backward body is one
            [B, G*H] x [G*H, H] matmul plus a few multiplies; it stacks only the gate
            gradients da, and dW_hh = sum_t da_t^T h_{t-1} is one GEMM after the loop.
dW_ih, db and dX come from JAX's autodiff of the projection, which is also one GEMM each.

Notation (PyTorch's, see jaxrnn.cells): a = pre-activations of the gates, [B, G*H] per step;
h_{t-1} is the state the step at t reads (h_{t+1} when running in reverse).

The recurrences take the projected slab rather than xs so that a caller can feed a slab made
some other way (e.g. a gather from a projected embedding table for token ids).

`jax.custom_vjp` functions support reverse-mode only: `jax.grad`, `jax.vjp`, `jit` and `vmap`
compose with them, `jax.jvp` / forward-mode Hessians do not (use impl="reference" for those).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn.engine import register_fast_layer

# scan unroll of the serial loops; PERF_NOTES and scripts/profile_engine.py found no gain
# beyond noise from unrolling on XLA:CPU.
UNROLL = 1


# ------------------------------------------------------------------------------- helpers


def _split(slab, num_gates):
    """[..., G*H] -> tuple of G arrays [..., H]."""
    return tuple(jnp.split(slab, num_gates, axis=-1))


def _row(vector, ndim):
    """Reshapes a [N] vector to broadcast over ndim-1 leading dims (rank promotion is off)."""
    return vector.reshape((1,) * (ndim - 1) + vector.shape)


def _project(xs, weight_ih, bias):
    """xs [T, B, I] -> [T, B, G*H] = xs @ W_ih^T + bias (bias [G*H] or None)."""
    slab = jnp.einsum("tbi,gi->tbg", xs, weight_ih)
    return slab if bias is None else slab + _row(bias, 3)


def _previous(states, first, reverse):
    """The state each step reads: [first, s_0, .., s_{T-2}] (reversed time: [s_1, .., first])."""
    if reverse:
        return jnp.concatenate([states[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], states[:-1]], axis=0)


def _final(states, reverse):
    return states[0] if reverse else states[-1]


def _matmul_all(a, b):
    """[T, B, K] @ [K, N] as one GEMM over all T*B rows."""
    return jnp.einsum("tbk,kn->tbn", a, b)


def _outer_sum(da, inputs):
    """sum_t da_t^T @ inputs_t: [T, B, G] x [T, B, K] -> [G, K], one GEMM."""
    return jnp.einsum("tbg,tbk->gk", da, inputs)


# ------------------------------------------------------------------------------- LSTM


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lstm_recurrence(weight_hh, slab, h0, c0, reverse=False, unroll=UNROLL):
    """The serial part of one LSTM direction.

    Args:
      weight_hh: <float>[4H, H], PyTorch layout (gates i, f, g, o).
      slab: <float>[T, B, 4H], x_t @ W_ih^T + b_ih + b_hh for every step.
      h0, c0: <float>[B, H].
      reverse: run from t = T-1 down to 0 (outputs stay in time order).
      unroll: `lax.scan` unroll.

    Returns:
      (hs <float>[T, B, H], h_T, c_T).
    """
    hs, cs = _lstm_forward(weight_hh, slab, h0, c0, reverse, unroll)
    return hs, _final(hs, reverse), _final(cs, reverse)


def _lstm_forward(weight_hh, slab, h0, c0, reverse, unroll):
    w_t = weight_hh.T  # [H, 4H]
    xi, xf, xg, xo = _split(slab, 4)  # per gate, outside the loop

    def body(carry, x):
        h, c = carry
        a_i, a_f, a_g, a_o = _split(h @ w_t, 4)
        i = jax.nn.sigmoid(x[0] + a_i)
        f = jax.nn.sigmoid(x[1] + a_f)
        g = jnp.tanh(x[2] + a_g)
        o = jax.nn.sigmoid(x[3] + a_o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c)

    _, (hs, cs) = jax.lax.scan(body, (h0, c0), (xi, xf, xg, xo), reverse=reverse,
                               unroll=unroll)
    return hs, cs


def _lstm_fwd(weight_hh, slab, h0, c0, reverse, unroll):
    hs, cs = _lstm_forward(weight_hh, slab, h0, c0, reverse, unroll)
    out = (hs, _final(hs, reverse), _final(cs, reverse))
    return out, (weight_hh, slab, h0, c0, hs, cs)


def _lstm_bwd(reverse, unroll, residuals, cotangents):
    weight_hh, slab, h0, c0, hs, cs = residuals
    d_hs, d_h_last, d_c_last = cotangents
    h_prev = _previous(hs, h0, reverse)  # [T, B, H]
    c_prev = _previous(cs, c0, reverse)
    # Recompute the gates with one GEMM instead of stacking them in the forward loop.
    a_i, a_f, a_g, a_o = _split(slab + _matmul_all(h_prev, weight_hh.T), 4)
    i, f, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jax.nn.sigmoid(a_o)
    g = jnp.tanh(a_g)
    tanh_c = jnp.tanh(cs)
    # Everything that does not depend on the incoming gradient, folded outside the loop:
    #   dc_t  = dc + dh * o (1 - tanh(c)^2)
    #   da_i = dc_t g i (1-i),  da_f = dc_t c_prev f (1-f),  da_g = dc_t i (1-g^2),
    #   da_o = dh tanh(c) o (1-o);  dc_prev = dc_t f;  dh_prev = da @ W_hh
    coef_dc = o * (1.0 - tanh_c * tanh_c)
    coef_i = g * i * (1.0 - i)
    coef_f = c_prev * f * (1.0 - f)
    coef_g = i * (1.0 - g * g)
    coef_o = tanh_c * o * (1.0 - o)

    def body(carry, step):
        dh, dc = carry
        dy, k_dc, k_i, k_f, k_g, k_o, f_t = step
        dh = dh + dy
        dc = dc + dh * k_dc
        da = jnp.concatenate([dc * k_i, dc * k_f, dc * k_g, dh * k_o], axis=-1)  # [B, 4H]
        return (da @ weight_hh, dc * f_t), da

    (dh0, dc0), da = jax.lax.scan(
        body, (d_h_last, d_c_last), (d_hs, coef_dc, coef_i, coef_f, coef_g, coef_o, f),
        reverse=not reverse, unroll=unroll)
    d_weight_hh = _outer_sum(da, h_prev)
    return d_weight_hh, da, dh0, dc0


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_layer(params, xs, carry0, reverse=False, *, unroll=UNROLL):
    """One unmasked LSTM direction: `run_direction(LSTM, ...)` with a custom VJP.

    Args:
      params: dict with weight_ih <float>[4H, I], weight_hh <float>[4H, H] and optionally
        bias_ih, bias_hh <float>[4H].
      xs: <float>[T, B, I].
      carry0: (h0, c0), each <float>[B, H].
      reverse: run from t = T-1 down to 0.

    Returns:
      (ys <float>[T, B, H], (h_T, c_T)).
    """
    bias = None
    if "bias_ih" in params:
        bias = params["bias_ih"] + params["bias_hh"]
    slab = _project(xs, params["weight_ih"], bias)
    h0, c0 = carry0
    hs, h_t, c_t = lstm_recurrence(params["weight_hh"], slab, h0, c0, reverse, unroll)
    return hs, (h_t, c_t)


# ------------------------------------------------------------------------------- GRU


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def gru_recurrence(weight_hh, bias_hn, slab, h0, reverse=False, unroll=UNROLL):
    """The serial part of one GRU direction (PyTorch semantics: b_hn inside r * (...)).

    Args:
      weight_hh: <float>[3H, H] (gates r, z, n).
      bias_hn: <float>[H], or None for a layer without bias.
      slab: <float>[T, B, 3H], x_t @ W_ih^T + b_ih + [b_hr, b_hz, 0].
      h0: <float>[B, H].

    Returns:
      (hs <float>[T, B, H], h_T).
    """
    hs = _gru_forward(weight_hh, bias_hn, slab, h0, reverse, unroll)
    return hs, _final(hs, reverse)


def _gru_forward(weight_hh, bias_hn, slab, h0, reverse, unroll):
    w_t = weight_hh.T  # [H, 3H]
    xr, xz, xn = _split(slab, 3)

    def body(h, x):
        a_r, a_z, a_n = _split(h @ w_t, 3)
        if bias_hn is not None:
            a_n = a_n + _row(bias_hn, 2)
        r = jax.nn.sigmoid(x[0] + a_r)
        z = jax.nn.sigmoid(x[1] + a_z)
        n = jnp.tanh(x[2] + r * a_n)
        h = n + z * (h - n)
        return h, h

    _, hs = jax.lax.scan(body, h0, (xr, xz, xn), reverse=reverse, unroll=unroll)
    return hs


def _gru_fwd(weight_hh, bias_hn, slab, h0, reverse, unroll):
    hs = _gru_forward(weight_hh, bias_hn, slab, h0, reverse, unroll)
    return (hs, _final(hs, reverse)), (weight_hh, bias_hn, slab, h0, hs)


def _gru_bwd(reverse, unroll, residuals, cotangents):
    weight_hh, bias_hn, slab, h0, hs = residuals
    d_hs, d_h_last = cotangents
    h_prev = _previous(hs, h0, reverse)
    x_r, x_z, x_n = _split(slab, 3)
    a_r, a_z, a_n = _split(_matmul_all(h_prev, weight_hh.T), 3)
    if bias_hn is not None:
        a_n = a_n + _row(bias_hn, 3)
    r = jax.nn.sigmoid(x_r + a_r)
    z = jax.nn.sigmoid(x_z + a_z)
    n = jnp.tanh(x_n + r * a_n)
    # With h = n + z (h_prev - n) and dh the total gradient into h_t:
    #   dn_pre = dh (1-z)(1-n^2),  dz_pre = dh (h_prev - n) z (1-z),  dr_pre = dn_pre a_n r (1-r)
    #   d(W_hn h + b_hn) = dn_pre r,  dh_prev = dh z + [dr_pre, dz_pre, dn_pre r] @ W_hh
    coef_n = (1.0 - z) * (1.0 - n * n)
    coef_z = (h_prev - n) * z * (1.0 - z)
    coef_r = coef_n * a_n * r * (1.0 - r)
    coef_hn = coef_n * r
    coef_h = jnp.concatenate([coef_r, coef_z, coef_hn], axis=-1)  # [T, B, 3H]

    def body(dh, step):
        dy, k_h, z_t = step
        dh = dh + dy
        da_h = jnp.concatenate([dh, dh, dh], axis=-1) * k_h  # [B, 3H]
        return dh * z_t + da_h @ weight_hh, dh

    dh0, dh_total = jax.lax.scan(body, d_h_last, (d_hs, coef_h, z), reverse=not reverse,
                                 unroll=unroll)
    da_h = jnp.concatenate([dh_total, dh_total, dh_total], axis=-1) * coef_h
    d_weight_hh = _outer_sum(da_h, h_prev)
    d_slab = jnp.concatenate([da_h[..., :-coef_n.shape[-1]], dh_total * coef_n], axis=-1)
    d_bias_hn = None if bias_hn is None else jnp.sum(da_h[..., -coef_n.shape[-1]:], axis=(0, 1))
    return d_weight_hh, d_bias_hn, d_slab, dh0


gru_recurrence.defvjp(_gru_fwd, _gru_bwd)


def gru_layer(params, xs, carry0, reverse=False, *, unroll=UNROLL):
    """One unmasked GRU direction: `run_direction(GRU, ...)` with a custom VJP.

    Args:
      params: dict with weight_ih <float>[3H, I], weight_hh <float>[3H, H] and optionally
        bias_ih, bias_hh <float>[3H].
      xs: <float>[T, B, I].
      carry0: h0 <float>[B, H].

    Returns:
      (ys <float>[T, B, H], h_T).
    """
    bias, bias_hn = None, None
    if "bias_ih" in params:
        hidden = params["weight_hh"].shape[-1]
        b_hh = params["bias_hh"]
        # b_hr and b_hz join the projection; b_hn stays inside r * (...).
        bias = params["bias_ih"] + jnp.concatenate([b_hh[:2 * hidden],
                                                    jnp.zeros_like(b_hh[2 * hidden:])])
        bias_hn = b_hh[2 * hidden:]
    slab = _project(xs, params["weight_ih"], bias)
    hs, h_t = gru_recurrence(params["weight_hh"], bias_hn, slab, carry0, reverse, unroll)
    return hs, h_t


# ------------------------------------------------------------------------------- Elman RNN


def _make_rnn_recurrence(activation, derivative_from_output):
    """custom_vjp recurrence for h' = activation(slab_t + h @ W_hh^T)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def recurrence(weight_hh, slab, h0, reverse=False, unroll=UNROLL):
        hs = forward(weight_hh, slab, h0, reverse, unroll)
        return hs, _final(hs, reverse)

    def forward(weight_hh, slab, h0, reverse, unroll):
        w_t = weight_hh.T

        def body(h, x):
            h = activation(x + h @ w_t)
            return h, h

        return jax.lax.scan(body, h0, slab, reverse=reverse, unroll=unroll)[1]

    def fwd(weight_hh, slab, h0, reverse, unroll):
        hs = forward(weight_hh, slab, h0, reverse, unroll)
        return (hs, _final(hs, reverse)), (weight_hh, h0, hs)

    def bwd(reverse, unroll, residuals, cotangents):
        weight_hh, h0, hs = residuals
        d_hs, d_h_last = cotangents
        coef = derivative_from_output(hs)  # activation'(a_t), from h_t = activation(a_t)

        def body(dh, step):
            dy, k = step
            da = (dh + dy) * k
            return da @ weight_hh, da

        dh0, da = jax.lax.scan(body, d_h_last, (d_hs, coef), reverse=not reverse, unroll=unroll)
        return _outer_sum(da, _previous(hs, h0, reverse)), da, dh0

    recurrence.defvjp(fwd, bwd)
    return recurrence


rnn_tanh_recurrence = _make_rnn_recurrence(jnp.tanh, lambda h: 1.0 - h * h)
rnn_relu_recurrence = _make_rnn_recurrence(
    jax.nn.relu, lambda h: (h > 0).astype(h.dtype))


def _rnn_layer(recurrence):
    def layer(params, xs, carry0, reverse=False, *, unroll=UNROLL):
        bias = None
        if "bias_ih" in params:
            bias = params["bias_ih"] + params["bias_hh"]
        slab = _project(xs, params["weight_ih"], bias)
        return recurrence(params["weight_hh"], slab, carry0, reverse, unroll)

    layer.__doc__ = """One unmasked Elman RNN direction with a custom VJP (see `lstm_layer`)."""
    return layer


rnn_tanh_layer = _rnn_layer(rnn_tanh_recurrence)
rnn_relu_layer = _rnn_layer(rnn_relu_recurrence)

LAYERS = {"lstm": lstm_layer, "gru": gru_layer, "rnn_tanh": rnn_tanh_layer,
          "rnn_relu": rnn_relu_layer}


def register_all(unroll: int = UNROLL) -> None:
    """(Re-)registers every fast layer with the engine, with the given scan unroll."""
    for name, layer in LAYERS.items():
        register_fast_layer(name, functools.partial(layer, unroll=unroll))


register_all()
